"""Load checkpoints of the reference MOSAIC code (shixingm3-oss/mosaic-medical @ 912df1e) into :class:`MosaicModel`.

The reference's ``Trainer.save_checkpoint`` writes ``best_model.pth`` / ``checkpoint_roundN.pth`` as
``{"round", "student_state_dict", "teacher_state_dict", "optimizer_state_dict", "best_acc",
"scheduler_state_dict"}``; the model keys map as::

    patch_embed.patch_embed_2d.{proj,norm}.*        -> vit.patch_embed.{proj,norm}.*
    patch_embed.patch_embed_3d.{proj,norm}.*        -> patch_embed_3d.{proj,norm}.*
    cls_token / pos_embed_2d / pos_embed_3d         -> vit.cls_token / vit.pos_embed / pos_embed_3d
    encoder.blocks.N.{norm1,norm2,attn.qkv,attn.proj}.* -> vit.blocks.N.(same).*
    encoder.blocks.N.ffn.fc{1,2}.*                  -> vit.blocks.N.mlp.fc{1,2}.*
    encoder.blocks.N.adapter.expert_{a,b,c}.{layer_norm,down_proj,up_proj}.*
                                                    -> vit.blocks.N.adapter.specialists.{A,B,C}.{norm,down,up}.*
    encoder.blocks.N.adapter.adapter_{2d,3d}.*      -> vit.blocks.N.adapter.specialists.{2d,3d}.*  (v1 mode)
    encoder.norm.*                                  -> vit.norm.*
    heads.I.*                                       -> heads.<dataset I>.*

The heads are numbered in the reference's dataset order, which a checkpoint does not store. It is, in this
order of precedence: ``datasets`` given by the caller; the ``args.json`` the reference's ``main.py``
writes into the same output folder (``dataset_list``, ``only_2d``, ``only_3d``, ``use_interleaved``, resolved
as ``main.py`` does); or the one of the reference's lists (all 18, interleaved 18, 12 2-D, 6 3-D) whose class
counts match the heads' shapes. The report says which.

Everything else is read from the tensor shapes (width, depth, MLP ratio, patch sizes, 2-D image and 3-D volume
sides, specialist bottlenecks, adapters present or not); the number of attention heads is not stored (default
``width // 64``: 12 for ViT-B). The model is built as the reference runs it: 2-D tokenizer LayerNorm, PyTorch's
LayerNorm epsilon 1e-5 everywhere, frozen random 3-D tokenizer, adapter scale 0.1 (``adapter_scale``
otherwise). The load is strict: a tensor of the file with no place in the model, a model tensor missing from the
file, or a shape mismatch raises :class:`CheckpointMismatchError` listing them.

Files are read without running pickle code (``torch.load(weights_only=True)`` or ``.safetensors``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.medmnist import MOSAIC_REFERENCE_INTERLEAVED, MOSAIC_REFERENCE_ORDER, medmnist_info
from ..models.vit import MosaicConfig, MosaicModel, VisionTransformerConfig
from ..nn.adapters import ROUTING_TABLES
from .report import CheckpointMismatchError, LoadReport
from .sources import read_source

__all__ = [
    "REFERENCE_ALL",
    "REFERENCE_INTERLEAVED",
    "is_mosaic_reference",
    "load_mosaic_reference",
    "mosaic_key_from_reference",
    "mosaic_key_to_reference",
    "mosaic_state_to_reference",
    "read_mosaic_reference",
    "reference_dataset_order",
]

#: ``config/datasets.py``'s ``ALL_DATASETS`` (12 2-D then 6 3-D) and ``INTERLEAVED_DATASETS``, as MedMNIST flags.
REFERENCE_ALL: tuple[str, ...] = MOSAIC_REFERENCE_ORDER
REFERENCE_INTERLEAVED: tuple[str, ...] = MOSAIC_REFERENCE_INTERLEAVED
_REFERENCE_LISTS = {
    "ALL_DATASETS": REFERENCE_ALL,
    "INTERLEAVED_DATASETS": REFERENCE_INTERLEAVED,
    "DATASETS_2D": REFERENCE_ALL[:12],
    "DATASETS_3D": REFERENCE_ALL[12:],
}

_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^patch_embed\.patch_embed_2d\.(proj|norm)\.(weight|bias)$", r"vit.patch_embed.\1.\2"),
        (r"^patch_embed\.patch_embed_3d\.(proj|norm)\.(weight|bias)$", r"patch_embed_3d.\1.\2"),
        (r"^cls_token$", "vit.cls_token"),
        (r"^pos_embed_2d$", "vit.pos_embed"),
        (r"^pos_embed_3d$", "pos_embed_3d"),
        (r"^encoder\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj)\.(weight|bias)$", r"vit.blocks.\1.\2.\3"),
        (r"^encoder\.blocks\.(\d+)\.ffn\.(fc1|fc2)\.(weight|bias)$", r"vit.blocks.\1.mlp.\2.\3"),
        (r"^encoder\.norm\.(weight|bias)$", r"vit.norm.\1"),
    )
)
_ADAPTER = re.compile(r"^encoder\.blocks\.(\d+)\.adapter\.(expert_[abc]|adapter_2d|adapter_3d)\."
                      r"(layer_norm|down_proj|up_proj)\.(weight|bias)$")
_SPECIALIST = {"expert_a": "A", "expert_b": "B", "expert_c": "C", "adapter_2d": "2d", "adapter_3d": "3d"}
_ADAPTER_PART = {"layer_norm": "norm", "down_proj": "down", "up_proj": "up"}
_HEAD = re.compile(r"^heads\.(\d+)\.(weight|bias)$")


def mosaic_key_from_reference(key: str, datasets: Sequence[str] | None = None) -> str | None:
    """medmoe's key for one reference key, or ``None`` when it has no place (heads need ``datasets``)."""
    for pattern, repl in _RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    m = _ADAPTER.match(key)
    if m:
        block, spec, part, kind = m.groups()
        return f"vit.blocks.{block}.adapter.specialists.{_SPECIALIST[spec]}.{_ADAPTER_PART[part]}.{kind}"
    m = _HEAD.match(key)
    if m and datasets is not None and int(m.group(1)) < len(datasets):
        return f"heads.{datasets[int(m.group(1))]}.{m.group(2)}"
    return None


