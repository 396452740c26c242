"""MOSAIC: a frozen ViT with mixture-of-specialist adapters and one head per dataset (2-D and 3-D).

Notation: ``b`` batch, ``c`` channels, ``h, w`` image size, ``z`` depth, ``t`` tokens, ``d`` features.

* **Modality-aware tokenizer.** 2-D images ``(b, c, h, w)`` go through the ViT's own (pretrained)
  ``patch_embed`` + ``pos_embed`` (grayscale is repeated to 3 channels, ImageNet-style normalisation
  inside the model), followed, as in the reference (``model/patch_embed.py``), by a LayerNorm over the
  patch tokens (``vit.patch_embed.norm``, ``MosaicConfig.patch_norm_2d``; checkpoints written before that
  setting existed load without it, as they were built); 3-D volumes ``(b, 1, z, h, w)`` through :class:`PatchEmbed3d` (8^3 patches at 64^3,
  LayerNorm) with its own position embedding ``pos_embed_3d``. Both share the ViT's cls token. The input
  rank picks the path. Unlike the reference code (which leaves them frozen at random initialisation)
  the 3-D tokenizer and ``pos_embed_3d`` are **trainable** (``MosaicConfig.train_tokenizer_3d``).
* **Specialists.** Every block carries a :class:`~medmoe.nn.adapters.MixtureOfSpecialists` parallel
  to its MLP, hard-routed by dataset through a :class:`~medmoe.nn.adapters.RoutingTable`.
* **Heads** by task type (MedMNIST names): ``multi-class`` and ``ordinal-regression`` -> ``C`` logits
  (softmax, cross-entropy), ``binary-class`` -> 2 logits (softmax, cross-entropy, as MOSAIC),
  ``multi-label, binary-class`` -> ``L`` logits (sigmoid, BCE). :func:`task_scores` turns logits into
  the scores the official MedMNIST evaluator expects; :func:`task_loss` checks the labels' shape.

Parameter names: ``vit.*`` (timm names, ``vit.blocks.N.adapter.specialists.<S>.*``),
``patch_embed_3d.*``, ``pos_embed_3d``, ``heads.<dataset>.*``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import SETTING, InputError
from ...nn.adapters import RoutingTable, get_routing_table
from ...nn.backend import make_linear
from .tokenizers import PatchEmbed3d, resample_pos_embed
from .vit import VisionTransformer, VisionTransformerConfig

__all__ = [
    "TASK_TYPES",
    "MosaicConfig",
    "MosaicModel",
    "MosaicOutput",
    "TaskSpec",
    "check_labels",
    "task_loss",
    "task_scores",
]

#: The four MedMNIST task types.
TASK_TYPES = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")

_NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass
class TaskSpec:
    """One dataset served by a :class:`MosaicModel`.

    Attributes:
        name: dataset name (MedMNIST flag, e.g. ``"pathmnist"``); selects the head and the specialist.
        task: one of :data:`TASK_TYPES`.
        num_classes: classes (multi-class / ordinal / binary: 2) or labels (multi-label).
        spatial_dims: 2 (images) or 3 (volumes).
        channels: channels of the stored images (1 grayscale, 3 RGB).
        image_size: expected input side (``None`` = any).
    """

    name: str
    task: str
    num_classes: int
    spatial_dims: int = 2
    channels: int = 1
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_TYPES:
            raise ValueError(f"dataset {self.name!r}: unknown task {self.task!r}; expected one of {TASK_TYPES}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"dataset {self.name!r}: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.num_classes < 2 and self.task != "multi-label, binary-class":
            raise ValueError(f"dataset {self.name!r}: needs at least 2 classes, got {self.num_classes}")
        if self.task == "binary-class" and self.num_classes != 2:
            raise ValueError(f"dataset {self.name!r}: a binary task has 2 classes, got {self.num_classes}")

    @property
    def num_outputs(self) -> int:
        """Head outputs: ``num_classes`` (2 for binary tasks, softmax over 2 logits as MOSAIC)."""
        return self.num_classes

    @property
    def num_label_columns(self) -> int:
        """Columns of the label array: ``num_classes`` for multi-label, else 1."""
        return self.num_classes if self.task == "multi-label, binary-class" else 1


@dataclass
class MosaicConfig:
    """Everything that defines a :class:`MosaicModel` (saved inside every checkpoint).

    Attributes:
        tasks: the datasets (:class:`TaskSpec` or dicts), one head each.
        vit: backbone architecture (default ViT-B/16 at 224^2).
        routing: routing table: ``"mosaic"`` (A/B/C, paper), ``"v1"``, ``"shared"`` or a table dict.
        adapter_scale: adapter output scale (0.1).
        adapter_dropout: dropout inside the adapters.
        adapter_layer_norm: LayerNorm at the adapter input (MOSAIC: yes).
        vol_size_3d: nominal volume side of the 3-D tokenizer (64; 28^3 inputs use a resampled grid).
        patch_size_3d: 3-D patch side (8).
        normalize_2d: ``"imagenet"`` (MOSAIC's transform), ``"inception"`` (mean = std = 0.5: what the
            original JAX ViT-B/16 was trained with) or ``"none"``; applied inside the model to 2-D inputs
            in ``[0, 1]``.
        image_size_2d: resize every 2-D input to this side first (e.g. 224, MedMNIST+ protocol);
            ``None`` keeps the native size (the position embedding is resampled instead).
        freeze_backbone: freeze the ViT (everything but adapters, heads and the 3-D tokenizer).
        train_tokenizer_3d: train the 3-D patch embedding and ``pos_embed_3d`` (the reference freezes
            them at random initialisation).
        patch_norm_2d: LayerNorm over the 2-D patch tokens (the reference's tokenizer: yes; frozen with
            the backbone, so it stays the identity affine map of its initialisation). Overrides
            ``vit.patch_norm``.
        use_adapters: attach the specialist adapters (``False``: the reference's ``--no_adapter`` baseline,
            frozen ViT + heads only).
    """

    tasks: list[TaskSpec] = field(default_factory=list)
    vit: VisionTransformerConfig = field(default_factory=VisionTransformerConfig)
    routing: str | dict = "mosaic"
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.0
    adapter_layer_norm: bool = True
    vol_size_3d: int = 64
    patch_size_3d: int = 8
    normalize_2d: str = "imagenet"
    image_size_2d: int | None = None
    freeze_backbone: bool = True
    train_tokenizer_3d: bool = True
    patch_norm_2d: bool = True
    use_adapters: bool = True

    def __post_init__(self) -> None:
        self.tasks = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in self.tasks]
        if isinstance(self.vit, Mapping):
            self.vit = VisionTransformerConfig(**self.vit)
        if not self.tasks:
            raise ValueError("MosaicConfig needs at least one task (dataset)")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate dataset names in MosaicConfig.tasks: {names}")
        if self.normalize_2d not in _NORMALIZATION:
            raise InputError(f"{{normalize_2d}} must be one of {sorted(_NORMALIZATION)}, got {self.normalize_2d!r}",
                             normalize_2d=SETTING)
        table = get_routing_table(self.routing)
        for t in self.tasks:  # fail early on an unroutable dataset
            table.route(t.name, spatial_dims=t.spatial_dims, channels=t.channels)

    @property
    def task_by_name(self) -> dict[str, TaskSpec]:
        return {t.name: t for t in self.tasks}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MosaicConfig:
        """Rebuild a saved config. Settings added after a checkpoint was written take the value that
        reproduces the model as it was built: no ``patch_norm_2d`` -> ``False`` (no 2-D tokenizer LayerNorm),
        no ``use_adapters`` -> ``True``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MosaicConfig does not know the settings {unknown}")
        data = dict(data)
        data.setdefault("patch_norm_2d", False)
        return cls(**data)


