"""MOSAIC multi-dataset training on Lightning Fabric: cyclic sampling, student/teacher consistency,
expert-aware EMA, AdamW with warm-up + cosine per round, early stopping on mean validation ACC.

One **round** visits every dataset (reference ``systems.md`` §4.3). Samplers (:func:`round_schedule`):

* ``"round_robin"`` (Ark-style, the reference): a full epoch of each dataset, one dataset after the
  other in list order;
* ``"interleaved"`` (the reference's ``--use_interleaved``): the same, whole dataset epochs one after the
  other, in the reference's ``INTERLEAVED_DATASETS`` order (Path, Organ3D, Derma, Nodule3D, ...: 2-D and
  3-D datasets alternate dataset by dataset);
* ``"alternating"`` (medmoe's; before issue 27 it was called ``"interleaved"``): the same batches, but one
  batch at a time, alternating a 2-D and a 3-D dataset (cycling within each kind) until every dataset
  finished its epoch;
* ``"balanced"`` (size-balanced): every dataset gets the same number of batches per round
  (``steps_per_dataset``, default the median epoch length), drawn without replacement and repeated
  for small datasets, in a random order across datasets, so TissueMNIST's 165k images no longer
  dominate the steps.

Each step: the **student** sees an augmented view (2-D: horizontal flip p 0.5, rotation +-15 degrees,
``augmentation="medmoe"``: bilinear with black corners, i.e. before normalisation; ``"reference"``: nearest
interpolation with mean-colour corners, i.e. the reference's rotation after normalisation; 3-D: brightness +-0.1 p 0.5, contrast x[0.9, 1.1] p 0.5, clamped to [0, 1]); the **teacher** (a copy of
the student, never trained by gradients) sees the clean view. Loss = task loss + ``lambda`` *
MSE(student cls feature, teacher cls feature), ``lambda = 0.1``. After each optimiser step the
**expert-aware EMA** (:class:`ExpertAwareEMA`) moves the teacher's trainable parameters towards the
student's with momentum 0.9 (step on a 2-D specialist) or 0.95 (3-D specialist), skipping the adapters
of the specialists that were inactive in the step. AdamW (lr 1e-4, wd 0.01), gradient clipping 1.0;
learning rate: linear warm-up over 5 rounds from factor 0.01, then cosine to ``min_lr``, stepped once
per round. Early stopping on the student's mean validation ACC (``selection_metric="acc"``: the official
MedMNIST ACC; ``"acc_pm1"``: the reference's mean, RetinaMNIST counted with its +-1 tolerance), patience 5,
min_delta 0.001: ``early_stopping="medmoe"`` saves and resets patience only on a gain above ``min_delta``;
``"reference"`` saves on any gain and lets a round within ``min_delta`` of the best reset patience. The
best round's student is saved and evaluated on the test split (student and teacher).

Training runs on the shared loop (:mod:`medmoe.engine.loop`: one round is one of its epochs). Outputs in
``out_dir`` (a new or empty folder, ``resume=True`` or ``overwrite=True``; ``manifest.json`` is written
first, see :mod:`medmoe.engine.runs`): ``checkpoint/`` (``model.safetensors`` + ``config.json``,
self-describing, written atomically; ``teacher.safetensors`` with the teacher's trainable tensors),
``metrics.csv`` (one row per round), ``trainer_state.pt`` (after every round: the trainable tensors of
student and teacher, optimiser, RNG and augmentation-generator states, early-stopping state, history; a
resumed run ends with the same weights and metrics as an uninterrupted one), ``results.json`` and
``report.md`` (per-dataset tables, means, parameter report).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.medmnist import (
    MOSAIC_REFERENCE_INTERLEAVED,
    MedMNISTSplit,
    load_medmnist_split,
    medmnist_info,
)
from ...models.vit import MosaicConfig, MosaicModel, build_mosaic_config, task_loss, task_scores
from ...models.vit.mosaic_config import stored_image_size as _size_for
from ..checkpoint import (
    TEACHER_NAME,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    unwrap_model,
)
from ..loop import (
    EarlyStopping,
    LoopConfig,
    LoopHooks,
    LoopParts,
    LoopResult,
    MinDeltaImprovement,
    Seeding,
    StepOutput,
    TrainingLoop,
    Validation,
    launch_fabric,
)
from ..optim import make_adamw
from ..precision import resolve_precision
from ..runs import RunManifest, start_run_folder, writing
from .metrics import TaskMetrics, evaluate_scores
from .report import format_metrics_table, format_parameter_report, mean_accuracies, parameter_report

__all__ = [
    "SAMPLERS",
    "ExpertAwareEMA",
    "MosaicResult",
    "MosaicTrainConfig",
    "augment_2d",
    "augment_2d_reference",
    "augment_3d",
    "build_mosaic_config",
    "early_stopping_step",
    "evaluate_mosaic",
    "load_medmnist_data",
    "round_lr_factor",
    "round_schedule",
    "save_mosaic_checkpoint",
    "train_mosaic",
]

logger = logging.getLogger(__name__)

SAMPLERS = ("round_robin", "interleaved", "alternating", "balanced")
EARLY_STOPPING = ("medmoe", "reference")
SELECTION_METRICS = ("acc", "acc_pm1")
AUGMENTATIONS = ("medmoe", "reference")
CHECKPOINT_DIR = "checkpoint"
METRICS_CSV = "metrics.csv"


@dataclass
class MosaicTrainConfig:
    """Training settings (defaults: the MOSAIC reference, ``systems.md`` §4.3).

    Attributes:
        rounds: maximum rounds (one round visits every dataset).
        lr, weight_decay: AdamW.
        warmup_rounds: linear warm-up rounds (from ``warmup_start_factor * lr``).
        warmup_start_factor: first warm-up factor (0.01).
        min_lr: end of the cosine decay.
        grad_clip: global gradient-norm clip (``None``/0 = off).
        batch_size: samples per step (one dataset per batch; ``drop_last`` unless a dataset is smaller).
        eval_batch_size: batch size for validation / test (default ``2 * batch_size``).
        consistency_weight: ``lambda`` of the feature MSE (0 = no teacher forward during training).
        ema_2d, ema_3d: teacher momentum for steps on a 2-D / 3-D specialist.
        sampler: ``"round_robin"``, ``"interleaved"`` (the reference's), ``"alternating"`` or ``"balanced"``.
        steps_per_dataset: batches per dataset and round for ``"balanced"`` (default: median epoch length).
        max_steps_per_dataset: cap on batches per dataset and round (quick runs; ``None`` = full epochs).
        patience, min_delta: early stopping on the student's mean validation ACC (``None`` = never stop).
        early_stopping: ``"medmoe"`` (only a gain > ``min_delta`` saves and resets patience) or ``"reference"``
            (any gain saves; a round within ``min_delta`` of the best resets patience).
        selection_metric: ``"acc"`` (mean official ACC) or ``"acc_pm1"`` (the reference's mean, RetinaMNIST
            with +-1 tolerance).
        augment: student augmentation on/off.
        augmentation: ``"medmoe"`` or ``"reference"`` 2-D rotation (see the module docstring).
        seed: seed of everything random.
        precision: Fabric precision (``"auto"``: ``"bf16-mixed"`` on CUDA, else ``"32-true"``).
        accelerator: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        eval_teacher: also evaluate the teacher (validation and test).
        progress: rich progress bar (only when stderr is a terminal).
    """

    rounds: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_rounds: int = 5
    warmup_start_factor: float = 0.01
    min_lr: float = 1e-6
    grad_clip: float | None = 1.0
    batch_size: int = 32
    eval_batch_size: int | None = None
    consistency_weight: float = 0.1
    ema_2d: float = 0.9
    ema_3d: float = 0.95
    sampler: str = "round_robin"
    steps_per_dataset: int | None = None
    max_steps_per_dataset: int | None = None
    patience: int | None = 5
    min_delta: float = 0.001
    early_stopping: str = "medmoe"
    selection_metric: str = "acc"
    augment: bool = True
    augmentation: str = "medmoe"
    seed: int = 42
    precision: str = "auto"
    accelerator: str = "auto"
    eval_teacher: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        for name, allowed in (("early_stopping", EARLY_STOPPING), ("selection_metric", SELECTION_METRICS),
                              ("augmentation", AUGMENTATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("ema_2d", "ema_3d"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {self.consistency_weight}")
        if self.warmup_rounds < 0 or not 0 < self.warmup_start_factor <= 1:
            raise ValueError("warmup_rounds must be >= 0 and warmup_start_factor in (0, 1]")


# ----------------------------------------------------------------------------------------------
# configuration and data


def load_medmnist_data(
    root: str | Path, flags: Sequence[str], size: int, splits: Sequence[str] = ("train", "val", "test"),
    *, mmap: bool = False,
) -> dict[str, dict[str, MedMNISTSplit]]:
    """``split -> flag -> MedMNISTSplit`` for every dataset (3-D datasets at ``min(size, 64)``).

    Raises :class:`~medmoe.data.MedMNISTFileError` listing every missing file at once.
    """
    from ...data.medmnist import MedMNISTFileError, medmnist_download_hint, medmnist_filename

    root = Path(root)
    missing = [f for f in flags if not (root / medmnist_filename(f, _size_for(medmnist_info(f).spatial_dims, size))).is_file()]
    if missing:
        sizes = sorted({_size_for(medmnist_info(f).spatial_dims, size) for f in missing})
        msgs = [medmnist_download_hint([f for f in missing if _size_for(medmnist_info(f).spatial_dims, size) == s], s, root) for s in sizes]
        raise MedMNISTFileError(f"{len(missing)} MedMNIST file(s) missing; " + " | ".join(msgs))
    return {
        split: {
            f: load_medmnist_split(root, f, split, _size_for(medmnist_info(f).spatial_dims, size), mmap=mmap)
            for f in flags
        }
        for split in splits
    }


# ----------------------------------------------------------------------------------------------
# sampling


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    if n <= batch_size:
        return [perm]
    k = n // batch_size  # drop_last
    return [perm[i * batch_size : (i + 1) * batch_size] for i in range(k)]


def round_schedule(
    train_sizes: Mapping[str, int],
    spatial_dims: Mapping[str, int],
    cfg: MosaicTrainConfig,
    round_index: int,
) -> list[tuple[str, np.ndarray]]:
    """The ``(dataset, sample indices)`` batches of one round, deterministic in ``(seed, round)``.

    Args:
        train_sizes: ``dataset -> training-set size``, in the dataset order.
        spatial_dims: ``dataset -> 2 or 3``.
        cfg: sampler, batch size, caps, seed.
        round_index: 0-based round.
    """
    names = list(train_sizes)
    rng = np.random.default_rng([cfg.seed, round_index, 7])
    per: dict[str, list[np.ndarray]] = {}
    if cfg.sampler == "balanced":
        epoch_steps = [max(1, train_sizes[n] // cfg.batch_size) for n in names]
        steps = cfg.steps_per_dataset or int(np.median(epoch_steps))
        if cfg.max_steps_per_dataset:
            steps = min(steps, cfg.max_steps_per_dataset)
        for name in names:
            out: list[np.ndarray] = []
            while len(out) < steps:
                out.extend(_batches(train_sizes[name], cfg.batch_size, rng))
            per[name] = out[:steps]
        order = [name for name in names for _ in per[name]]
        rng.shuffle(order)
        cursor = {n: 0 for n in names}
        schedule = []
        for name in order:
            schedule.append((name, per[name][cursor[name]]))
            cursor[name] += 1
        return schedule
    for name in names:
        b = _batches(train_sizes[name], cfg.batch_size, rng)
        per[name] = b[: cfg.max_steps_per_dataset] if cfg.max_steps_per_dataset else b
    if cfg.sampler == "round_robin":
        return [(name, idx) for name in names for idx in per[name]]
    if cfg.sampler == "interleaved":  # the reference's: whole epochs, in its INTERLEAVED_DATASETS order
        rank = {f: i for i, f in enumerate(MOSAIC_REFERENCE_INTERLEAVED)}
        ordered = sorted(names, key=lambda n: rank.get(n, len(rank)))
        return [(name, idx) for name in ordered for idx in per[name]]
    # alternating: alternate a 2-D and a 3-D dataset, one batch at a time, cycling within each kind
    queues = {dims: [n for n in names if spatial_dims[n] == dims] for dims in (2, 3)}
    cursor = {n: 0 for n in names}
    turn = {2: 0, 3: 0}
    schedule = []
    kind = 2 if queues[2] else 3
    while any(cursor[n] < len(per[n]) for n in names):
        live = [n for n in queues[kind] if cursor[n] < len(per[n])]
        if live:
            name = live[turn[kind] % len(live)]
            turn[kind] += 1
            schedule.append((name, per[name][cursor[name]]))
            cursor[name] += 1
        kind = 5 - kind  # 2 <-> 3
    return schedule


def round_lr_factor(round_index: int, cfg: MosaicTrainConfig) -> float:
    """Learning-rate factor of a round: ``LinearLR`` warm-up then cosine to ``min_lr`` (per round)."""
    w = cfg.warmup_rounds
    if round_index < w:
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * round_index / w
    span = max(1, cfg.rounds - w)
    p = min(1.0, (round_index - w) / span)
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


# ----------------------------------------------------------------------------------------------
# augmentation (batched, on the device)


def _flip_rotate_grid(x: Tensor, generator: torch.Generator | None, max_degrees: float) -> Tensor:
    """Sampling grid of a random horizontal flip (p 0.5) and rotation in ``[-max_degrees, max_degrees]`` per
    image of ``x: (b, c, h, w)``; draws the flips, then the angles, from ``generator``."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
    theta = theta.to(device=x.device, dtype=x.dtype)
    return F.affine_grid(theta, list(x.shape), align_corners=False)


def augment_2d(x: Tensor, generator: torch.Generator | None = None, *, max_degrees: float = 15.0) -> Tensor:
    """Random horizontal flip (p 0.5) and rotation in ``[-max_degrees, max_degrees]`` per image.

    ``x: (b, c, h, w)`` in ``[0, 1]`` -> same shape; uncovered corners are 0 (as torchvision's default).
    """
    grid = _flip_rotate_grid(x, generator, max_degrees)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_2d_reference(x: Tensor, generator: torch.Generator | None = None, *, max_degrees: float = 15.0,
                         fill: tuple[float, ...] = (0.485, 0.456, 0.406)) -> Tensor:
    """The reference's 2-D student view: flip (p 0.5), then rotation in ``[-max_degrees, max_degrees]`` with
    **nearest** interpolation after ImageNet normalisation, where torchvision fills the corners with 0 =
    the mean colour. medmoe normalises inside the model, so the same view is made here on ``[0, 1]`` inputs:
    nearest rotation (it commutes with the per-channel normalisation) and corners filled with ``fill`` (the
    ImageNet mean). Grayscale batches are repeated to 3 channels first (the reference loads them ``as_rgb``).

    ``x: (b, c, h, w)`` -> ``(b, 3, h, w)``.
    """
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    grid = _flip_rotate_grid(x, generator, max_degrees)
    mean = torch.tensor(fill, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    # sample (x - mean) with zero padding, add the mean back: uncovered corners become the mean colour
    return F.grid_sample(x - mean, grid, mode="nearest", padding_mode="zeros", align_corners=False) + mean


def augment_3d(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Brightness ``+U(-0.1, 0.1)`` (p 0.5) and contrast ``x U(0.9, 1.1)`` around the mean (p 0.5),
    clamped to ``[0, 1]``. ``x: (b, 1, z, h, w)``."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)
    bright = (torch.rand(b, generator=generator) * 0.2 - 0.1) * (torch.rand(b, generator=generator) < 0.5)
    contrast = torch.where(
        torch.rand(b, generator=generator) < 0.5, 0.9 + 0.2 * torch.rand(b, generator=generator), torch.ones(b)
    )
    bright = bright.to(x).view(shape)
    contrast = contrast.to(x).view(shape)
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# expert-aware EMA


class ExpertAwareEMA:
    """Teacher <- m * teacher + (1 - m) * student, skipping the adapters of inactive specialists.

    Only the student's trainable parameters are averaged (frozen ones are identical in both). The
    momentum of a step is the one of its active specialist: ``momentum[specialist]`` (MOSAIC: 0.9 for
    the 2-D specialists, 0.95 for the 3-D one). Heads and the 3-D tokenizer are averaged every step.

    Args:
        student, teacher: the two models (same architecture; Fabric/DDP wrappers are unwrapped).
        momentum: ``specialist -> m``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, momentum: Mapping[str, float]) -> None:
        student, teacher = unwrap_model(student), unwrap_model(teacher)
        t_params = dict(teacher.named_parameters())
        self.momentum = dict(momentum)
        self.shared: list[tuple[Tensor, Tensor]] = []
        self.by_specialist: dict[str, list[tuple[Tensor, Tensor]]] = {s: [] for s in self.momentum}
        group_of = student.parameter_group  # type: ignore[attr-defined]
        for name, p in student.named_parameters():
            if not p.requires_grad:
                continue
            group = group_of(name)
            pair = (t_params[name], p)
            if group.startswith("adapter:"):
                self.by_specialist[group.split(":", 1)[1]].append(pair)
            else:
                self.shared.append(pair)

    @torch.no_grad()
    def update(self, active: str | Sequence[str]) -> None:
        """One EMA step after an optimiser step in which ``active`` specialist(s) were used."""
        active = [active] if isinstance(active, str) else list(active)
        unknown = [a for a in active if a not in self.momentum]
        if unknown:
            raise ValueError(f"unknown specialists {unknown}; known {sorted(self.momentum)}")
        m = max(self.momentum[a] for a in active)
        pairs = self.shared + [p for a in active for p in self.by_specialist[a]]
        if not pairs:
            return
        teacher = [t for t, _ in pairs]
        student = [s.detach().to(t.dtype) for t, s in pairs]
        torch._foreach_lerp_(teacher, student, 1.0 - m)


# ----------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict_split(
    model: nn.Module, split: MedMNISTSplit, *, batch_size: int = 64, device: torch.device | str | None = None,
    autocast: Any = None,
) -> np.ndarray:
    """Scores ``(n, C)`` (softmax / sigmoid) of ``model`` on a whole split."""
    module = unwrap_model(model)
    device = torch.device(device) if device is not None else next(module.parameters()).device
    was_training = module.training
    module.eval()
    task = module.task(split.flag)  # type: ignore[attr-defined]
    out = []
    for start in range(0, len(split), batch_size):
        x, _ = split.batch(np.arange(start, min(start + batch_size, len(split))))
        with autocast() if autocast is not None else _null():
            logits = model(x.to(device), split.flag).logits
        out.append(task_scores(logits, task).cpu().numpy())
    module.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, task.num_outputs))


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def evaluate_mosaic(
    model: nn.Module, splits: Mapping[str, MedMNISTSplit], *, batch_size: int = 64,
    device: torch.device | str | None = None, autocast: Any = None,
) -> dict[str, TaskMetrics]:
    """Official MedMNIST metrics of ``model`` on each dataset's split (``flag -> TaskMetrics``)."""
    out = {}
    for flag, split in splits.items():
        scores = predict_split(model, split, batch_size=batch_size, device=device, autocast=autocast)
        out[flag] = evaluate_scores(split.labels, scores, split.info.task)
    return out


# ----------------------------------------------------------------------------------------------
# checkpoints


def save_mosaic_checkpoint(
    directory: str | Path, model: nn.Module, extra_state: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
) -> Path:
    """Save the model (safetensors + config JSON, atomically) and optionally the teacher's trainable tensors."""
    from safetensors.torch import save as st_save

    directory = save_checkpoint(directory, unwrap_model(model), extra_state)
    if teacher is not None:
        student = unwrap_model(model)
        names = {n for n, p in student.named_parameters() if p.requires_grad}
        state = {k: v.detach().cpu().contiguous() for k, v in unwrap_model(teacher).state_dict().items() if k in names}
        atomic_write_bytes(directory / TEACHER_NAME, st_save(state))
    return directory


# ----------------------------------------------------------------------------------------------
# training


@dataclass
class MosaicResult:
    """Outcome of :func:`train_mosaic` (metrics are ``flag -> TaskMetrics``)."""

    out_dir: Path
    checkpoint_dir: Path
    best_round: int
    rounds_run: int
    stopped_early: bool
    val_metrics: dict[str, TaskMetrics]
    test_metrics: dict[str, TaskMetrics]
    test_metrics_teacher: dict[str, TaskMetrics] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def means(self, which: str = "test") -> dict[str, float]:
        metrics = {"test": self.test_metrics, "val": self.val_metrics, "teacher": self.test_metrics_teacher}[which]
        dims = {f: medmnist_info(f).spatial_dims for f in metrics or {}}
        return mean_accuracies(metrics or {}, dims)


def _metrics_json(metrics: Mapping[str, TaskMetrics] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: {kk: (None if isinstance(vv, float) and math.isnan(vv) else vv) for kk, vv in m.to_dict().items()}
            for k, m in metrics.items()}


class _MosaicHooks(LoopHooks):
    """MOSAIC on :class:`~medmoe.engine.loop.TrainingLoop`: one round = one epoch of the loop, the round's
    batches from :func:`round_schedule`, student/teacher consistency, the expert-aware EMA after each step,
    the learning rate set once per round, the student's mean validation ACC monitored."""

    def __init__(self, model_config: MosaicConfig, cfg: MosaicTrainConfig,
                 data: Mapping[str, Mapping[str, MedMNISTSplit]], weights: str | Path | None, data_note: str) -> None:
        self.model_config, self.cfg, self.data = model_config, cfg, data
        self.weights, self.data_note = weights, data_note
        self.flags = [t.name for t in model_config.tasks]
        self.eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size

    def setup(self, loop: TrainingLoop) -> LoopParts:
        cfg, fabric = self.cfg, loop.fabric
        model = MosaicModel(self.model_config)
        if self.weights is None or str(self.weights).lower() == "none":
            logger.warning("MOSAIC: no ImageNet weights given: the ViT backbone is randomly initialised and frozen; "
                           "accuracy will be far below the paper's")
            self.weights_info = "none (random initialisation)"
        else:
            self.weights_info = model.load_backbone(str(self.weights)).summary()
        teacher = copy.deepcopy(model).requires_grad_(False).eval()
        self.params = parameter_report(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_adamw(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        model, optimizer = fabric.setup(model, optimizer)
        self.teacher = fabric.to_device(teacher)
        self.module = module = unwrap_model(model)
        self.ema = ExpertAwareEMA(model, self.teacher, {
            s: (cfg.ema_3d if spec.spatial_dims == 3 else cfg.ema_2d) for s, spec in module.table.specialists.items()
        })
        self.specialist = {f: module.specialist_for(f) for f in self.flags}
        self.dims = {f: module.task(f).spatial_dims for f in self.flags}
        self.train_sizes = {f: len(self.data["train"][f]) for f in self.flags}
        self.gen = torch.Generator().manual_seed(cfg.seed)
        return LoopParts(model, optimizer)

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        self.lr = self.cfg.lr * round_lr_factor(epoch, self.cfg)
        for group in loop.optimizer.param_groups:
            group["lr"] = self.lr

    def batches(self, loop: TrainingLoop, epoch: int) -> list[tuple[str, np.ndarray]]:
        self.schedule = round_schedule(self.train_sizes, self.dims, self.cfg, epoch)
        return self.schedule

    def training_step(self, loop: TrainingLoop, batch: tuple[str, np.ndarray], epoch: int) -> StepOutput:
        cfg, fabric = self.cfg, loop.fabric
        flag, idx = batch
        x, y = self.data["train"][flag].batch(idx)
        x, y = x.to(fabric.device), y.to(fabric.device)
        task = self.module.task(flag)
        clean = x
        if cfg.augment:
            if task.spatial_dims == 3:
                x = augment_3d(x, self.gen)
            else:
                x = augment_2d_reference(x, self.gen) if cfg.augmentation == "reference" else augment_2d(x, self.gen)
        with fabric.autocast():
            out = loop.model(x, flag)
            loss_task = task_loss(out.logits, y, task)
            loss = loss_task
            cons = torch.zeros((), device=fabric.device)
            if cfg.consistency_weight > 0:
                with torch.no_grad():
                    target = self.teacher(clean, flag).features
                cons = F.mse_loss(out.features.float(), target.float())
                loss = loss + cfg.consistency_weight * cons
        return StepOutput(loss, {"task_loss": float(loss_task.detach()), "consistency": float(cons.detach())},
                          where=f" (a batch of {flag})", info=f"{flag} loss {float(loss.detach()):.3f}")

    def after_step(self, loop: TrainingLoop, batch: tuple[str, np.ndarray]) -> None:
        self.ema.update(self.specialist[batch[0]])

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, outputs: list[StepOutput]) -> dict[str, Any]:
        sums = {"loss": 0.0, "task_loss": 0.0, "consistency": 0.0}
        for out in outputs:
            sums["loss"] += out.loss_value
            sums["task_loss"] += out.values["task_loss"]
            sums["consistency"] += out.values["consistency"]
        steps = max(1, len(self.schedule))
        return {"round": epoch + 1, "lr": self.lr, "steps": len(self.schedule), **{k: v / steps for k, v in sums.items()}}

    def validation(self, loop: TrainingLoop, epoch: int, is_last: bool) -> Validation:
        cfg, fabric = self.cfg, loop.fabric
        val = evaluate_mosaic(loop.model, self.data["val"], batch_size=self.eval_bs, device=fabric.device,
                              autocast=fabric.autocast)
        val_means = mean_accuracies(val, self.dims)
        score = val_means["acc_all"] if cfg.selection_metric == "acc" else _mean_acc_pm1(val)
        metrics: dict[str, Any] = {"val_acc_mean": score, "val_auc_mean": val_means["auc_all"]}
        if cfg.eval_teacher:
            tval = evaluate_mosaic(self.teacher, self.data["val"], batch_size=self.eval_bs, device=fabric.device,
                                   autocast=fabric.autocast)
            metrics["teacher_val_acc_mean"] = mean_accuracies(tval, self.dims)["acc_all"]
        metrics.update({f"val_acc_{f}": m.acc for f, m in val.items()})
        self.val = val
        return Validation(score, metrics)

    def save_best(self, loop: TrainingLoop, epoch: int, row: dict[str, Any]) -> None:
        cfg = self.cfg
        save_mosaic_checkpoint(loop.config.out_dir / CHECKPOINT_DIR, loop.model, {
            "seed": cfg.seed, "round": epoch + 1, "train_config": asdict(cfg),
            "val_metrics": _metrics_json(self.val), "weights": self.weights_info, "data_note": self.data_note,
        }, teacher=self.teacher)

    def state_dict(self) -> dict[str, Any]:
        """The teacher's trainable tensors (the rest equals the student's frozen part) and the augmentation
        generator: with the loop's state a resumed run continues exactly where it stopped."""
        names = {n for n, p in self.module.named_parameters() if p.requires_grad}
        teacher = {k: v.detach().cpu() for k, v in unwrap_model(self.teacher).state_dict().items() if k in names}
        return {"teacher": teacher, "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "teacher" in state:
            unwrap_model(self.teacher).load_state_dict(state["teacher"], strict=False)
        if "generator" in state:
            self.gen.set_state(state["generator"])


def _mosaic_loop_config(cfg: MosaicTrainConfig, out_dir: Path, signature: dict[str, Any], resume: bool) -> LoopConfig:
    """The loop settings of a MOSAIC run: rounds as epochs, its early-stopping rule, no scheduler (the learning
    rate is set once per round), the trainable tensors only in the trainer state (the ViT stays frozen)."""
    stopping = EarlyStopping(MinDeltaImprovement(cfg.min_delta, lenient=cfg.early_stopping == "reference"),
                             patience=cfg.patience, stop_at_last=True)
    return LoopConfig(
        out_dir=out_dir, epochs=cfg.rounds, seed=cfg.seed, signature=signature, resume=resume,
        seeding=Seeding(start="torch-numpy"), early_stopping=stopping, grad_clip=cfg.grad_clip,
        clip_error_if_nonfinite=False, unit="round", progress=cfg.progress, state_trainable_only=True,
        divergence_hint=_MOSAIC_HINT.format(lr=cfg.lr),
    )


def train_mosaic(
    model_config: MosaicConfig,
    train_config: MosaicTrainConfig,
    data: Mapping[str, Mapping[str, MedMNISTSplit]],
    out_dir: str | Path,
    *,
    weights: str | Path | None = None,
    data_note: str = "",
    fabric: Any = None,
    overwrite: bool = False,
    allow: Sequence[str] = (),
    resume: bool = False,
) -> MosaicResult:
    """Train a :class:`MosaicModel` on several MedMNIST datasets, keep the best round, test it.

    Args:
        model_config: the model (its ``tasks`` must match ``data``'s datasets).
        train_config: a :class:`MosaicTrainConfig`.
        data: ``{"train": {flag: split}, "val": {...}, "test": {...}}`` (:func:`load_medmnist_data`);
            ``train`` and ``val`` are required, ``test`` is optional.
        out_dir: run folder (created; a non-empty one is refused unless ``resume`` or ``overwrite``).
        weights: ViT ImageNet weights (``.npz`` / ``.safetensors`` / ``.pth``); ``None`` or ``"none"`` =
            random backbone (a warning is logged).
        data_note: a line written into the reports (e.g. "SYNTHETIC data, not MedMNIST").
        fabric: a launched ``lightning_fabric.Fabric`` (default: one device from ``train_config``).
        overwrite: delete the earlier run in ``out_dir`` first.
        allow: entries of ``out_dir`` that are not part of a run and are kept (the demo's data folder).
        resume: continue the run in ``out_dir`` from its ``trainer_state.pt`` (written after every round): the
            same model, data and settings are required (checked against ``manifest.json`` before anything is
            written, then against the trainer state); a resumed run ends with the same weights and metrics as
            an uninterrupted one. A finished run is only evaluated again.
    """
    cfg = train_config
    out_dir = Path(out_dir)
    for split in ("train", "val"):
        if split not in data:
            raise ValueError(f"train_mosaic needs a {split!r} split for every dataset; got splits {sorted(data)}")
    flags = [t.name for t in model_config.tasks]
    for split, by_flag in data.items():
        missing = [f for f in flags if f not in by_flag]
        if missing:
            raise ValueError(f"the {split!r} split lacks datasets {missing} that the model config lists")
    identity = {
        "model_config": _plain(model_config), "train_config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "data": {split: {f: len(by_flag[f]) for f in flags} for split, by_flag in data.items()},
        "weights": None if weights is None else str(weights), "data_note": data_note,
    }
    manifest = RunManifest("mosaic", identity)
    start_run_folder(out_dir, manifest, resume=resume, overwrite=overwrite, allow=allow)
    if fabric is None:
        fabric = launch_fabric(cfg.accelerator, 1, resolve_precision(cfg.precision, cfg.accelerator))
    hooks = _MosaicHooks(model_config, cfg, data, weights, data_note)
    run = TrainingLoop(hooks, _mosaic_loop_config(cfg, out_dir, manifest.identity, resume), fabric).run()
    return _finish_mosaic(hooks, run, data, out_dir, fabric)


def _finish_mosaic(hooks: _MosaicHooks, run: LoopResult, data: Mapping[str, Mapping[str, MedMNISTSplit]],
                   out_dir: Path, fabric: Any) -> MosaicResult:
    """Evaluate the best round's student (validation, test) and teacher (test); write results.json, report.md."""
    cfg, eval_bs, ckpt_dir = hooks.cfg, hooks.eval_bs, out_dir / CHECKPOINT_DIR
    best, _ = load_checkpoint(ckpt_dir, fabric.device, family="vit")
    val_best = evaluate_mosaic(best, data["val"], batch_size=eval_bs)
    test = evaluate_mosaic(best, data["test"], batch_size=eval_bs) if "test" in data else {}
    test_teacher = None
    if cfg.eval_teacher and "test" in data:
        best_teacher, _ = load_checkpoint(ckpt_dir, fabric.device, family="vit", teacher=True)
        test_teacher = evaluate_mosaic(best_teacher, data["test"], batch_size=eval_bs)
    result = MosaicResult(out_dir=out_dir, checkpoint_dir=ckpt_dir, best_round=run.best_epoch + 1,
                          rounds_run=len(run.history), stopped_early=run.stopped_early, val_metrics=val_best,
                          test_metrics=test, test_metrics_teacher=test_teacher, history=run.history,
                          parameters=hooks.params.to_dict())
    if fabric.is_global_zero:
        with writing(out_dir / "results.json", keep=_mosaic_kept(run.best_epoch)):
            _write_reports(result, hooks.dims, hooks.data_note, hooks.weights_info, hooks.params)
    return result


def early_stopping_step(score: float, best: float | None, bad_rounds: int, cfg: MosaicTrainConfig) -> tuple[bool, int]:
    """One round of the early-stopping rule: ``(save this round, rounds without improvement)``.

    ``"medmoe"``: a round saves (and resets the count) when it beats the best by more than ``min_delta``, any
    other round counts. ``"reference"`` (``engine/trainer.py``): any gain saves; a round within ``min_delta``
    below the best resets the count; only a larger drop counts. The first round always saves
    (:class:`~medmoe.engine.loop.MinDeltaImprovement`, the rule :func:`train_mosaic` gives the loop).
    """
    return MinDeltaImprovement(cfg.min_delta, lenient=cfg.early_stopping == "reference")(score, best, bad_rounds)


def _mean_acc_pm1(metrics: Mapping[str, TaskMetrics]) -> float:
    """The reference's model-selection score: mean ACC over datasets, ordinal ones (RetinaMNIST) with +-1 tolerance."""
    values = [m.acc_pm1 if m.acc_pm1 is not None else m.acc for m in metrics.values()]
    return float(np.mean(values)) if values else float("nan")


_MOSAIC_HINT = ("the learning rate {lr:g} is likely too high (lower --lr), or mixed precision overflowed (use "
                "--precision 32-true)")


def _mosaic_kept(saved_round: int) -> str:
    if saved_round < 0:
        return "no checkpoint had been saved yet"
    return f"the best checkpoint (round {saved_round + 1}) is intact"


def _plain(value: Any) -> Any:
    """A (nested) dataclass as plain JSON-able values."""
    from dataclasses import is_dataclass

    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def _write_reports(result: MosaicResult, dims: Mapping[str, int], note: str, weights_info: str, params: Any) -> None:
    payload = {
        "best_round": result.best_round,
        "rounds_run": result.rounds_run,
        "stopped_early": result.stopped_early,
        "data_note": note,
        "weights": weights_info,
        "val": _metrics_json(result.val_metrics),
        "test": _metrics_json(result.test_metrics),
        "test_teacher": _metrics_json(result.test_metrics_teacher),
        "test_means": mean_accuracies(result.test_metrics, dims) if result.test_metrics else None,
        "parameters": result.parameters,
    }
    text = json.dumps(payload, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    atomic_write_text(result.out_dir / "results.json", text.replace("NaN", "null") + "\n")
    parts = [f"# MOSAIC run ({result.out_dir.name})", ""]
    if note:
        parts += [f"**{note}**", ""]
    stop = " (early stop)" if result.stopped_early else ""
    parts += [f"Backbone weights: {weights_info}. Best round {result.best_round} of {result.rounds_run}{stop}.", ""]
    if result.test_metrics:
        parts += [format_metrics_table(result.test_metrics, dims, title="Test, student (official MedMNIST metrics)"), ""]
    if result.test_metrics_teacher:
        parts += [format_metrics_table(result.test_metrics_teacher, dims, title="Test, EMA teacher"), ""]
    parts += [format_metrics_table(result.val_metrics, dims, title="Validation, student"), ""]
    parts += ["### Parameters", "", format_parameter_report(params), ""]
    atomic_write_text(result.out_dir / "report.md", "\n".join(parts))
