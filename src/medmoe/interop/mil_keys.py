"""Key layouts of the MIL references, mapped onto medmoe's MIL models.

Each layout is a function ``(state, model_short_name) -> KeyMapping``; :mod:`medmoe.interop.loader` tries
them all and keeps the one that fits the model (no unknown, fewest missing tensors).

* ``medmoe``: medmoe's own keys (which follow MIL-Lab's core-module names).
* ``mil-lab``: MIL-Lab and the MAMMOTH fork's ``millab/`` (both ``base`` and ``base_mammoth``), FEATHER:
  the Hugging Face wrapper's ``model.`` prefix is stripped (also MIL-Lab's double-dot ``model..`` bug),
  plus per model:

  - DTFD (MIL-Lab ``dftd``): ``patch_embed.fc1.0`` -> ``patch_embed.0``, ``patch_embed.resBlocks`` ->
    ``residuals``, ``attCls.global_attn`` -> ``tier2_attention``, ``attCls.classifier.fc`` ->
    ``tier2_classifier``;
  - RRT (MIL-Lab's ``rrt``): ``encoder.layer1`` -> ``layers.0``, ``encoder.layers.i`` -> ``layers.(i+1)``,
    ``encoder.norm`` -> ``norm``, ``encoder.pool_fn.attention.attention.{0,2}`` ->
    ``pool_fn.attention_a.0`` / ``pool_fn.attention_c``; ``encoder.pos_embedding.*`` (PPEG, built but
    never applied by MIL-Lab's forward) is not loaded;
  - DSMIL: ``b_classifier.fcc.*`` (a Conv1d MIL-Lab builds and never calls) is not loaded;
  - WiKG: ``gate_U``/``gate_V``/``gate_W`` (built, never called) are not loaded;
  - CLAM: ``instance_loss_fn.labels`` (the smooth top-1 SVM's constant buffer ``arange(2)``) is not loaded.

* ``clam-repository``: checkpoints of the original CLAM repository (``mahmoodlab/CLAM``, CLAM-SB and
  CLAM-MB): ``attention_net.0`` -> ``patch_embed.0``, ``attention_net.<2|3>.attention_{a,b,c}`` ->
  ``global_attn.attention_{a,b,c}``, CLAM-SB's ``classifiers`` -> ``classifier``; CLAM's own evaluation
  code drops ``instance_loss_fn.*`` and a ``.module`` left by ``nn.DataParallel``, and so do we.

* ``mammoth-layer``: a bare Mammoth layer's state dict under any prefix (``slot_embeds``, ``wq.*``,
  ``expert_heads.*`` ...; e.g. the MAMMOTH tutorial's ``mlp.router.mammoth.``, a CLAM user's
  ``attention_net.0.mammoth.``, MIL-Lab's ``model.patch_embed.``), loaded into the model's
  ``patch_embed``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["KEY_LAYOUTS", "MAMMOTH_LAYER_KEYS", "KeyMapping", "find_mammoth_prefixes"]

UNUSED_BY_REFERENCE = "built by the reference but never used in its forward pass"


@dataclass
class KeyMapping:
    """A state dict renamed into the model's key space.

    Attributes:
        layout: the layout's name.
        state: model key -> tensor.
        renamed: checkpoint key -> model key for renamed tensors.
        ignored: checkpoint key -> reason, tensors deliberately not loaded.
        notes: remarks for the report.
        patch_embed_only: the file holds only a patch embedding (the rest of the model stays initialised).
        origin: model key -> the key in the file, for keys that differ (prefix strips included).
    """

    layout: str
    state: dict[str, Tensor]
    renamed: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    patch_embed_only: bool = False
    origin: dict[str, str] = field(default_factory=dict)

    def file_key(self, key: str) -> str:
        """The file's name of the mapped ``key``."""
        return self.origin.get(key, key)


def _medmoe(state: dict[str, Tensor], model: str) -> KeyMapping:
    return KeyMapping("medmoe", dict(state))


def _rename(state: dict[str, Tensor], rules: list[tuple[str, str | Callable[[re.Match[str]], str]]],
            layout: str, origin: dict[str, str] | None = None) -> KeyMapping:
    """Apply the first matching rule to every key; ``origin`` maps ``state``'s keys to the file's."""
    origin = origin or {}
    out = KeyMapping(layout, {})
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, new, count=1)
            if n:
                break
        file_key = origin.get(key, key)
        if new != key:
            out.renamed[file_key] = new
        if new != file_key:
            out.origin[new] = file_key
        out.state[new] = value
    return out