class MosaicOutput(NamedTuple):
    """Output of :meth:`MosaicModel.forward`: ``logits (b, num_outputs)``, ``features (b, d)`` (cls)."""

    logits: Tensor
    features: Tensor


def check_labels(labels: Tensor, task: TaskSpec) -> Tensor:
    """Validate MedMNIST labels ``(b, L)`` (or ``(b,)`` for single-label tasks) for ``task``.

    Returns:
        ``(b,)`` int64 class indices, or ``(b, L)`` float 0/1 targets for multi-label tasks.
    """
    if task.task == "multi-label, binary-class":
        if labels.ndim != 2 or labels.shape[1] != task.num_classes:
            raise ValueError(
                f"{task.name}: multi-label targets must be (batch, {task.num_classes}), got {tuple(labels.shape)}"
            )
        return labels.float()
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{task.name}: labels must be (batch,) or (batch, 1) class indices, got {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= task.num_classes):
        raise ValueError(
            f"{task.name}: labels must be in [0, {task.num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def task_loss(logits: Tensor, labels: Tensor, task: TaskSpec) -> Tensor:
    """Cross-entropy (multi-class, binary with 2 logits, ordinal) or BCE-with-logits (multi-label)."""
    targets = check_labels(labels, task)
    if task.task == "multi-label, binary-class":
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets)


