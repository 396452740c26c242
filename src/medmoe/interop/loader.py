"""Loading any supported checkpoint into a medmoe MIL model, with a report and no silent drops.

:func:`load_weights` fills an existing model; :func:`load_model` builds the model (from a medmoe
checkpoint's own config, a Hugging Face folder's ``config.json``, or a model name) and fills it. Both go
through the same rules:

1. the file is read without pickle code execution (:func:`medmoe.interop.sources.read_source`);
2. every key layout of :data:`medmoe.interop.mil_keys.KEY_LAYOUTS` maps the keys, and the one that fits
   the model best is kept (medmoe, MIL-Lab / MAMMOTH fork / FEATHER, the CLAM repository, a bare Mammoth
   layer);
3. the classification head (the tensors whose shape depends on ``num_classes``) is freshly initialised
   when the file has none of it (FEATHER) or when the caller asks (``reinit_head``), and the report says
   so;
4. anything else unknown, missing or mis-shaped is a :class:`CheckpointMismatchError` that lists it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .mil_keys import KEY_LAYOUTS, KeyMapping
from .report import CheckpointMismatchError, LoadReport
from .sources import WeightSource, read_source

logger = logging.getLogger(__name__)

__all__ = [
    "head_keys",
    "load_any_checkpoint",
    "load_model",
    "load_weights",
    "read_any_checkpoint_info",
    "reference_config_overrides",
]

#: MIL-Lab's Hugging Face ``model_type`` -> medmoe model name.
MIL_LAB_MODEL_TYPES = {
    "abmil": "abmil", "clam": "clam", "dftd": "dtfd", "dsmil": "dsmil", "ilra": "ilra", "rrtmil": "rrt",
    "transformer": "transformer", "transmil": "transmil", "wikg": "wikg",
}
#: MIL-Lab config fields whose medmoe name differs (per model, ``*`` for all).
_FIELD_RENAMES = {"*": {"n_fc_layers": "num_fc_layers"}}
_IGNORED_HF_FIELDS = {"num_fc_layers"}  # handled as the patch embedding


def _short_name(model: nn.Module) -> str:
    name = getattr(model, "model_name", None)
    if not name:
        raise ValueError("load_weights needs a medmoe model (built by medmoe.create_model; it has `model_name`)")
    return str(name).split(".")[0]


def head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model`` whose presence or shape depends on ``num_classes``."""
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config) or not hasattr(config, "num_classes"):
        return set()
    other = dataclasses.replace(config, num_classes=config.num_classes + 1)
    twin = type(model)(other)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    return {k for k in ours if theirs.get(k) != ours[k]}


def _fit(mapping: KeyMapping, model_keys: set[str], scope: str | None) -> tuple[set[str], set[str]]:
    keys = set(mapping.state)
    wanted = {k for k in model_keys if scope is None or k.startswith(scope)}
    return keys - model_keys, wanted - keys


def _restrict(mapping: KeyMapping, scope: str, why: str) -> None:
    for key in [k for k in mapping.state if not k.startswith(scope)]:
        original = mapping.file_key(key)
        mapping.renamed.pop(original, None)
        mapping.ignored[original] = why
        del mapping.state[key]


def _choose(
    state: dict[str, Tensor], short: str, model_keys: set[str], patch_embed_only: bool, heads: set[str]
) -> KeyMapping:
    """The layout that fits best: fewest unknown + missing tensors, where a head the file lacks entirely
    costs nothing (it is re-initialised) and a patch-embedding-only layout pays for the tensors it leaves
    fresh unless the caller asked for it."""
    best: tuple[int, KeyMapping] | None = None
    for layout in KEY_LAYOUTS:
        mapping = layout(state, short)
        if not mapping.state:
            continue
        if patch_embed_only:
            _restrict(mapping, "patch_embed.", "outside the patch embedding (only the patch embedding was asked for)")
            mapping.patch_embed_only = True
        unknown, missing = _fit(mapping, model_keys, "patch_embed." if mapping.patch_embed_only else None)
        if not heads & set(mapping.state):
            missing -= heads
        score = len(unknown) + len(missing)
        if mapping.patch_embed_only and not patch_embed_only:
            score += len({k for k in model_keys - heads if not k.startswith("patch_embed.")})
        if best is None or score < best[0]:
            best = (score, mapping)
    if best is None:
        raise CheckpointMismatchError("the checkpoint holds no tensors that any known key layout can map")
    return best[1]