_MIL_LAB_RULES: dict[str, list[tuple[str, str | Callable[[re.Match[str]], str]]]] = {
    "dtfd": [
        (r"^patch_embed\.fc1\.0\.", "patch_embed.0."),
        (r"^patch_embed\.resBlocks\.", "residuals."),
        (r"^attCls\.global_attn\.", "tier2_attention."),
        (r"^attCls\.classifier\.fc\.", "tier2_classifier."),
    ],
    "rrt": [
        (r"^encoder\.layer1\.", "layers.0."),
        (r"^encoder\.layers\.(\d+)\.", lambda m: f"layers.{int(m.group(1)) + 1}."),
        (r"^encoder\.norm\.", "norm."),
        (r"^encoder\.pool_fn\.attention\.attention\.0\.", "pool_fn.attention_a.0."),
        (r"^encoder\.pool_fn\.attention\.attention\.2\.", "pool_fn.attention_c."),
    ],
}
_MIL_LAB_UNUSED: dict[str, tuple[str, ...]] = {
    "rrt": ("encoder.pos_embedding.",),
    "dsmil": ("b_classifier.fcc.",),
    "wikg": ("gate_U.", "gate_V.", "gate_W."),
}
_LOSS_BUFFERS = ("instance_loss_fn.",)


def _mil_lab(state: dict[str, Tensor], model: str) -> KeyMapping:
    notes = []
    origin: dict[str, str] = {}
    if state and all(k.startswith("model.") for k in state):
        double = sum(k.startswith("model..") for k in state)
        origin = {re.sub(r"^model\.\.?", "", k): k for k in state}
        state = {re.sub(r"^model\.\.?", "", k): v for k, v in state.items()}
        notes.append("stripped the 'model.' prefix of MIL-Lab's Hugging Face wrapper"
                     + (f" (and the double dot of {double} keys)" if double else ""))
    unused = _MIL_LAB_UNUSED.get(model, ())
    ignored = {}
    kept = {}
    for k, v in state.items():
        if k.startswith(unused):
            ignored[origin.get(k, k)] = f"MIL-Lab's {model}: {UNUSED_BY_REFERENCE}"
        elif k.startswith(_LOSS_BUFFERS):
            ignored[origin.get(k, k)] = "a loss function's constant buffer (not a model weight)"
        else:
            kept[k] = v
    out = _rename(kept, _MIL_LAB_RULES.get(model, []), "mil-lab", origin)
    out.ignored.update(ignored)
    out.notes += notes
    return out


def _clam_repository(state: dict[str, Tensor], model: str) -> KeyMapping:
    if model != "clam" or not any(k.startswith("attention_net.") for k in state):
        return KeyMapping("clam-repository", {}, notes=["not a CLAM-repository checkpoint"])
    origin = {k.replace(".module", ""): k for k in state}
    state = {k.replace(".module", ""): v for k, v in state.items()}
    ignored = {origin[k]: "a loss function's buffer (dropped by CLAM's own evaluation code)"
               for k in state if k.startswith(_LOSS_BUFFERS)}
    kept = {k: v for k, v in state.items() if not k.startswith(_LOSS_BUFFERS)}
    rules: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
        (r"^attention_net\.0\.", "patch_embed.0."),
        (r"^attention_net\.[23]\.(attention_[abc])", r"global_attn.\1"),
        (r"^classifiers\.(weight|bias)$", r"classifier.\1"),
    ]
    out = _rename(kept, rules, "clam-repository", origin)
    out.ignored.update(ignored)
    return out


#: Names (relative to the layer) that make a Mammoth layer's state dict.
MAMMOTH_LAYER_KEYS = ("slot_embeds", "wq.weight", "expert_heads.lora_layers.expert_weights")


def find_mammoth_prefixes(state: dict[str, Tensor]) -> list[str]:
    """Prefixes ``P`` under which ``state`` holds a Mammoth layer (``P + 'slot_embeds'`` and co.)."""
    prefixes = {k[: -len("slot_embeds")] for k in state if k.endswith("slot_embeds")}
    return sorted(p for p in prefixes if all(p + name in state for name in MAMMOTH_LAYER_KEYS))


def _mammoth_layer(state: dict[str, Tensor], model: str) -> KeyMapping:
    prefixes = find_mammoth_prefixes(state)
    if len(prefixes) != 1:
        why = "no Mammoth layer" if not prefixes else f"several Mammoth layers ({prefixes})"
        return KeyMapping("mammoth-layer", {}, notes=[f"{why} in the file"])
    prefix = prefixes[0]
    out = KeyMapping("mammoth-layer", {}, patch_embed_only=True)
    for key, value in state.items():
        if key.startswith(prefix):
            new = "patch_embed." + key[len(prefix):]
            if new != key:
                out.renamed[key] = new
                out.origin[new] = key
            out.state[new] = value
        else:  # left as is: unknown to the model unless only the patch embedding is asked for
            out.state[key] = value
    out.notes.append(f"Mammoth layer found under the prefix {prefix!r}" if prefix else "bare Mammoth layer")
    return out


#: Layouts tried for every MIL model, in order (the first of equally good fits wins). Add one with
#: ``KEY_LAYOUTS.append(fn)`` where ``fn(state, short_model_name) -> KeyMapping``.
KEY_LAYOUTS: list[Callable[[dict[str, Tensor], str], KeyMapping]] = [
    _medmoe, _mil_lab, _clam_repository, _mammoth_layer,
]