def task_scores(logits: Tensor, task: TaskSpec | str) -> Tensor:
    """Scores as the MedMNIST evaluator expects them: sigmoid (multi-label) or softmax (all others)."""
    name = task if isinstance(task, str) else task.task
    if name == "multi-label, binary-class":
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), dim=-1)


class MosaicModel(nn.Module):
    """Frozen ViT + modality tokenizers + mixture of specialist adapters + one head per dataset.

    Args:
        config: a :class:`MosaicConfig`.
        device, dtype: where to build the parameters (``"meta"`` to count them for free).

    Shapes:
        ``forward(x, dataset)``: ``x`` is ``(b, c, h, w)`` for 2-D datasets (values in ``[0, 1]``,
        ``c`` = 1 or 3) or ``(b, 1, z, h, w)`` / ``(b, z, h, w)`` for 3-D datasets (values in ``[0, 1]``)
        -> :class:`MosaicOutput` with ``logits (b, num_outputs)`` and ``features (b, d)``.
    """

    model_name = "mosaic"
    family = "vit"  # the model family recorded in checkpoints

    def __init__(self, config: MosaicConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = cfg = config
        dd = {"device": device, "dtype": dtype}
        self.table: RoutingTable = get_routing_table(cfg.routing)
        self.vit = VisionTransformer(dataclasses.replace(cfg.vit, patch_norm=cfg.patch_norm_2d), **dd)
        if cfg.use_adapters:
            self.vit.add_adapters(self.table, scale=cfg.adapter_scale, dropout=cfg.adapter_dropout,
                                  layer_norm=cfg.adapter_layer_norm)
        d = cfg.vit.embed_dim
        self.patch_embed_3d = PatchEmbed3d(cfg.vol_size_3d, cfg.patch_size_3d, 1, d, norm_eps=cfg.vit.norm_eps, **dd)
        g = self.patch_embed_3d.grid
        self.pos_embed_3d = nn.Parameter(torch.zeros(1, 1 + g[0] * g[1] * g[2], d, **dd))
        self.heads = nn.ModuleDict({t.name: make_linear(d, t.num_outputs, **dd) for t in cfg.tasks})
        mean, std = _NORMALIZATION[cfg.normalize_2d]
        self.register_buffer("pixel_mean", torch.tensor(mean, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, device=device).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()
        self.apply_freezing()

    def reset_parameters(self) -> None:
        """trunc-normal(0.02) for ``pos_embed_3d`` and the heads (zero bias); 3-D conv: default init."""
        if self.pos_embed_3d.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed_3d, std=0.02)
        for head in self.heads.values():
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    # --------------------------------------------------------------------------------------------
    def parameter_group(self, name: str) -> str:
        """Group of a parameter: ``adapter:<S>``, ``head``, ``tokenizer_3d`` or ``backbone``."""
        if ".adapter.specialists." in name:
            return "adapter:" + name.split(".adapter.specialists.")[1].split(".")[0]
        if name.startswith("heads."):
            return "head"
        if name.startswith(("patch_embed_3d.", "pos_embed_3d")):
            return "tokenizer_3d"
        return "backbone"

    def apply_freezing(self) -> None:
        """Set ``requires_grad`` from the config: adapters and heads always train, the 3-D tokenizer when
        ``train_tokenizer_3d``, the ViT backbone only when ``freeze_backbone=False``."""
        for name, p in self.named_parameters():
            group = self.parameter_group(name)
            if group == "backbone":
                p.requires_grad_(not self.config.freeze_backbone)
            elif group == "tokenizer_3d":
                p.requires_grad_(self.config.train_tokenizer_3d or not self.config.freeze_backbone)
            else:
                p.requires_grad_(True)

    def specialist_for(self, dataset: str) -> str:
        """The specialist serving ``dataset``."""
        task = self.task(dataset)
        return self.table.route(dataset, spatial_dims=task.spatial_dims, channels=task.channels)

    def task(self, dataset: str) -> TaskSpec:
        tasks = self.config.task_by_name
        if dataset not in tasks:
            raise ValueError(f"unknown dataset {dataset!r}; this model has heads for {sorted(tasks)}")
        return tasks[dataset]

    # --------------------------------------------------------------------------------------------
    def _check_input(self, x: Tensor, task: TaskSpec) -> Tensor:
        if task.spatial_dims == 3:
            if x.ndim == 4:
                x = x.unsqueeze(1)
            if x.ndim != 5 or x.shape[1] != 1:
                raise ValueError(
                    f"{task.name} is a 3-D dataset: expected volumes (b, 1, z, h, w) or (b, z, h, w), got {tuple(x.shape)}"
                )
        else:
            if x.ndim != 4:
                raise ValueError(f"{task.name} is a 2-D dataset: expected images (b, c, h, w), got {tuple(x.shape)}")
            if x.shape[1] not in (1, 3) or (task.channels == 3 and x.shape[1] != 3):
                raise ValueError(
                    f"{task.name}: expected {task.channels} channel(s) (grayscale may also come as 3), "
                    f"got {x.shape[1]} in shape {tuple(x.shape)}"
                )
        if task.image_size is not None:
            spatial = tuple(x.shape[2:])
            if any(s != task.image_size for s in spatial):
                raise ValueError(
                    f"{task.name}: the model was configured for {task.image_size}-pixel inputs but got spatial "
                    f"size {spatial}; load the dataset with size={task.image_size} or rebuild the config"
                )
        return x

    def tokens(self, x: Tensor, dataset: str) -> Tensor:
        """Embedded tokens ``(b, 1 + t, d)`` (cls + patches + positions) for ``dataset``'s modality."""
        task = self.task(dataset)
        x = self._check_input(x, task)
        if task.spatial_dims == 2:
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if self.config.image_size_2d is not None and tuple(x.shape[-2:]) != (self.config.image_size_2d,) * 2:
                size = (self.config.image_size_2d,) * 2
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
            return self.vit.embed(x)
        tokens, grid = self.patch_embed_3d(x)
        cls = self.vit.cls_token.expand(tokens.shape[0], -1, -1)
        pos = resample_pos_embed(self.pos_embed_3d, grid, self.patch_embed_3d.grid)
        return torch.cat([cls, tokens], dim=1) + pos

    def forward_features(self, x: Tensor, dataset: str) -> Tensor:
        """The cls feature after the final LayerNorm, ``(b, d)``."""
        tokens = self.vit.forward_tokens(self.tokens(x, dataset), self.specialist_for(dataset))
        return tokens[:, 0]

    def forward(self, x: Tensor, dataset: str) -> MosaicOutput:
        features = self.forward_features(x, dataset)
        return MosaicOutput(self.heads[dataset](features), features)

    def load_backbone(self, path: str, **kwargs: Any):
        """Load ImageNet ViT weights into ``self.vit`` (see :func:`~medmoe.models.vit.load_vit_weights`)."""
        from .weights import load_vit_weights

        return load_vit_weights(self.vit, path, **kwargs)

    def specialist_parameters(self) -> dict[str, list[str]]:
        """``specialist -> parameter names`` (for expert-aware EMA)."""
        out: dict[str, list[str]] = {s: [] for s in self.table.specialists}
        for name, _ in self.named_parameters():
            group = self.parameter_group(name)
            if group.startswith("adapter:"):
                out[group.split(":", 1)[1]].append(name)
        return out