def _shape_hint(key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...], heads: set[str]) -> str:
    if key in heads and file_shape[:1] != model_shape[:1]:
        return " (a different number of classes: pass num_classes / --num-classes, or reinit_head / --reinit-head)"
    if key.startswith("patch_embed.") and len(file_shape) == 2 and file_shape[0] == model_shape[0]:
        return f" (the file expects {file_shape[1]}-d features: pass in_dim={file_shape[1]} / --in-dim)"
    return ""


def load_weights(
    model: nn.Module,
    source: str | Path | WeightSource,
    *,
    reinit_head: bool = False,
    patch_embed_only: bool = False,
) -> LoadReport:
    """Fill ``model`` (a medmoe MIL model) from a checkpoint of any supported kind; see the module doc.

    Args:
        model: the model to fill, built with the matching name and settings.
        source: a path (file or folder) or an already read :class:`WeightSource`.
        reinit_head: replace the classification head: the file's head tensors are not loaded (listed in
            the report) and the model keeps its freshly initialised head (fine-tuning on other classes).
        patch_embed_only: load only the patch embedding (e.g. a Mammoth layer out of a larger checkpoint
            of another code base); the rest of the model stays as initialised and is listed as fresh.
            A file that holds nothing but a Mammoth layer is loaded this way without asking.

    Returns:
        The :class:`LoadReport`.

    Raises:
        CheckpointMismatchError: unknown, missing (other than the head in the cases above) or mis-shaped
            tensors, all listed.
        ValueError: the file cannot be read.
    """
    src = source if isinstance(source, WeightSource) else read_source(source)
    short = _short_name(model)
    own = model.state_dict()
    model_keys = set(own)
    heads = head_keys(model)
    mapping = _choose(src.state, short, model_keys, patch_embed_only, heads)
    report = LoadReport(src.path, src.file_format, mapping.layout, renamed=dict(mapping.renamed),
                        ignored=dict(mapping.ignored), notes=list(src.notes) + list(mapping.notes))
    state = dict(mapping.state)
    if reinit_head:
        for key in sorted(heads & set(state)):
            original = mapping.file_key(key)
            report.ignored[original] = "classification head replaced (reinit_head)"
            report.renamed.pop(original, None)
            del state[key]
    scope = "patch_embed." if mapping.patch_embed_only else None
    unknown, missing = _fit(KeyMapping(mapping.layout, state), model_keys, scope)
    fresh: set[str] = set()
    if mapping.patch_embed_only:
        fresh |= {k for k in model_keys if not k.startswith("patch_embed.")}
        report.notes.append("only the patch embedding was loaded; the rest of the model is freshly initialised")
    head_missing = heads & missing
    if head_missing and (reinit_head or not (heads & set(state))):
        fresh |= head_missing
        missing -= head_missing
        if not reinit_head:
            msg = (f"the checkpoint has no classification head ({', '.join(sorted(head_missing))}); "
                   "it is freshly initialised (e.g. FEATHER's pretrained ABMIL): fine-tune before use")
            report.notes.append(msg)
            warnings.warn(msg, stacklevel=2)
    if unknown or missing:
        parts = [(f"{src.path} does not fit {getattr(model, 'model_name', short)} "
                 f"(best key layout: {mapping.layout}; {len(state)} tensors mapped).")]
        if unknown:
            parts.append(f"Tensors in the file that the model does not have: {sorted(unknown)}.")
        if missing:
            parts.append(f"Model tensors the file lacks: {sorted(missing)}.")
        if mapping.layout == "mammoth-layer":
            parts.append("To load only its Mammoth layer into the patch embedding, pass patch_embed_only=True "
                         "(--patch-embed-only).")
        else:
            parts.append("Check the model name and config (e.g. '<model>.base_mammoth' for a Mammoth "
                         "checkpoint); nothing is dropped silently.")
        raise CheckpointMismatchError(" ".join(parts))
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        lines = [f"{k}: file {fs} vs model {ms}{_shape_hint(k, fs, ms, heads)}" for k, fs, ms in bad[:12]]
        widths = any(not _shape_hint(k, fs, ms, heads) for k, fs, ms in bad)
        raise CheckpointMismatchError(
            f"{src.path}: {len(bad)} tensors have another shape than in {getattr(model, 'model_name', short)}: "
            + "; ".join(lines) + (" ..." if len(bad) > 12 else "")
            + (". The checkpoint was built with other widths: give the same settings (e.g. embed_dim=..., "
               "--set embed_dim=...)" if widths else "")
        )
    result = model.load_state_dict(state, strict=False)
    left = set(result.missing_keys) - fresh
    if left or result.unexpected_keys:  # pragma: no cover - guarded above
        raise CheckpointMismatchError(f"internal: unexpected load result {result}")
    report.loaded = len(state)
    report.fresh = sorted(fresh)
    logger.info("%s", report.summary())
    return report


