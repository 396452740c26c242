"""Training loop for 3-D segmentation on Lightning Fabric (CPU, CUDA, DDP: same code).

:func:`train_segmentation` trains any network from :func:`medmoe.models.seg.create_seg_model`:

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
* resumable: ``out_dir/trainer_state.pt`` (model, optimiser, scheduler, epoch, history) after every
  epoch, ``resume=True`` continues from it (the crop sampler is re-seeded from ``(seed, epoch)``, so a
  resumed run sees the same crops as an uninterrupted one; bit-exactness is not promised);
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
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...data.seg_transforms import SegTransformConfig, build_train_transforms, build_val_transforms
from ...data.volumes import VolumeCase, validate_cases
from ..checkpoint import (
    TRAINER_STATE_NAME,
    load_trainer_state,
    save_checkpoint,
    save_trainer_state,
    unwrap_model,
)
from ..divergence import check_finite_loss, check_finite_model
from ..optim import make_adamw
from ..run_logging import training_progress, write_history_csv
from ..runs import RunManifest, fingerprint, start_run_folder, writing
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
    num_workers: int = 0
    max_seconds: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size", "sw_batch_size", "devices"):
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


def _make_fabric(cfg: SegTrainConfig) -> Any:
    try:
        from lightning_fabric import Fabric
    except ImportError as err:  # pragma: no cover
        raise ImportError("segmentation training needs lightning-fabric: pip install 'medmoe[seg]'") from err
    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision)
    fabric.launch()
    return fabric


def _train_loader(cases: Sequence[VolumeCase], tcfg: SegTransformConfig, cfg: SegTrainConfig) -> Any:
    from monai.data import CacheDataset, DataLoader, list_data_collate

    ds = CacheDataset([c.as_dict() for c in cases], build_train_transforms(tcfg), progress=False,
                      num_workers=0, copy_cache=True)
    return ds, DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                          collate_fn=list_data_collate, drop_last=False)


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
        model: from :func:`medmoe.models.seg.create_seg_model` (needs ``config``, ``model_name``,
            ``num_classes``, ``in_channels``, ``divisor``).
        train_cases, val_cases: labelled cases (``val_cases`` may be empty/``None``: no validation).
        transform_config: preprocessing and crops; ``roi_size`` must be divisible by ``model.divisor``.
        cfg: training settings.
        out_dir: run folder (``checkpoint/``, ``metrics.csv``, ``trainer_state.pt``).
        class_names: names for the metrics (index 0 = background).
        resume: continue from ``out_dir/trainer_state.pt``; the run in ``out_dir`` must be this one (its
            ``manifest.json``: model, cases, transforms, settings), checked before anything is written.
        validate_data: check shapes, affines, label range and finite voxels of every case first
            (:func:`validate_cases`).
        overwrite: delete the earlier run in ``out_dir`` first (else a non-empty ``out_dir`` is refused).
    """
    from monai.losses import DiceCELoss

    from ..mil.trainer import WarmupCosine

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
    start_run_folder(out_dir, _seg_manifest(module, train_cases, val_cases, transform_config, cfg),
                     resume=resume, overwrite=overwrite)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    fabric = _make_fabric(cfg)
    _, loader = _train_loader(train_cases, transform_config, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
    )
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(loader)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    history: list[dict[str, Any]] = []
    start_epoch, best, best_epoch, step = 0, -math.inf, -1, 0
    state_path = out_dir / TRAINER_STATE_NAME
    if resume and state_path.is_file():
        state = load_trainer_state(state_path)
        unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, best_epoch = int(state["epoch"]) + 1, float(state["best"]), int(state["best_epoch"])
        step, history = int(state["step"]), list(state["history"])
        logger.info("resuming %s at epoch %d", out_dir, start_epoch)
    elif resume:
        logger.warning("resume=True but %s does not exist; starting from scratch", state_path)

    extra = {
        "task": "segmentation",
        "transform_config": dataclasses.asdict(transform_config),
        "train_config": dataclasses.asdict(cfg),
        "class_names": names,
        "seed": cfg.seed,
        "train_cases": [c.case_id for c in train_cases],
        "val_cases": [c.case_id for c in val_cases],
    }
    ckpt_dir = out_dir / SEG_CHECKPOINT_DIR
    bar = training_progress(cfg.progress and fabric.is_global_zero)
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task("training", total=total_steps, completed=step, info="")
    t_start = time.perf_counter()
    val_result: SegEvalResult | None = None
    epochs_run = start_epoch
    out_of_time = False
    saved_epoch = best_epoch  # the epoch of the checkpoint on disk (-1: none yet)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # crops/augmentation per epoch: resumable
            np.random.seed((cfg.seed * 100_003 + epoch) % 2**32)
            loader_seed = cfg.seed * 100_003 + epoch
            _set_transform_seed(loader, loader_seed)
            model.train()
            losses: list[float] = []
            it = iter(loader)
            for _ in range(cfg.steps_per_epoch):
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                image, label = plain_tensor(batch["image"]), plain_tensor(batch["label"])
                logits = model(image)
                loss = loss_fn(logits, label)
                check_finite_loss(loss, f"epoch {epoch + 1}, step {step + 1}", _SEG_HINT.format(lr=cfg.lr))
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                if cfg.grad_clip:
                    fabric.clip_gradients(model, optimizer, max_norm=cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f}")
                if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
                    out_of_time = True
                    break
            epochs_run = epoch + 1
            check_finite_model(model, f"the end of epoch {epoch + 1} (step {step})", _SEG_HINT.format(lr=cfg.lr))
            row: dict[str, Any] = {
                "epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
            }
            is_last = epoch == cfg.epochs - 1 or out_of_time
            improved = False
            if val_cases and cfg.val_every and ((epoch + 1) % cfg.val_every == 0 or is_last):
                result = evaluate_segmentation(
                    model, val_cases, transform_config, roi, cfg.sw_overlap, cfg.sw_mode, cfg.sw_batch_size,
                    cfg.hd95, names, device=fabric.device, dice_average=cfg.dice_average,
                )
                row.update(result.flat("val_"))
                score = result.mean_dice if not math.isnan(result.mean_dice) else -1.0
                if score > best:
                    best, best_epoch, improved, val_result = score, epoch, True, result
            elif not val_cases or not cfg.val_every:
                improved, best_epoch = True, epoch  # no validation: keep the last epoch
            row["best"] = improved
            row["seconds"] = round(time.perf_counter() - t_epoch, 3)
            history.append(row)
            if fabric.is_global_zero:
                with writing(out_dir, keep=_seg_kept(saved_epoch, epoch)):
                    if improved:
                        save_checkpoint(ckpt_dir, model, {**extra, "epoch": epoch, "step": step, "metrics": {
                            k: v for k, v in row.items() if k.startswith("val_")}})
                        saved_epoch = epoch
                    write_history_csv(out_dir / METRICS_CSV, history)
                    save_trainer_state(state_path, {
                        "model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "best": best,
                        "best_epoch": best_epoch, "history": history,
                    })
            if out_of_time:
                logger.info("stopping after %.1f s (max_seconds=%s)", time.perf_counter() - t_start, cfg.max_seconds)
                break
    finally:
        if bar is not None:
            bar.stop()
    return SegTrainResult(out_dir, ckpt_dir, best_epoch, epochs_run, step, time.perf_counter() - t_start,
                          val_result, history)


_SEG_HINT = ("the learning rate {lr:g} is likely too high (lower --lr), or mixed precision overflowed (use "
             "--precision 32-true); the images were checked for NaN/inf voxels")

#: settings that may differ on resume: those that cannot change the result, and ``epochs`` / ``max_seconds``
#: (a resume may train a run for longer, as before)
_SEG_RESUME_NEUTRAL = ("progress", "num_workers", "max_seconds", "epochs")


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
        "train_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _SEG_RESUME_NEUTRAL},
    }
    return RunManifest("seg", identity)


def _seg_kept(saved_epoch: int, epoch: int) -> str:
    if saved_epoch < 0:
        return "no checkpoint had been saved yet"
    state = f"; the trainer state of epoch {epoch} is intact" if epoch > 0 else ""
    return f"the best checkpoint (epoch {saved_epoch + 1}) is intact{state}"


def _set_transform_seed(loader: Any, seed: int) -> None:
    """Re-seed the random transforms of the loader's dataset (MONAI ``Randomizable.set_random_state``)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None and hasattr(loader, "_dataloader"):
        dataset = loader._dataloader.dataset
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed % 2**32)
