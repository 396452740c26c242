"""Load checkpoints of the reference Mamba-HoME code (gmum/MambaHoME @ 8574abb) into medmoe's :class:`MambaHoME`.

The reference's training script saves ``{"step", "model", "optimizer", "scheduler"}`` with
``fabric.save``; ``model`` is the ``MambaHoME`` state dict, keys such as::

    mamba_encoder.downsample_layers.0.0.weight        -> encoder.downsample.0.weight
    mamba_encoder.downsample_layers.{i}.1.*           -> encoder.downsample.{i}.1.*
    mamba_encoder.gscs.{i}.proj*.*                    -> encoder.stages.{i}.gsc.proj*.*
    mamba_encoder.mamba_blocks.{i}.{j}.norm.*         -> encoder.stages.{i}.mamba_norms.{j}.*
    mamba_encoder.mamba_blocks.{i}.{j}.mamba.*        -> encoder.stages.{i}.mambas.{j}.*  (mamba_ssm names)
    mamba_encoder.norm_moe.{i}.{j}.*                  -> encoder.stages.{i}.moe_norms.{j}.*
    mamba_encoder.moe_layers.{i}.{j}.mlp.*            -> encoder.stages.{i}.moes.{j}.*
    encoder1..5.*, decoder1..5.*, out.*               -> unchanged (the same MONAI blocks)

Inside a HoME layer the release keeps one ``nn.Sequential`` per expert (``experts_first.{e}.0.weight``, ...);
medmoe stacks them (``experts_first.w1`` ...): :class:`medmoe.nn.HoME`'s load hook transposes and stacks them,
and the load is strict, so every tensor of the file is either loaded or reported as an error.

The model's settings are read from the tensor shapes (channels, depths, experts, slots, expert width, Mamba
state size); only the token **group sizes** are not stored in a checkpoint: the paper's
``(2048, 1024, 512, 256)`` unless ``group_sizes`` is given (the load report says which).

Files are read without running pickle code (:func:`medmoe.interop.sources.read_source`:
``.safetensors`` or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ..models.seg.mamba_home import MambaHoME, MambaHoMEConfig
from .report import CheckpointMismatchError, LoadReport
from .sources import read_source

__all__ = [
    "PAPER_GROUP_SIZES",
    "infer_mamba_home_config",
    "is_mamba_home_reference",
    "load_mamba_home_reference",
    "mamba_home_key_from_reference",
]

PAPER_GROUP_SIZES = (2048, 1024, 512, 256)

_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^mamba_encoder\.downsample_layers\.0\.0\.(.+)$", r"encoder.downsample.0.\1"),
        (r"^mamba_encoder\.downsample_layers\.([1-3])\.1\.(.+)$", r"encoder.downsample.\1.1.\2"),
        (r"^mamba_encoder\.gscs\.(\d)\.(.+)$", r"encoder.stages.\1.gsc.\2"),
        (r"^mamba_encoder\.mamba_blocks\.(\d)\.(\d+)\.norm\.(.+)$", r"encoder.stages.\1.mamba_norms.\2.\3"),
        (r"^mamba_encoder\.mamba_blocks\.(\d)\.(\d+)\.mamba\.(.+)$", r"encoder.stages.\1.mambas.\2.\3"),
        (r"^mamba_encoder\.norm_moe\.(\d)\.(\d+)\.(.+)$", r"encoder.stages.\1.moe_norms.\2.\3"),
        (r"^mamba_encoder\.moe_layers\.(\d)\.(\d+)\.mlp\.(.+)$", r"encoder.stages.\1.moes.\2.\3"),
        (r"^((?:encoder|decoder)[1-5]|out)\.(.+)$", r"\1.\2"),
    )
)
# wrappers some training set-ups add around the module (Fabric, torch.compile)
_WRAPPER_PREFIXES = ("_forward_module.", "_orig_mod.")


def mamba_home_key_from_reference(key: str) -> str | None:
    """medmoe's key for one reference key (before the expert stacking done on load), or ``None``."""
    for pattern, repl in _RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def is_mamba_home_reference(state: Mapping[str, Any]) -> bool:
    """True when ``state`` has the reference's key layout (``mamba_encoder.*`` keys)."""
    return any(_unwrap(k).startswith("mamba_encoder.") for k in state)