_INVERSE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^vit\.patch_embed\.(proj|norm)\.(weight|bias)$", r"patch_embed.patch_embed_2d.\1.\2"),
        (r"^patch_embed_3d\.(proj|norm)\.(weight|bias)$", r"patch_embed.patch_embed_3d.\1.\2"),
        (r"^vit\.cls_token$", "cls_token"),
        (r"^vit\.pos_embed$", "pos_embed_2d"),
        (r"^pos_embed_3d$", "pos_embed_3d"),
        (r"^vit\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj)\.(weight|bias)$", r"encoder.blocks.\1.\2.\3"),
        (r"^vit\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"encoder.blocks.\1.ffn.\2.\3"),
        (r"^vit\.norm\.(weight|bias)$", r"encoder.norm.\1"),
    )
)
_INV_ADAPTER = re.compile(r"^vit\.blocks\.(\d+)\.adapter\.specialists\.(\w+)\.(norm|down|up)\.(weight|bias)$")


def mosaic_key_to_reference(key: str, datasets: Sequence[str]) -> str | None:
    """The reference's key for one medmoe key (heads numbered by their place in ``datasets``), or ``None``."""
    for pattern, repl in _INVERSE:
        if pattern.match(key):
            return pattern.sub(repl, key)
    m = _INV_ADAPTER.match(key)
    spec_name = {v: k for k, v in _SPECIALIST.items()}
    if m and m.group(2) in spec_name:
        part_name = {v: k for k, v in _ADAPTER_PART.items()}
        block, spec, part, kind = m.groups()
        return f"encoder.blocks.{block}.adapter.{spec_name[spec]}.{part_name[part]}.{kind}"
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "heads" and parts[1] in datasets:
        return f"heads.{list(datasets).index(parts[1])}.{parts[2]}"
    return None