def _infer_num_classes(state: dict[str, Tensor], heads: set[str], model: nn.Module) -> int | None:
    """Classes of the file's head, compared with ``model`` (built with some other ``num_classes``)."""
    counts = [int(m.group(2)) + 1 for k in state if (m := re.match(r"^(classifiers|instance_classifiers)\.(\d+)\.", k))]
    if counts:
        return max(counts)
    own = model.state_dict()
    c = model.config.num_classes
    for key in sorted(heads):
        if key in state and key in own and state[key].ndim == own[key].ndim:
            for a, b in zip(state[key].shape, own[key].shape, strict=True):
                if b == c and a != c:
                    return int(a)
    return None


#: state-dict key -> (config field, axis of the tensor's shape) for settings read off a file's shapes.
_SHAPE_SETTINGS: dict[str, dict[str, tuple[tuple[str, int], ...]]] = {
    "*": {"patch_embed.0.weight": (("embed_dim", 0), ("in_dim", 1)), "patch_embed.wq.weight": (("in_dim", 1),)},
    "abmil": {"global_attn.attention_a.0.weight": (("attn_dim", 0),)},
    "clam": {"global_attn.attention_a.0.weight": (("attention_dim", 0),)},
}


def _infer_settings(state: dict[str, Tensor], short: str, probe: nn.Module, given: set[str]) -> dict[str, Any]:
    """Widths the file was built with where they differ from ``probe``'s (settings the caller gave win):
    feature size and embedding width from the patch embedding, attention width (ABMIL, CLAM), CLAM-MB
    from per-class bag classifiers (the CLAM repository's 256-wide attention, other encoders)."""
    config = probe.config
    out: dict[str, Any] = {}
    rules = {**_SHAPE_SETTINGS["*"], **_SHAPE_SETTINGS.get(short, {})}
    for key, pairs in rules.items():
        if key not in state:
            continue
        for field_name, axis in pairs:
            value = int(state[key].shape[axis])
            if field_name not in given and hasattr(config, field_name) and getattr(config, field_name) != value:
                out[field_name] = value
    if (short == "clam" and "multi_branch" not in given and not getattr(config, "multi_branch", True)
            and any(k.startswith("classifiers.0.") for k in state)):
        out["multi_branch"] = True
    return out