def _unwrap(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointMismatchError(f"not a Mamba-HoME reference checkpoint: tensor {key!r} is missing")
    return tuple(int(s) for s in state[key].shape)


def _expert_mult(d: int, first: tuple[int, ...], second: tuple[int, ...]) -> tuple[int, bool]:
    """(mult, geglu) from an expert's two linear weights ``(h_in, d)`` and ``(d, h)``."""
    h_in, h = first[0], second[1]
    geglu = h_in == 2 * h
    for mult in range(1, 33):
        if (int(d * mult * 2 / 3) if geglu else int(d * mult)) == h:
            return mult, geglu
    raise CheckpointMismatchError(f"expert width {h} for {d} features matches no integer expert_mult")


def infer_mamba_home_config(
    state: Mapping[str, Tensor], group_sizes: Sequence[int] | None = None, **overrides: Any
) -> MambaHoMEConfig:
    """The :class:`MambaHoMEConfig` a reference state dict was built with (see the module docstring).

    Args:
        state: reference keys -> tensors.
        group_sizes: tokens per group per stage (not stored in checkpoints); default :data:`PAPER_GROUP_SIZES`.
        overrides: further config fields (e.g. ``mamba_backend``).
    """
    state = {_unwrap(k): v for k, v in state.items()}
    p = "mamba_encoder."
    feats, depths, e1, e2, slots = [], [], [], [], []
    mults: set[tuple[int, bool]] = set()
    mamba: tuple[int, int, int] | None = None
    for i in range(4):
        d = _shape(state, f"{p}gscs.{i}.proj.weight")[0]
        feats.append(d)
        depth = 0
        while f"{p}mamba_blocks.{i}.{depth}.norm.alpha" in state:
            depth += 1
        depths.append(depth)
        if depth == 0:
            raise CheckpointMismatchError(f"stage {i} has no Mamba/HoME blocks; cannot read its expert counts")
        home = f"{p}moe_layers.{i}.0.mlp."
        e1.append(_shape(state, home + "expert_gates")[0])
        slots.append(_shape(state, home + "to_slot_embeds.0.weight")[0] // (d * e1[-1]))
        e2.append(_shape(state, home + "dynamic_slots_soft_moe.to_slot_embeds.0.weight")[0] // d)
        mults.add(_expert_mult(d, _shape(state, home + "experts_first.0.0.weight"),
                               _shape(state, home + "experts_first.0.3.weight")))
        m = f"{p}mamba_blocks.{i}.0.mamba."
        a_log, conv = _shape(state, m + "A_log"), _shape(state, m + "conv1d.weight")
        this = (a_log[1], conv[2], a_log[0] // d)
        if mamba is not None and this != mamba:
            raise CheckpointMismatchError(f"Mamba settings differ between stages: {mamba} vs {this}")
        mamba = this
    if len(set(slots)) != 1 or len(mults) != 1:
        raise CheckpointMismatchError(f"slots per expert {slots} / expert widths {mults} differ between stages")
    (mult, geglu), = mults
    d_state, d_conv, expand = mamba if mamba is not None else (16, 4, 2)
    # residual UNETR up-blocks always have a 1x1 projection (conv3): 2C -> C
    res_block = any(k.startswith("decoder") and ".conv3." in k for k in state)
    cfg: dict[str, Any] = {
        "in_channels": _shape(state, "encoder1.layer.conv1.conv.weight")[1],
        "num_classes": _shape(state, "out.conv.conv.weight")[0],
        "feature_size": tuple(feats), "depths": tuple(depths),
        "hidden_size": _shape(state, "encoder5.layer.conv1.conv.weight")[0],
        "num_experts": tuple(e1), "num_experts_second": tuple(e2),
        "group_sizes": tuple(group_sizes) if group_sizes is not None else PAPER_GROUP_SIZES,
        "slots_per_expert": slots[0], "expert_mult": mult, "geglu": geglu,
        "d_state": d_state, "d_conv": d_conv, "expand": expand, "res_block": res_block,
        "norm_name": "batch" if any(k.endswith("norm1.running_mean") for k in state) else "instance",
    }
    cfg.update(overrides)
    return MambaHoMEConfig(**cfg)


def load_mamba_home_reference(
    source: str | Path | Mapping[str, Tensor],
    group_sizes: Sequence[int] | None = None,
    map_location: str = "cpu",
    **overrides: Any,
) -> tuple[MambaHoME, LoadReport]:
    """Build a :class:`MambaHoME` from a reference checkpoint and load every tensor of it.

    Args:
        source: a ``.pth`` written by the reference's ``train.py`` (weights under ``model``), a
            ``.safetensors`` file, or a state dict with the reference's keys.
        group_sizes: the four token group sizes the model was trained with (default the paper's).
        map_location: device of the returned model.
        overrides: other :class:`MambaHoMEConfig` fields (e.g. ``mamba_backend="torch"``).

    Returns:
        ``(model in eval mode, LoadReport)``; the report lists every renamed key.

    Raises:
        CheckpointMismatchError: a key of the file has no place in the model, a model tensor is missing,
            or shapes differ (all listed).
        ValueError: the file cannot be read safely.
    """
    if isinstance(source, Mapping):
        raw, where, fmt, notes = dict(source), "<state dict>", "state-dict", []
    else:
        read = read_source(source)
        raw, where, fmt, notes = read.state, str(source), read.file_format, list(read.notes)
    if not is_mamba_home_reference(raw):
        raise CheckpointMismatchError(
            f"{where} is not a Mamba-HoME reference checkpoint (no 'mamba_encoder.*' keys; first keys: "
            f"{sorted(raw)[:5]})"
        )
    if any(_unwrap(k) != k for k in raw):
        notes.append(f"stripped wrapper prefixes {list(_WRAPPER_PREFIXES)}")
    state = {_unwrap(k): v for k, v in raw.items()}
    config = infer_mamba_home_config(state, group_sizes, **overrides)
    notes.append(
        f"config read from the tensor shapes: features {config.feature_size}, depths {config.depths}, "
        f"experts {config.num_experts}/{config.num_experts_second}, {config.num_classes} classes"
    )
    notes.append(
        f"group sizes {config.group_sizes} ({'given' if group_sizes is not None else 'the paper default'}; "
        "checkpoints do not store them)"
    )
    renamed: dict[str, str] = {}
    converted: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = mamba_home_key_from_reference(key)
        if new is None:
            unknown.append(key)
            continue
        converted[new] = value
        if new != key:
            renamed[key] = new
    if unknown:
        raise CheckpointMismatchError(
            f"{len(unknown)} tensor(s) of {where} have no place in medmoe's MambaHoME: {sorted(unknown)[:10]}"
        )
    model = MambaHoME(config)
    model.model_name = "mamba_home.reference"
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointMismatchError(f"{where}: {str(err).splitlines()[0]} ...") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"{where}: missing from the file {result.missing_keys[:10]}, not in the model "
            f"{result.unexpected_keys[:10]}"
        )
    report = LoadReport(source=where, file_format=fmt, key_format="mamba-home-reference", loaded=len(state),
                        renamed=renamed, notes=notes)
    report.notes.append("HoME experts: per-expert Linear weights stacked into experts_first/experts.w1,b1,w2,b2")
    return model.to(map_location).eval(), report
