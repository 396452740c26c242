"""Load ImageNet ViT weights strictly: the original JAX ``.npz`` and timm ``.safetensors`` / ``.pth``.

Every checkpoint is first converted to timm names (:func:`jax_npz_to_timm`), then matched against the
model's backbone parameters (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.*`` except the
adapters, ``norm``) with :func:`load_vit_weights`:

* a backbone tensor missing from the file, a file tensor the backbone does not have, or a shape that
  cannot be reconciled raises :class:`ViTWeightsError` naming every offending key;
* the classifier tensors (``head.*`` and the IN-21k ``pre_logits.*`` representation layer) are dropped
  and listed in the report, unless ``load_head=True`` and the shapes match;
* a position embedding for another patch grid (e.g. 14x14 -> 4x4 for 64^2 inputs) is resampled
  bicubically; the cls position is kept.

JAX layout of the original ``ViT-B_16.npz`` (google-research/vision_transformer) and the conversion:

=================================================================  ===================================
``embedding/kernel`` (p, p, c, d) HWIO                              ``patch_embed.proj.weight`` OIHW
``cls`` (1, 1, d), ``Transformer/posembed_input/pos_embedding``     ``cls_token``, ``pos_embed``
``.../encoderblock_i/LayerNorm_0/{scale,bias}``                      ``blocks.i.norm1.{weight,bias}``
``.../MultiHeadDotProductAttention_1/{query,key,value}/kernel``      ``blocks.i.attn.qkv.weight`` (cat,
(d, h, d/h) and ``.../bias`` (h, d/h)                                transposed)
``.../MultiHeadDotProductAttention_1/out/kernel`` (h, d/h, d)        ``blocks.i.attn.proj.weight``
``.../LayerNorm_2``, ``.../MlpBlock_3/Dense_{0,1}``                  ``norm2``, ``mlp.fc1``, ``mlp.fc2``
``Transformer/encoder_norm``, ``pre_logits``, ``head``               ``norm``, ``pre_logits.fc``, ``head``
=================================================================  ===================================
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .tokenizers import resample_pos_embed

__all__ = [
    "ViTWeightsError",
    "WeightsReport",
    "jax_npz_to_timm",
    "load_vit_weights",
    "read_vit_state_dict",
]

logger = logging.getLogger(__name__)

#: Where ImageNet ViT-B/16 weights come from (they cannot be downloaded by medmoe in every environment).
WEIGHTS_HELP = (
    "ViT-B/16 ImageNet-21k weights: the original JAX file 'ViT-B_16.npz' from "
    "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz, or a timm checkpoint "
    "(e.g. 'model.safetensors' of timm/vit_base_patch16_224.augreg2_in21k_ft_in1k or "
    "timm/vit_base_patch16_224.orig_in21k on the Hugging Face Hub). Pass its path; or use "
    "weights='none' for a randomly initialised backbone (results will be far worse)."
)

_CLASSIFIER = re.compile(r"^(head|pre_logits)\.")


class ViTWeightsError(ValueError):
    """A weight file is missing, unreadable, or does not match the ViT."""


@dataclass
class WeightsReport:
    """What :func:`load_vit_weights` did.

    Attributes:
        path: the file.
        format: ``'jax-npz'``, ``'safetensors'`` or ``'torch'``.
        loaded: backbone keys filled from the file.
        ignored: file keys dropped on purpose (classifier / representation layer).
        resampled: keys whose grid was resampled, ``key -> (old shape, new shape)``.
    """

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    resampled: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.format} weights from {self.path}: {len(self.loaded)} tensors loaded"
        if self.resampled:
            text += ", resampled " + ", ".join(f"{k} {o}->{n}" for k, (o, n) in self.resampled.items())
        if self.ignored:
            text += f", ignored {len(self.ignored)} classifier tensors ({', '.join(self.ignored)})"
        return text


def _t(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).float()


def jax_npz_to_timm(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Convert the arrays of an original JAX ViT ``.npz`` into a timm-named state dict.

    Raises:
        ViTWeightsError: a key is not part of the known layout (names every such key), or a block is
            incomplete.
    """
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in arrays:
            raise ViTWeightsError(f"JAX ViT checkpoint lacks {key!r}")
        used.add(key)
        return arrays[key]

    kernel = take("embedding/kernel")  # (p, p, c, d)
    out["patch_embed.proj.weight"] = _t(kernel.transpose(3, 2, 0, 1))
    out["patch_embed.proj.bias"] = _t(take("embedding/bias"))
    out["cls_token"] = _t(take("cls"))
    out["pos_embed"] = _t(take("Transformer/posembed_input/pos_embedding"))
    out["norm.weight"] = _t(take("Transformer/encoder_norm/scale"))
    out["norm.bias"] = _t(take("Transformer/encoder_norm/bias"))
    blocks = sorted(
        {int(m.group(1)) for k in arrays if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
    )
    for i in blocks:
        bp, tp = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = bp + "MultiHeadDotProductAttention_1/"
        out[tp + "norm1.weight"] = _t(take(bp + "LayerNorm_0/scale"))
        out[tp + "norm1.bias"] = _t(take(bp + "LayerNorm_0/bias"))
        qkv = [take(f"{mha}{n}/kernel") for n in ("query", "key", "value")]  # each (d, h, d/h)
        out[tp + "attn.qkv.weight"] = torch.cat([_t(w.reshape(w.shape[0], -1).T) for w in qkv])
        out[tp + "attn.qkv.bias"] = torch.cat([_t(take(f"{mha}{n}/bias").reshape(-1)) for n in ("query", "key", "value")])
        o = take(mha + "out/kernel")  # (h, d/h, d)
        out[tp + "attn.proj.weight"] = _t(o.reshape(-1, o.shape[-1]).T)
        out[tp + "attn.proj.bias"] = _t(take(mha + "out/bias"))
        out[tp + "norm2.weight"] = _t(take(bp + "LayerNorm_2/scale"))
        out[tp + "norm2.bias"] = _t(take(bp + "LayerNorm_2/bias"))
        for r in (0, 1):
            out[f"{tp}mlp.fc{r + 1}.weight"] = _t(take(f"{bp}MlpBlock_3/Dense_{r}/kernel").T)
            out[f"{tp}mlp.fc{r + 1}.bias"] = _t(take(f"{bp}MlpBlock_3/Dense_{r}/bias"))
    for name in ("pre_logits", "head"):
        if f"{name}/kernel" in arrays:
            dst = "pre_logits.fc" if name == "pre_logits" else "head"
            out[f"{dst}.weight"] = _t(take(f"{name}/kernel").T)
            out[f"{dst}.bias"] = _t(take(f"{name}/bias"))
    unknown = sorted(set(arrays) - used)
    if unknown:
        raise ViTWeightsError(
            f"JAX ViT checkpoint has {len(unknown)} tensors medmoe does not know how to map: {unknown[:20]}"
        )
    return out


def read_vit_state_dict(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """Read a ViT weight file into a timm-named state dict; returns ``(state_dict, format)``.

    ``.npz`` = original JAX layout; ``.safetensors``; anything else is read with ``torch.load``
    (``weights_only=True``), unwrapping ``{'state_dict': ...}`` / ``{'model': ...}`` and ``module.`` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise ViTWeightsError(f"ViT weight file {str(path)!r} does not exist. {WEIGHTS_HELP}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            return jax_npz_to_timm(arrays), "jax-npz"
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state, fmt = load_file(str(path)), "safetensors"
        else:
            state, fmt = torch.load(str(path), map_location="cpu", weights_only=True), "torch"
    except ViTWeightsError:
        raise
    except Exception as err:
        raise ViTWeightsError(f"cannot read ViT weights from {str(path)!r}: {err}") from err
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ViTWeightsError(f"{str(path)!r} does not hold a state dict of tensors")
    state = {re.sub(r"^(module\.|model\.)", "", k): v for k, v in state.items()}
    return state, fmt


def _is_backbone_key(key: str) -> bool:
    return ".adapter." not in key and not _CLASSIFIER.match(key)


def load_vit_weights(vit: nn.Module, path: str | Path, *, load_head: bool = False) -> WeightsReport:
    """Load ImageNet weights into a :class:`~medmoe.models.vit.VisionTransformer`, strictly.

    Args:
        vit: the ViT (adapters, if attached, are not touched).
        path: ``.npz`` (JAX), ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` (timm names).
        load_head: also load ``head.*`` (shapes must match); otherwise the classifier is dropped.

    Returns:
        a :class:`WeightsReport`.

    Raises:
        ViTWeightsError: missing file, unknown / missing tensors, or incompatible shapes.
    """
    state, fmt = read_vit_state_dict(path)
    report = WeightsReport(path=str(path), format=fmt)
    own = {k: v for k, v in vit.state_dict().items() if _is_backbone_key(k) or (load_head and k.startswith("head."))}
    # the 2-D tokenizer LayerNorm (MOSAIC's patch_norm) is not part of an ImageNet ViT: when the file lacks it
    # it keeps its initialisation (weight 1, bias 0), as the MOSAIC reference's npz loader leaves it
    kept_at_init = sorted(k for k in own if k.startswith("patch_embed.norm.") and k not in state)
    for k in kept_at_init:
        own.pop(k)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in state if k not in own and not _CLASSIFIER.match(k))
    if missing or unexpected:
        raise ViTWeightsError(
            f"{str(path)!r} does not match the ViT: missing {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}; unexpected {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}. Is it a ViT with a cls token and the same depth / "
            f"width ({getattr(getattr(vit, 'config', None), 'depth', '?')} blocks)?"
        )
    report.ignored = sorted(k for k in state if k not in own)
    new_state: dict[str, Tensor] = {}
    bad: list[str] = []
    for key, target in own.items():
        value = state[key]
        if key == "pos_embed" and value.shape != target.shape and value.ndim == 3 and value.shape[-1] == target.shape[-1]:
            grid = tuple(vit.patch_embed.grid)  # type: ignore[union-attr]
            try:
                value = resample_pos_embed(value, grid, num_prefix_tokens=1)
            except ValueError as err:
                raise ViTWeightsError(f"cannot resample pos_embed {tuple(state[key].shape)}: {err}") from err
            report.resampled[key] = (tuple(state[key].shape), tuple(value.shape))
        if value.shape != target.shape:
            bad.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        new_state[key] = value.to(target.dtype)
    if bad:
        raise ViTWeightsError(f"{str(path)!r}: incompatible shapes: " + "; ".join(bad[:20]))
    result = vit.load_state_dict(new_state, strict=False)
    leftover = [k for k in result.missing_keys if k in own]
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded above
        raise ViTWeightsError(f"internal mapping error: {leftover} {result.unexpected_keys}")
    report.loaded = sorted(new_state)
    if kept_at_init:
        logger.info("%s: %s not in the file, kept at initialisation (LayerNorm weight 1, bias 0)", path, kept_at_init)
    logger.info(report.summary())
    return report