def mosaic_state_to_reference(model: MosaicModel) -> dict[str, Tensor]:
    """``model``'s weights under the reference's keys (heads numbered in ``model.config.tasks`` order): what
    :func:`load_mosaic_reference` reads back. Only for models the reference can express (A/B/C or 2d/3d
    specialists, a 2-D tokenizer LayerNorm).

    Raises:
        ValueError: a tensor has no reference name (e.g. a ``shared`` specialist, no 2-D tokenizer LayerNorm).
    """
    if not model.config.patch_norm_2d:
        raise ValueError("the reference's 2-D tokenizer has a LayerNorm; this model has none (patch_norm_2d=False)")
    names = [t.name for t in model.config.tasks]
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        new = mosaic_key_to_reference(key, names)
        if new is None:
            raise ValueError(f"{key!r} has no name in the reference's MOSAIC model")
        out[new] = value.detach().clone()
    return out


def is_mosaic_reference(state: Mapping[str, Any]) -> bool:
    """True when ``state`` has the reference's key layout (``patch_embed.patch_embed_2d.*`` and ``encoder.*``)."""
    return any(k.startswith("patch_embed.patch_embed_2d.") for k in state) and any(
        k.startswith("encoder.blocks.") for k in state
    )


def read_mosaic_reference(source: str | Path, *, teacher: bool = False) -> tuple[dict[str, Tensor], str, list[str]]:
    """The reference state dict in ``source`` (``best_model.pth``, ``.safetensors`` or a bare state dict file).

    Returns:
        ``(state, file_format, notes)``; from a training checkpoint the student's weights
        (``student_state_dict``) or, with ``teacher=True``, the EMA teacher's (``teacher_state_dict``).

    Raises:
        ValueError: missing file, or a file that cannot be read without running pickle code.
    """
    p = Path(source).expanduser()
    if not p.is_file():
        raise ValueError(f"reference MOSAIC checkpoint {str(p)!r} does not exist or is not a file")
    if p.suffix == ".safetensors":
        read = read_source(p)
        return dict(read.state), read.file_format, list(read.notes)
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{p} cannot be read without running pickle code (torch.load(weights_only=True) failed: "
            f"{type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a MOSAIC checkpoint dict")
    notes: list[str] = []
    key = "teacher_state_dict" if teacher else "student_state_dict"
    if key in obj:
        extra = {k: obj[k] for k in ("round", "best_acc") if isinstance(obj.get(k), int | float)}
        notes.append(f"weights taken from the file's {key!r} entry" + (f" ({extra})" if extra else ""))
        obj = obj[key]
    elif teacher:
        raise ValueError(f"{p} has no 'teacher_state_dict' entry (keys: {sorted(map(str, obj))[:8]}): it holds no EMA "
                         "teacher to load (--teacher / teacher=True)")
    if not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ValueError(f"{p} does not hold a state dict (keys: {sorted(map(str, obj))[:8]})")
    return dict(obj), "torch", notes


def _classes(flag: str) -> int:
    return medmnist_info(flag).task_spec_dict(28)["num_classes"]