def reference_config_overrides(config: dict[str, Any], short: str, medmoe_fields: set[str]) -> dict[str, Any]:
    """medmoe config overrides from a MIL-Lab Hugging Face ``config.json``: fields with the same name and
    meaning; ``moe_args`` -> Mammoth patch embedding; ``num_fc_layers > 1`` -> MLP patch embedding;
    TransMIL's landmarks (MIL-Lab derives them: ``embed_dim // 2``)."""
    renames = {**_FIELD_RENAMES["*"], **_FIELD_RENAMES.get(short, {})}
    out: dict[str, Any] = {}
    for key, value in config.items():
        key = renames.get(key, key)
        if key in medmoe_fields and key not in ("patch_embed", "patch_embed_args"):
            out[key] = value
    if short == "transmil" and "embed_dim" in config and "num_landmarks" in medmoe_fields:
        out["num_landmarks"] = int(config["embed_dim"]) // 2  # MIL-Lab's TransMIL: landmarks = dim // 2
    layers = int(config.get("num_fc_layers", config.get("n_fc_layers", 1)) or 1)
    moe = config.get("moe_args") or {}
    if isinstance(moe, dict) and moe.get("num_experts", 0) > 0:
        args = {k: v for k, v in moe.items() if k not in ("input_dim", "dim")}
        out["patch_embed"] = "mammoth"
        out["patch_embed_args"] = args
    elif layers > 1 and "patch_embed" in medmoe_fields:
        out["patch_embed"] = "mlp"
        out["patch_embed_args"] = {"num_layers": layers}
    return out


def load_model(
    path: str | Path,
    name: str | None = None,
    *,
    num_classes: int | None = None,
    in_dim: int | None = None,
    reinit_head: bool = False,
    patch_embed_only: bool = False,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any], LoadReport]:
    """Build a medmoe MIL model and fill it from ``path`` (any supported checkpoint).

    The model is: the checkpoint's own when ``path`` is a medmoe checkpoint and no ``name`` is given;
    ``name`` (+ ``overrides``) otherwise, where a Hugging Face folder's ``config.json`` (MIL-Lab,
    FEATHER) supplies the name (from ``model_type``) and the settings the caller does not give.
    ``num_classes`` defaults to the file's head.

    Returns:
        ``(model, info, report)``: the model in eval mode on the CPU, a checkpoint-style info dict
        (``model_name``, ``class_names``, ``source``, and a medmoe checkpoint's own info) and the report.

    Raises:
        ValueError: no model name can be found (pass ``name``), or the file does not fit (listed).
    """
    from ..registry import create_model, get_entry, parse_model_name

    src = read_source(path)
    if src.file_format == "medmoe" and name is None and not overrides and num_classes is None and in_dim is None:
        from ..engine.checkpoint import build_model_from_info

        model = build_model_from_info(src.config or {})
        report = load_weights(model, src, reinit_head=reinit_head, patch_embed_only=patch_embed_only)
        return model.eval(), dict(src.config or {}), report
    hf = src.config if src.file_format == "huggingface-folder" else None
    if name is None and hf is not None and hf.get("model_type") in MIL_LAB_MODEL_TYPES:
        moe = hf.get("moe_args") or {}
        mammoth = isinstance(moe, dict) and moe.get("num_experts", 0) > 0
        name = MIL_LAB_MODEL_TYPES[hf["model_type"]] + (".base_mammoth" if mammoth else ".base")
    if name is None:
        raise ValueError(
            f"{path} is not a medmoe checkpoint and names no model: give the model name (e.g. "
            f"abmil.base_mammoth.uni), or convert it once: medmoe mil convert {path} --model NAME --out DIR"
        )
    parsed = parse_model_name(name)
    entry = get_entry(parsed.model)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    settings: dict[str, Any] = {}
    notes: list[str] = []
    if hf is not None:
        settings = reference_config_overrides(hf, parsed.model, fields)
        if settings:
            notes.append(f"settings from config.json: {sorted(settings)}")
    settings.update(overrides)
    if in_dim is None and "in_dim" in settings:
        in_dim = int(settings.pop("in_dim"))
    settings.pop("in_dim", None)
    classes = num_classes if num_classes is not None else settings.pop("num_classes", None)
    settings.pop("num_classes", None)
    probe = create_model(name, num_classes=int(classes or 2), in_dim=in_dim, **settings)
    probe_heads = head_keys(probe)
    mapping = _choose(src.state, parsed.model, set(probe.state_dict()), patch_embed_only, probe_heads)
    given = set(settings) | ({"in_dim"} if in_dim is not None else set())
    inferred = _infer_settings(mapping.state, parsed.model, probe, given)
    if inferred:
        notes.append("settings from the file's shapes: " + ", ".join(f"{k}={v}" for k, v in sorted(inferred.items())))
        in_dim = inferred.pop("in_dim", in_dim)
        settings.update(inferred)
    if classes is None:
        found = _infer_num_classes(mapping.state, probe_heads, probe)
        if found is None and probe_heads & set(mapping.state):
            found = probe.config.num_classes  # the head is there and has the probe's size
        classes = found or 2
        notes.append(f"num_classes = {classes} (from the file's head)" if found
                     else "num_classes = 2 (default; the file has no head)")
    model = create_model(name, num_classes=int(classes), in_dim=in_dim, **settings)
    report = load_weights(model, src, reinit_head=reinit_head, patch_embed_only=patch_embed_only)
    report.notes = notes + report.notes
    info: dict[str, Any] = {
        "model_name": model.model_name,
        "class_names": [str(i) for i in range(int(classes))],
        "source": str(path),
        "feature_stats": None,
    }
    if src.file_format == "medmoe" and src.config:
        info = {**src.config, **info, "class_names": src.config.get("class_names") or info["class_names"]}
    return model.eval(), info, report


