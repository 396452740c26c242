"""Training loop for 3-D segmentation on Lightning Fabric (CPU, CUDA, DDP: same code).

:func:`train_segmentation` trains any network from :func:`medmoe.create_model` (``family="seg"``):

* random ROI crops (pos/neg sampling, :func:`medmoe.data.seg_transforms.build_train_transforms`), the
  deterministic part (loading, orientation, spacing, intensity) cached in memory;
* loss: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` (equal Dice and cross-entropy weights);
* AdamW (``lr`` 1e-4, ``weight_decay`` 1e-4, ``eps`` 1e-4 as the reference), linear warm-up then cosine
  decay, stepped after every optimiser step; optional gradient-norm clipping;
* ``precision="32-true"`` by default (the reference trains in fp32); ``"bf16-mixed"``/``"16-mixed"`` for AMP;
* one epoch = ``steps_per_epoch`` optimiser steps; every ``val_every`` epochs the validation volumes are
  segmented with a Gaussian-blended sliding window and scored with Dice and HD95 per foreground class
  (MONAI metrics, HD95 in the units of the voxel spacing, i.e. mm for medical images);
* the best mean-Dice model is saved as a self-describing checkpoint (``out_dir/checkpoint``:
  ``model.safetensors`` + ``config.json`` with model name/config, transform config, train config,
  class names, epoch and metrics; atomic, see :mod:`medmoe.engine.checkpoint`); without validation the
  last epoch is kept;
* ``out_dir/metrics.csv`` one row per epoch; a rich progress bar on a terminal;
* resumable: ``out_dir/trainer_state.pt`` (model, optimiser, scheduler, epoch, RNG states, history, the
  run's settings) after every epoch, ``resume=True`` continues from it (the crop sampler is re-seeded from
  ``(seed, epoch)``, so a resumed run sees the same crops as an uninterrupted one; bit-exactness is not
  promised); a state written with other settings is refused, naming the differences;
* the epoch loop, seeding, early stopping, checkpointing, resume and progress are the shared
  :class:`~medmoe.engine.loop.TrainingLoop`; this module gives it its hooks (:class:`_SegHooks`);
* a run folder with ``manifest.json`` written first (model, cases, transforms, settings): a non-empty
  ``out_dir`` needs ``resume`` (checked against the manifest before anything is written) or ``overwrite``
  (:mod:`medmoe.engine.runs`);
* images are checked for NaN/inf voxels before training; a non-finite loss or model stops the run with
  :class:`~medmoe.engine.divergence.TrainingDivergedError` (a non-finite model is never saved).

:func:`evaluate_segmentation` scores a model on labelled cases; :func:`train_segmentation` writes a
checkpoint (reload it with :func:`medmoe.engine.load_checkpoint`, its preprocessing with
:func:`transform_config_from_info`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...data.seg_transforms import SegTransformConfig, build_train_transforms, build_val_transforms
from ...data.volumes import VolumeCase, validate_cases
from ..checkpoint import save_checkpoint, unwrap_model
from ..loop import (
    EarlyStopping,
    Improvement,
    LoopConfig,
    LoopHooks,
    LoopParts,
    Seeding,
    StepOutput,
    TrainingLoop,
    Validation,
    launch_fabric,
)
from ..optim import make_adamw
from ..runs import RunManifest, fingerprint, start_run_folder, without_later_defaults
from ..schedules import WarmupCosine
from .inference import SLIDING_WINDOW_MODES, check_roi, plain_tensor, sliding_window_labels

__all__ = [
    "SEG_CHECKPOINT_DIR",
    "SegEvalResult",
    "SegTrainConfig",
    "SegTrainResult",
    "evaluate_segmentation",
    "train_segmentation",
    "transform_config_from_info",
]

logger = logging.getLogger(__name__)

SEG_CHECKPOINT_DIR = "checkpoint"
METRICS_CSV = "metrics.csv"
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
DICE_AVERAGES = ("classes-over-cases", "cases-over-classes")


@dataclass
class SegTrainConfig:
    """Training settings (saved inside the checkpoint).

    Attributes:
        epochs: number of epochs; one epoch = ``steps_per_epoch`` optimiser steps.
        steps_per_epoch: optimiser steps per epoch.
        batch_size: volumes per step; each gives ``transform.num_samples`` crops.
        lr, weight_decay, eps: AdamW settings (reference: 1e-4, 1e-4, 1e-4).
        warmup_steps: linear warm-up steps before the cosine decay to ``min_lr``.
        min_lr: final learning rate.
        grad_clip: max gradient norm, ``None`` to disable.
        precision: ``"32-true"`` (default), ``"bf16-mixed"`` or ``"16-mixed"`` (AMP).
        val_every: validate every this many epochs (0 = never: the last epoch is kept).
        sw_overlap, sw_mode, sw_batch_size: sliding-window validation settings.
        dice_average: how the validation mean Dice (which picks the kept checkpoint) is averaged:
            ``"classes-over-cases"`` (medmoe: each class's mean over cases, then over classes) or
            ``"cases-over-classes"`` (the reference, MONAI ``DiceMetric(reduction="mean")``: each case's
            mean over classes, then over cases).
        hd95: compute HD95 (slower than Dice on large volumes).
        seed: seed of weights, crops and augmentation.
        accelerator, devices: Lightning Fabric settings.
        num_nodes: machines (``devices`` processes each) under ``torchrun`` or SLURM (docs/scaling.md); DDP
            whenever ``devices * num_nodes > 1``.
        num_workers: data-loader worker processes.
        max_seconds: stop training after this wall time (checked after each step), ``None`` = no limit.
        progress: rich progress bar (only on a terminal).
    """

    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    eps: float = 1e-4
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float | None = None
    precision: str = "32-true"
    val_every: int = 1
    sw_overlap: float = 0.5
    sw_mode: str = "gaussian"
    dice_average: str = "classes-over-cases"
    sw_batch_size: int = 1
    hd95: bool = True
    seed: int = 0
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    num_workers: int = 0
    max_seconds: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size", "sw_batch_size", "devices", "num_nodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0 or self.min_lr < 0:
            raise ValueError("lr and eps must be > 0, weight_decay and min_lr >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sw_mode not in SLIDING_WINDOW_MODES:
            raise ValueError(f"sw_mode must be one of {SLIDING_WINDOW_MODES}, got {self.sw_mode!r}")
        if self.dice_average not in DICE_AVERAGES:
            raise ValueError(f"dice_average must be one of {DICE_AVERAGES}, got {self.dice_average!r}")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"sw_overlap must be in [0, 1), got {self.sw_overlap}")
        if self.val_every < 0 or self.warmup_steps < 0:
            raise ValueError("val_every and warmup_steps must be >= 0")


@dataclass
class SegEvalResult:
    """Per-class and mean scores on a set of volumes (foreground classes only).

    Attributes:
        dice: ``{class name: mean Dice over cases}``.
        hd95: ``{class name: mean HD95 over cases}`` (cases where a class is absent from prediction or
            ground truth are skipped; ``nan`` if none is left); empty if not computed.
        mean_dice, mean_hd95: means over classes.
        per_case: one dict per case (``case_id``, ``dice_<class>``, ``hd95_<class>``).
    """

    dice: dict[str, float]
    hd95: dict[str, float]
    mean_dice: float
    mean_hd95: float
    per_case: list[dict[str, Any]] = field(default_factory=list)

    def flat(self, prefix: str = "val_") -> dict[str, float]:
        out = {f"{prefix}dice": self.mean_dice, f"{prefix}hd95": self.mean_hd95}
        out.update({f"{prefix}dice_{k}": v for k, v in self.dice.items()})
        out.update({f"{prefix}hd95_{k}": v for k, v in self.hd95.items()})
        return out


@dataclass
class SegTrainResult:
    """Outcome of :func:`train_segmentation`."""

    out_dir: Path
    checkpoint_dir: Path
    best_epoch: int
    epochs_run: int
    steps: int
    seconds: float
    val: SegEvalResult | None
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# evaluation


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None and len(class_names) == num_classes:
        return [str(c) for c in class_names]
    return [str(i) for i in range(num_classes)]


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    cases: Sequence[VolumeCase],
    transform_config: SegTransformConfig,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    hd95: bool = True,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    dice_average: str = "classes-over-cases",
) -> SegEvalResult:
    """Dice and HD95 per foreground class on whole labelled volumes, after the validation transforms
    (so in the resampled space), with sliding-window inference (``mode`` blending). ``mean_dice`` is averaged
    as ``dice_average`` says (see :class:`SegTrainConfig`); the per-class ``dice`` is always each class's
    mean over cases."""
    if not cases:
        raise ValueError("evaluate_segmentation needs at least one labelled case")
    num_classes = int(getattr(model, "num_classes", 0) or unwrap_model(model).num_classes)
    names = _class_names(num_classes, class_names)[1:]
    pre = build_val_transforms(transform_config)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_case: list[dict[str, Any]] = []
    dices, hds = [], []
    for case in cases:
        if case.label is None:
            raise ValueError(f"case {case.case_id} has no label; evaluation needs labelled cases")
        data = pre(case.as_dict())
        image, label = data["image"], data["label"]
        pred = sliding_window_labels(model, image[None].to(device), roi_size or transform_config.roi_size,
                                     overlap, mode, sw_batch_size).cpu()  # (D, H, W): no whole-volume logits
        target = torch.as_tensor(label)[0].round().long()
        if int(target.max()) >= num_classes or int(target.min()) < 0:
            raise ValueError(
                f"case {case.case_id}: label values outside [0, {num_classes}); check num_classes"
            )
        d = dice_per_class(pred, target, num_classes)  # (K-1,), nan where the class is absent from the truth
        dices.append(d)
        row: dict[str, Any] = {"case_id": case.case_id}
        row.update({f"dice_{n}": float(v) for n, v in zip(names, d)})
        if hd95:
            spacing = [float(s) for s in image.pixdim[:3]] if hasattr(image, "pixdim") else None
            with warnings.catch_warnings():  # MONAI 1.5+ deprecation noise inside get_mask_edges
                warnings.simplefilter("ignore", FutureWarning)
                h = hd95_per_class(pred, target, num_classes, spacing)
            h[~torch.isfinite(h)] = float("nan")
            hds.append(h)
            row.update({f"hd95_{n}": float(v) for n, v in zip(names, h)})
        per_case.append(row)
    if was_training:
        model.train()
    dice_mat = torch.stack(dices)
    dice = {n: float(torch.nanmean(dice_mat[:, i])) for i, n in enumerate(names)}
    hd: dict[str, float] = {}
    if hds:
        hd_mat = torch.stack(hds)
        hd = {n: float(torch.nanmean(hd_mat[:, i])) for i, n in enumerate(names)}
    if dice_average not in DICE_AVERAGES:
        raise ValueError(f"dice_average must be one of {DICE_AVERAGES}, got {dice_average!r}")
    if dice_average == "cases-over-classes":  # MONAI DiceMetric(reduction="mean"): classes first, then cases
        mean_dice = _nanmean(_nanmean(d.tolist()) for d in dices)
    else:
        mean_dice = _nanmean(dice.values())
    return SegEvalResult(dice, hd, mean_dice, _nanmean(hd.values()), per_case)


def dice_per_class(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Dice of every foreground class ``(K-1,)`` from label maps (any equal shapes), with one confusion count
    over the voxels instead of one-hot volumes: ``2 |P & T| / (|P| + |T|)``, ``nan`` where the class is absent
    from ``target`` (MONAI's ``DiceMetric(include_background=False, ignore_empty=True)``)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    k = int(num_classes)
    joint = torch.bincount((pred.reshape(-1).long() * k + target.reshape(-1).long()), minlength=k * k)
    confusion = joint.view(k, k).double()  # [predicted, true]
    inter = confusion.diagonal()[1:]
    size_pred, size_true = confusion.sum(1)[1:], confusion.sum(0)[1:]
    dice = 2 * inter / (size_pred + size_true)
    return torch.where(size_true > 0, dice, torch.full_like(dice, float("nan"))).float()


def hd95_per_class(pred: Tensor, target: Tensor, num_classes: int, spacing: Sequence[float] | None) -> Tensor:
    """95th-percentile Hausdorff distance of every foreground class ``(K-1,)``, one class's binary masks at a
    time (MONAI's ``compute_hausdorff_distance`` on each; memory of two masks, not of two one-hot volumes)."""
    from monai.metrics import compute_hausdorff_distance

    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    out = torch.full((num_classes - 1,), float("nan"))
    for c in range(1, num_classes):
        p, t = (pred == c)[None, None], (target == c)[None, None]
        out[c - 1] = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)[0, 0]
    return out


def _nanmean(values: Any) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


# ----------------------------------------------------------------------------------------------
# checkpoints


def transform_config_from_info(info: dict[str, Any]) -> SegTransformConfig:
    """The :class:`SegTransformConfig` stored in a checkpoint's info dict."""
    raw = dict(info["transform_config"])
    # checkpoints written before ``mri_stats`` existed were trained with whole-volume MRI statistics
    raw.setdefault("mri_stats", "volume")
    for key in ("ct_window", "percentiles", "roi_size"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    if raw.get("spacing") is not None:
        raw["spacing"] = tuple(raw["spacing"])
    return SegTransformConfig(**raw)


# ----------------------------------------------------------------------------------------------
# training


def _train_loader(cases: Sequence[VolumeCase], tcfg: SegTransformConfig, cfg: SegTrainConfig) -> Any:
    from monai.data import CacheDataset, DataLoader, list_data_collate

    ds = CacheDataset([c.as_dict() for c in cases], build_train_transforms(tcfg), progress=False,
                      num_workers=0, copy_cache=True)
    return ds, DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                          collate_fn=list_data_collate, drop_last=False)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Segmentation's per-epoch seed of crops and augmentation: ``seed * 100003 + epoch`` (resumable)."""
    return seed * 100_003 + epoch


class _Steps:
    """``steps`` batches from ``loader``, starting it again when it runs out (one epoch = a number of steps)."""

    def __init__(self, loader: Any, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        for _ in range(self.steps):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(self.loader)
                batch = next(it)
            yield batch


class _SegHooks(LoopHooks):
    """Segmentation on :class:`~medmoe.engine.loop.TrainingLoop`: random crops, DiceCE loss, AdamW with
    warm-up + cosine stepped per step, sliding-window Dice every ``val_every`` epochs, the best mean Dice kept."""

    def __init__(self, model: nn.Module, train_cases: Sequence[VolumeCase], val_cases: list[VolumeCase],
                 transform_config: SegTransformConfig, cfg: SegTrainConfig, roi: Sequence[int],
                 names: list[str], extra: dict[str, Any]) -> None:
        self.model, self.train_cases, self.val_cases = model, train_cases, val_cases
        self.tcfg, self.cfg, self.roi, self.names, self.extra = transform_config, cfg, roi, names, extra
        self.val_result: SegEvalResult | None = None
        self._latest: SegEvalResult | None = None

    def setup(self, loop: TrainingLoop) -> LoopParts:
        from monai.losses import DiceCELoss

        cfg, fabric = self.cfg, loop.fabric
        _, loader = _train_loader(self.train_cases, self.tcfg, cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = make_adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
        total_steps = cfg.epochs * cfg.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
        )
        model, optimizer = fabric.setup(self.model, optimizer)
        self.loader = fabric.setup_dataloaders(loader)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        return LoopParts(model, optimizer, scheduler)

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        _set_transform_seed(self.loader, _epoch_seed(self.cfg.seed, epoch, 0))

    def batches(self, loop: TrainingLoop, epoch: int) -> _Steps:
        return _Steps(self.loader, self.cfg.steps_per_epoch)

    def training_step(self, loop: TrainingLoop, batch: Any, epoch: int) -> StepOutput:
        image, label = plain_tensor(batch["image"]), plain_tensor(batch["label"])
        return StepOutput(self.loss_fn(loop.model(image), label))

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, outputs: list[StepOutput]) -> dict[str, Any]:
        losses = [o.loss_value for o in outputs]
        return {"epoch": epoch, "step": loop.step, "lr": loop.optimizer.param_groups[0]["lr"],
                "train_loss": float(np.mean(losses)) if losses else float("nan")}

    def validation(self, loop: TrainingLoop, epoch: int, is_last: bool) -> Validation | None:
        cfg = self.cfg
        if not self.val_cases or not cfg.val_every:
            return Validation(float(epoch))  # no validation: keep the last epoch
        if (epoch + 1) % cfg.val_every != 0 and not is_last:
            return None
        result = evaluate_segmentation(
            loop.model, self.val_cases, self.tcfg, self.roi, cfg.sw_overlap, cfg.sw_mode, cfg.sw_batch_size,
            cfg.hd95, self.names, device=loop.fabric.device, dice_average=cfg.dice_average,
        )
        self._latest = result
        return Validation(result.mean_dice if not math.isnan(result.mean_dice) else -1.0, result.flat("val_"))

    def save_best(self, loop: TrainingLoop, epoch: int, row: dict[str, Any]) -> None:
        self.val_result = self._latest
        save_checkpoint(loop.config.out_dir / SEG_CHECKPOINT_DIR, loop.model, {
            **self.extra, "epoch": epoch, "step": loop.step,
            "metrics": {k: v for k, v in row.items() if k.startswith("val_")}})


def train_segmentation(
    model: nn.Module,
    train_cases: Sequence[VolumeCase],
    val_cases: Sequence[VolumeCase] | None,
    transform_config: SegTransformConfig,
    cfg: SegTrainConfig | None = None,
    out_dir: str | Path = "runs/seg",
    class_names: Sequence[str] | None = None,
    resume: bool = False,
    validate_data: bool = True,
    overwrite: bool = False,
) -> SegTrainResult:
    """Train ``model`` on ``train_cases`` and keep the best validation-Dice checkpoint.

    Args:
        model: from :func:`medmoe.create_model` (``family="seg"``) (needs ``config``, ``model_name``,
            ``num_classes``, ``in_channels``, ``divisor``).
        train_cases, val_cases: labelled cases (``val_cases`` may be empty/``None``: no validation).
        transform_config: preprocessing and crops; ``roi_size`` must be divisible by ``model.divisor``.
        cfg: training settings.
        out_dir: run folder (``checkpoint/``, ``metrics.csv``, ``trainer_state.pt``).
        class_names: names for the metrics (index 0 = background).
        resume: continue from ``out_dir/trainer_state.pt``; the run in ``out_dir`` must be this one (its
            ``manifest.json``: model, cases, transforms, settings), checked before anything is written, and
            the trainer state must record the same settings (a difference is refused, naming it).
        validate_data: check shapes, affines, label range and finite voxels of every case first
            (:func:`validate_cases`).
        overwrite: delete the earlier run in ``out_dir`` first (else a non-empty ``out_dir`` is refused).
    """
    cfg = cfg or SegTrainConfig()
    out_dir = Path(out_dir)
    val_cases = list(val_cases or [])
    if not train_cases:
        raise ValueError("train_segmentation needs at least one labelled training case")
    module = unwrap_model(model)
    num_classes, in_channels = int(module.num_classes), int(module.in_channels)
    roi = check_roi(module, transform_config.roi_size)
    if validate_data:
        validate_cases([*train_cases, *val_cases], num_classes=num_classes, roi_size=roi, in_channels=in_channels,
                       check_values=True)
    names = _class_names(num_classes, class_names)
    manifest = _seg_manifest(module, train_cases, val_cases, transform_config, cfg)
    start_run_folder(out_dir, manifest, resume=resume, overwrite=overwrite)

    extra = {
        "task": "segmentation",
        "transform_config": dataclasses.asdict(transform_config),
        "train_config": dataclasses.asdict(cfg),
        "class_names": names,
        "seed": cfg.seed,
        "train_cases": [c.case_id for c in train_cases],
        "val_cases": [c.case_id for c in val_cases],
    }
    hooks = _SegHooks(model, train_cases, val_cases, transform_config, cfg, roi, names, extra)
    loop_cfg = LoopConfig(
        out_dir=out_dir, epochs=cfg.epochs, seed=cfg.seed, signature=manifest.identity, resume=resume,
        seeding=Seeding(start="torch-numpy", epoch_seed=_epoch_seed),
        early_stopping=EarlyStopping(Improvement(maximize=True)), scheduler_interval="step",
        grad_clip=cfg.grad_clip, clip_error_if_nonfinite=True, max_seconds=cfg.max_seconds, unit="epoch",
        global_step_in_messages=True, progress=cfg.progress, divergence_hint=_SEG_HINT.format(lr=cfg.lr),
    )
    fabric = launch_fabric(cfg.accelerator, cfg.devices, cfg.precision, num_nodes=cfg.num_nodes)
    result = TrainingLoop(hooks, loop_cfg, fabric).run()
    return SegTrainResult(out_dir, out_dir / SEG_CHECKPOINT_DIR, result.best_epoch, result.epochs_run, result.steps,
                          result.seconds, hooks.val_result, result.history)


_SEG_HINT = ("the learning rate {lr:g} is likely too high (lower --lr), or mixed precision overflowed (use "
             "--precision 32-true); the images were checked for NaN/inf voxels")

#: settings that may differ on resume: those that cannot change the result, and ``epochs`` / ``max_seconds``
#: (a resume may train a run for longer, as before)
_SEG_RESUME_NEUTRAL = ("progress", "num_workers", "max_seconds", "epochs")

#: settings added after run folders were first written, with their defaults (see ``runs.without_later_defaults``)
_SEG_LATER_SETTINGS = {"num_nodes": 1}


def _seg_manifest(
    module: nn.Module, train_cases: Sequence[VolumeCase], val_cases: Sequence[VolumeCase],
    transform_config: SegTransformConfig, cfg: SegTrainConfig,
) -> RunManifest:
    """The identity of a segmentation run: model and its config, the cases (ids and files), the transforms
    and the training settings (class names are labels only and may differ)."""
    config = getattr(module, "config", None)
    files = [[str(p) for p in c.images] + [str(c.label)] for c in [*train_cases, *val_cases]]
    identity = {
        "model_name": getattr(module, "model_name", type(module).__name__),
        "model_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
        "train_cases": [c.case_id for c in train_cases],
        "val_cases": [c.case_id for c in val_cases],
        "files": fingerprint(files),
        "transform_config": dataclasses.asdict(transform_config),
        "train_config": without_later_defaults(
            {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _SEG_RESUME_NEUTRAL}, _SEG_LATER_SETTINGS
        ),
    }
    return RunManifest("seg", identity)


def _set_transform_seed(loader: Any, seed: int) -> None:
    """Re-seed the random transforms of the loader's dataset (MONAI ``Randomizable.set_random_state``)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None and hasattr(loader, "_dataloader"):
        dataset = loader._dataloader.dataset
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed % 2**32)