def reference_dataset_order(
    head_sizes: Sequence[int], args_json: str | Path | None = None
) -> tuple[list[str], str]:
    """The reference's dataset list for heads with ``head_sizes`` outputs, and where it came from.

    Args:
        head_sizes: outputs of ``heads.0``, ``heads.1``, ...
        args_json: the reference's ``args.json`` (read when it exists).

    Raises:
        CheckpointMismatchError: no candidate list matches the heads (pass ``datasets``).
    """
    if args_json is not None and Path(args_json).is_file():
        try:
            args = json.loads(Path(args_json).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointMismatchError(
                f"{args_json} (the reference run's arguments, read for the head order) is not valid JSON ({err}); "
                "fix or remove it, or give the datasets in head order (--reference-datasets)"
            ) from err
        if not isinstance(args, dict):
            raise CheckpointMismatchError(f"{args_json} does not hold the reference's argument dict")
        if args.get("dataset_list"):
            names = [str(n).lower() for n in args["dataset_list"]]
            how = "args.json dataset_list"
        else:
            key = ("DATASETS_2D" if args.get("only_2d") else "DATASETS_3D" if args.get("only_3d")
                   else "INTERLEAVED_DATASETS" if args.get("use_interleaved") else "ALL_DATASETS")
            names, how = list(_REFERENCE_LISTS[key]), f"args.json -> {key}"
        if [_classes(n) for n in names] != list(head_sizes):
            raise CheckpointMismatchError(
                f"{args_json} gives the datasets {names}, whose class counts do not match the heads {list(head_sizes)}; "
                "give the datasets in head order (--reference-datasets)"
            )
        return names, how
    for key, names in _REFERENCE_LISTS.items():
        if [_classes(n) for n in names] == list(head_sizes):
            return list(names), f"the reference's {key} (matched by the heads' class counts; no args.json)"
    raise CheckpointMismatchError(
        f"cannot tell which datasets the {len(head_sizes)} heads (outputs {list(head_sizes)}) belong to: give the "
        "dataset list in the reference's head order (--reference-datasets on the command line, datasets=[...] in Python)"
    )


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointMismatchError(f"not a MOSAIC reference checkpoint: tensor {key!r} is missing")
    return tuple(int(s) for s in state[key].shape)


def _side(tokens: int, dims: int, what: str) -> int:
    side = round(tokens ** (1.0 / dims))
    if side**dims != tokens:
        raise CheckpointMismatchError(f"{what} holds {tokens} patch positions: not a square / cube grid")
    return side


def infer_mosaic_config(
    state: Mapping[str, Tensor], datasets: Sequence[str], *, num_heads: int | None = None,
    adapter_scale: float = 0.1,
) -> MosaicConfig:
    """The :class:`MosaicConfig` a reference state dict was built with (see the module docstring)."""
    d = _shape(state, "cls_token")[-1]
    p2 = _shape(state, "patch_embed.patch_embed_2d.proj.weight")
    p3 = _shape(state, "patch_embed.patch_embed_3d.proj.weight")
    depth = 0
    while f"encoder.blocks.{depth}.norm1.weight" in state:
        depth += 1
    if depth == 0:
        raise CheckpointMismatchError("not a MOSAIC reference checkpoint: no encoder.blocks.N.* tensors")
    mlp_hidden = _shape(state, "encoder.blocks.0.ffn.fc1.weight")[0]
    img = _side(_shape(state, "pos_embed_2d")[1] - 1, 2, "pos_embed_2d") * p2[-1]
    vol = _side(_shape(state, "pos_embed_3d")[1] - 1, 3, "pos_embed_3d") * p3[-1]
    experts = sorted({m.group(2) for k in state if (m := _ADAPTER.match(k))})
    use_adapters = bool(experts)
    routing: str | dict = "mosaic"
    if use_adapters:
        table_name = "v1" if experts[0].startswith("adapter_") else "mosaic"
        table = ROUTING_TABLES[table_name].to_dict()
        for spec in experts:
            name = _SPECIALIST[spec]
            table["specialists"][name]["bottleneck"] = _shape(state, f"encoder.blocks.0.adapter.{spec}.down_proj.weight")[0]
        if table == ROUTING_TABLES[table_name].to_dict():
            routing = table_name
        else:
            table["name"] = f"{table_name}-reference"
            routing = table
    tasks = []
    for flag in datasets:
        info = medmnist_info(flag)
        tasks.append(info.task_spec_dict(vol if info.spatial_dims == 3 else img))
    vit = VisionTransformerConfig(
        img_size=img, patch_size=p2[-1], in_chans=p2[1], embed_dim=d, depth=depth,
        num_heads=num_heads or max(1, d // 64), mlp_ratio=mlp_hidden / d, norm_eps=1e-5,
    )
    return MosaicConfig(
        tasks=tasks, vit=vit, routing=routing, adapter_scale=adapter_scale, vol_size_3d=vol,
        patch_size_3d=p3[-1], normalize_2d="imagenet", freeze_backbone=True, train_tokenizer_3d=False,
        patch_norm_2d=True, use_adapters=use_adapters,
    )


def load_mosaic_reference(
    source: str | Path | Mapping[str, Tensor],
    datasets: Sequence[str] | None = None,
    *,
    teacher: bool = False,
    num_heads: int | None = None,
    adapter_scale: float = 0.1,
    map_location: str | torch.device = "cpu",
) -> tuple[MosaicModel, LoadReport]:
    """Build a :class:`MosaicModel` from a reference checkpoint and load every tensor of it.

    Args:
        source: ``best_model.pth`` (or ``checkpoint_roundN.pth``) of the reference's ``main.py``, a
            ``.safetensors`` file, or a state dict with the reference's keys.
        datasets: MedMNIST flags in the reference's head order (default: ``args.json`` beside the file, or
            the reference list whose class counts match the heads).
        teacher: load the EMA teacher (``teacher_state_dict``) instead of the student.
        num_heads: attention heads (not stored; default ``width // 64``).
        adapter_scale: the adapters' output scale (not stored; the reference's default 0.1).
        map_location: device of the returned model.

    Returns:
        ``(model in eval mode, LoadReport)``; the report lists every renamed key.

    Raises:
        CheckpointMismatchError: unknown, missing or mis-shaped tensors (all listed), or heads whose datasets
            cannot be told.
        ValueError: the file cannot be read safely.
    """
    args_json = None
    if isinstance(source, Mapping):
        state, where, fmt, notes = dict(source), "<state dict>", "state-dict", []
    else:
        state, fmt, notes = read_mosaic_reference(source, teacher=teacher)
        where = str(source)
        args_json = Path(source).expanduser().parent / "args.json"
    if not is_mosaic_reference(state):
        raise CheckpointMismatchError(
            f"{where} is not a MOSAIC reference checkpoint (no 'patch_embed.patch_embed_2d.*' / 'encoder.blocks.*' "
            f"keys; first keys: {sorted(state)[:5]})"
        )
    n_heads = 0
    while f"heads.{n_heads}.weight" in state:
        n_heads += 1
    head_sizes = [_shape(state, f"heads.{i}.weight")[0] for i in range(n_heads)]
    if datasets is not None:
        names = [str(n).lower() for n in datasets]
        if [_classes(n) for n in names] != head_sizes:
            raise CheckpointMismatchError(
                f"the datasets {names} (--reference-datasets) have {[_classes(n) for n in names]} classes, the "
                f"file's heads {head_sizes} outputs (heads are numbered in the reference's dataset order)"
            )
        how = "given"
    else:
        names, how = reference_dataset_order(head_sizes, args_json)
    notes.append(f"heads 0..{n_heads - 1} -> datasets {names} ({how})")
    config = infer_mosaic_config(state, names, num_heads=num_heads, adapter_scale=adapter_scale)
    notes.append(
        f"config read from the tensor shapes: width {config.vit.embed_dim}, depth {config.vit.depth}, "
        f"2-D {config.vit.img_size}^2 / patch {config.vit.patch_size}, 3-D {config.vol_size_3d}^3 / patch "
        f"{config.patch_size_3d}, routing {config.routing if isinstance(config.routing, str) else config.routing['name']}"
        f"{'' if config.use_adapters else ' (no adapters: the --no_adapter baseline)'}"
    )
    notes.append(
        f"not stored, assumed: {config.vit.num_heads} attention heads{' (given)' if num_heads else ''}, adapter "
        f"scale {adapter_scale}, LayerNorm eps 1e-5 (PyTorch's default, as the reference)"
    )
    renamed: dict[str, str] = {}
    converted: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = mosaic_key_from_reference(key, names)
        if new is None:
            unknown.append(key)
            continue
        converted[new] = value
        renamed[key] = new
    if unknown:
        raise CheckpointMismatchError(
            f"{len(unknown)} tensor(s) of {where} have no place in medmoe's MosaicModel: {sorted(unknown)[:10]}"
        )
    model = MosaicModel(config)
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointMismatchError(f"{where}: {str(err).splitlines()[0]} ...") from err
    if result.missing_keys or result.unexpected_keys:
        missing = [mosaic_key_to_reference(k, names) or k for k in result.missing_keys]
        raise CheckpointMismatchError(
            f"{where}: {len(missing)} tensor(s) missing from the file: {missing[:10]} (reference names; the model "
            f"built from the file's shapes needs them)"
            + (f", not in the model {result.unexpected_keys[:10]}" if result.unexpected_keys else "")
        )
    report = LoadReport(source=where, file_format=fmt, key_format="mosaic-reference", loaded=len(converted),
                        renamed={k: v for k, v in renamed.items() if k != v}, notes=notes)
    return model.to(map_location).eval(), report