def load_any_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model, info)`` for ``medmoe mil eval`` / ``predict`` / ``heatmap``: a medmoe checkpoint folder
    exactly as :func:`medmoe.engine.load_checkpoint` loads it, or any reference checkpoint that names its
    model (a MIL-Lab / FEATHER Hugging Face folder with ``config.json``) through :func:`load_model`
    (``info['load_report']`` holds the report). Other files need the model name once:
    ``medmoe mil convert PATH --model NAME --out DIR``.
    """
    from ..engine.checkpoint import load_checkpoint

    p = Path(path)
    folder = _medmoe_checkpoint_folder(p)
    if folder is not None:
        return load_checkpoint(folder, map_location=map_location, family="mil")
    if not p.exists():
        return load_checkpoint(p, map_location=map_location, family="mil")  # its own "does not exist" error
    model, info, report = load_model(p)
    info["load_report"] = report.summary()
    return model.to(map_location), info


def read_any_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The info dict :func:`load_any_checkpoint` would return (medmoe folders: read without the weights)."""
    from ..engine.checkpoint import read_checkpoint_info

    p = Path(path)
    folder = _medmoe_checkpoint_folder(p)
    if not p.exists() or folder is not None:
        return read_checkpoint_info(folder or p)
    return load_any_checkpoint(p)[1]


def _medmoe_checkpoint_folder(p: Path) -> Path | None:
    """The medmoe checkpoint folder ``p`` names (the folder, or its ``model.safetensors`` / ``config.json``),
    ``None`` when ``p`` is something else (a reference file or folder, or nothing)."""
    from ..engine.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    folder = p.parent if p.is_file() and p.name in (WEIGHTS_NAME, CONFIG_NAME) else p
    if folder.is_dir() and (folder / WEIGHTS_NAME).is_file() and _is_medmoe_folder(folder):
        return folder
    return None


def _is_medmoe_folder(folder: Path) -> bool:
    import json

    from .sources import is_medmoe_folder as is_medmoe

    try:
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
    except (OSError, ValueError):
        config = None
    return is_medmoe(folder, config if isinstance(config, dict) else None)
