"""Training hyper-parameters: one typed, validated dataclass saved inside every checkpoint.

Defaults follow the MIL-Lab community training recipe (``reference/systems.md`` §1.11): AdamW with
lr 1e-4 and weight decay 1e-5, cosine annealing to 1e-6, gradient-norm clipping at 1.0, batch size 1,
20 epochs with at least 10, early stopping on AUROC (binary) or quadratic kappa (multi-class), on
the concordance index for survival (``task='survival'``) and on the macro AUROC over the labels for
multi-label slides (``task='multilabel'``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..optim import OPTIMIZERS
from ..runs import without_later_defaults

__all__ = ["EARLY_STOPPING_METRICS", "LATER_SETTINGS", "TrainConfig", "recorded_settings", "resolve_monitor"]

#: Metrics the built-in tasks' early-stopping monitors accept, and whether larger is better (each task's
#: own: ``get_task(name).monitor_metrics``, :mod:`medmoe.engine.mil.tasks`).
EARLY_STOPPING_METRICS: dict[str, bool] = {
    "auroc": True,
    "kappa": True,
    "balanced_accuracy": True,
    "accuracy": True,
    "f1": True,
    "c_index": True,
    "subset_accuracy": True,
    "loss": False,
}


#: TrainConfig fields added after run folders (``manifest.json``) were first written, with their defaults:
#: a run records one only when it differs from its default, so a folder written before it still resumes
LATER_SETTINGS: dict[str, Any] = {"num_nodes": 1}

_PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true", "16-true", "bf16-true")


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model and the data.

    Attributes:
        task: ``'classification'`` (cross-entropy on the bag labels), ``'survival'`` (discrete-time
            survival: the model predicts ``survival_bins`` hazards trained with the NLL survival loss of
            :mod:`medmoe.engine.mil.survival`; the datasets must carry survival targets, see
            :meth:`medmoe.data.BagDataset.with_survival`), or ``'multilabel'`` (several yes/no labels per
            bag: one logit per label, binary cross-entropy; the datasets must carry multi-label targets,
            see :meth:`medmoe.data.BagDataset.with_multilabel`; ``class_weights='balanced'`` weighs each
            label's positives by its negative/positive ratio).
        survival_bins: time bins of a survival model (PORPOISE / MCAT: 4), cut at the quantiles of the
            training fold's uncensored times.
        survival_alpha: weight of the uncensored term in the survival loss (0 = plain likelihood).
        max_instances: cut every training bag with more patches to a random subset of this many (their
            order kept), drawn anew each epoch and reproducibly (seed, epoch, bag id): bounds the memory
            and time of huge bags and acts as augmentation. Validation, test and prediction use every
            patch. ``None`` = off.
        metrics_level: ``'bag'`` (validation / test metrics over bags) or ``'group'`` (over patients: the
            class probabilities, or survival hazard logits, of a patient's bags are averaged first; for
            several slides per patient kept as separate bags). Training is per bag either way.
        epochs: maximum number of epochs (MIL-Lab recipe: 20).
        lr: peak learning rate.
        weight_decay: weight decay (decoupled for ``'adamw'``, an L2 term in the gradient for ``'adam'`` and
            ``'sgd'``).
        optimizer: ``'adamw'`` (MIL-Lab recipe), ``'adam'`` (``torch.optim.Adam`` with L2 weight decay,
            betas (0.9, 0.999): used by the ``ilse2018`` run config) or ``'sgd'`` (momentum 0.9, L2 weight
            decay: MI-Net's benchmark optimiser, an ablation of ``ilse2018``).
        warmup_epochs: linear warm-up length in epochs (0 = none). Fractions are allowed.
        min_lr: final learning rate of the cosine schedule.
        scheduler_interval: ``'step'`` (default: the learning rate changes after every optimiser step,
            smooth with batch size 1) or ``'epoch'`` (changes once per epoch; with no warm-up this is
            MIL-Lab's ``CosineAnnealingLR(T_max=epochs, eta_min=min_lr)``).
        grad_clip: maximum global gradient norm (``None`` or 0 = no clipping).
        batch_size: bags per optimiser step and device; bags are padded and masked by ``collate_bags``.
        feature_dropout: dropout probability applied to the input instance features in training
            (MIL-Lab recipe: 0.1; 0 = off).
        early_stopping: validation metric to monitor: ``'auto'`` (``'auroc'`` for two classes,
            quadratic-weighted ``'kappa'`` for more, as MIL-Lab), ``'auroc'``, ``'kappa'``,
            ``'balanced_accuracy'`` (the MAMMOTH paper's metric for subtyping tasks), ``'accuracy'``,
            ``'f1'`` (macro) or ``'loss'`` (validation cross-entropy, lower is better); for survival
            ``'auto'`` = ``'c_index'`` (Harrell's concordance), or ``'loss'`` (validation NLL).
        patience: stop after this many epochs without improvement of the monitored metric
            (``None`` = never stop early, keep the best epoch).
        min_epochs: never stop before this many epochs.
        class_weights: ``'none'`` or ``'balanced'`` (cross-entropy weights ``n / (C * n_c)``).
        balanced_sampling: draw training bags with a class-balanced ``WeightedRandomSampler``
            (with replacement, one epoch = as many bags as the training set) instead of shuffling.
        seed: seed of everything random (initialisation, shuffling, dropout).
        precision: Lightning Fabric precision; ``'auto'`` = ``'32-true'`` on CPU/MPS, ``'bf16-mixed'``
            on CUDA GPUs that support it, else ``'16-mixed'``.
        accelerator: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'gpu'`` or ``'mps'``.
        devices: number of devices (or ``'auto'``) per node; more than one uses ``strategy``.
        num_nodes: number of machines (nodes) training together, each with ``devices`` processes; more
            than one uses DDP. Start one process per device on every node with ``torchrun`` or SLURM
            ``srun`` (Lightning Fabric reads the cluster environment): see the "Scaling out" docs page.
        strategy: Lightning Fabric strategy (``'auto'``, ``'ddp'``, ``'ddp_spawn'``, ...).
        num_workers: DataLoader worker processes.
        standardize_features: z-score instance features with a per-dimension mean / std fitted on the
            training bags only; the statistics are saved in the checkpoint and re-applied at inference.
        progress: show rich progress bars (only on rank 0 and only when stderr is a terminal).
        loggers: extra experiment loggers, any of ``'tensorboard'`` and ``'mlflow'``; each is used only
            when its package is installed (a warning is logged otherwise). ``metrics.csv`` is always
            written.
        eval_batch_size: bags per forward pass in validation / test (default: ``batch_size``).
        keep_last_state: keep the last epoch's model, optimiser and scheduler in ``trainer_state.pt``
            once the run has finished. By default they are dropped then (the best model stays in
            ``checkpoint/``; the history and bookkeeping stay, so ``resume`` still only re-evaluates):
            a finished Lin-MIL run otherwise keeps 150 MB that nothing reads.
    """

    epochs: int = 20
    task: str = "classification"
    survival_bins: int = 4
    survival_alpha: float = 0.0
    metrics_level: str = "bag"
    max_instances: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-5
    optimizer: str = "adamw"
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    scheduler_interval: str = "step"
    grad_clip: float | None = 1.0
    batch_size: int = 1
    feature_dropout: float = 0.0
    early_stopping: str = "auto"
    patience: int | None = 5
    min_epochs: int = 10
    class_weights: str = "none"
    balanced_sampling: bool = False
    seed: int = 0
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 0
    standardize_features: bool = False
    progress: bool = True
    loggers: list[str] = field(default_factory=list)
    eval_batch_size: int | None = None
    keep_last_state: bool = False

    def __post_init__(self) -> None:
        def positive_int(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            low = 0 if allow_zero else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {low}, got {value!r}")

        positive_int("epochs")
        positive_int("survival_bins")
        if self.max_instances is not None:
            positive_int("max_instances")
        if self.metrics_level not in ("bag", "group"):
            raise ValueError(f"TrainConfig.metrics_level must be 'bag' or 'group', got {self.metrics_level!r}")
        from .tasks import get_task, task_names

        if not isinstance(self.task, str) or self.task not in task_names():
            raise ValueError(f"TrainConfig.task must be one of {task_names()}, got {self.task!r}")
        task = get_task(self.task)
        if not isinstance(self.survival_alpha, (int, float)) or not 0.0 <= self.survival_alpha <= 1.0:
            raise ValueError(f"TrainConfig.survival_alpha must be in [0, 1], got {self.survival_alpha!r}")
        positive_int("batch_size")
        positive_int("min_epochs", allow_zero=True)
        positive_int("num_workers", allow_zero=True)
        positive_int("seed", allow_zero=True)
        positive_int("num_nodes")
        if self.eval_batch_size is not None:
            positive_int("eval_batch_size")
        if self.patience is not None:
            positive_int("patience")
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise ValueError(f"TrainConfig.min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(
                f"TrainConfig.warmup_epochs ({self.warmup_epochs}) must be smaller than "
                f"epochs ({self.epochs})"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"TrainConfig.scheduler_interval must be 'step' or 'epoch', got {self.scheduler_interval!r}"
            )
        if self.grad_clip is not None and (
            not isinstance(self.grad_clip, (int, float)) or self.grad_clip < 0
        ):
            raise ValueError(f"TrainConfig.grad_clip must be None or a number >= 0, got {self.grad_clip!r}")
        if not 0.0 <= float(self.feature_dropout) < 1.0:
            raise ValueError(f"TrainConfig.feature_dropout must be in [0, 1), got {self.feature_dropout}")
        if self.early_stopping != "auto" and self.early_stopping not in task.monitor_metrics:
            raise ValueError(
                f"TrainConfig.early_stopping must be 'auto' or one of {list(task.monitor_metrics)} for "
                f"task={self.task!r}, got {self.early_stopping!r}"
            )
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(
                f"TrainConfig.class_weights must be 'none' or 'balanced', got {self.class_weights!r}"
            )
        task.check_config(self)
        if self.precision not in _PRECISIONS:
            raise ValueError(
                f"TrainConfig.precision must be one of {list(_PRECISIONS)}, got {self.precision!r}"
            )
        if not (self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1)):
            raise ValueError(
                f"TrainConfig.devices must be a positive integer or 'auto', got {self.devices!r}"
            )
        self.loggers = list(self.loggers)
        unknown = sorted(set(self.loggers) - {"tensorboard", "mlflow"})
        if unknown:
            raise ValueError(f"TrainConfig.loggers accepts 'tensorboard' and 'mlflow', got unknown {unknown}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def eval_bs(self) -> int:
        return self.eval_batch_size or self.batch_size


def resolve_monitor(name: str, num_classes: int, task: str = "classification") -> tuple[str, bool]:
    """The metric ``early_stopping`` monitors and whether larger is better (the task's
    :meth:`~medmoe.engine.mil.tasks.Task.resolve_monitor`).

    ``'auto'`` -> ``'auroc'`` for ``num_classes == 2`` and ``'kappa'`` (quadratic) otherwise; for
    ``task='survival'`` -> ``'c_index'``; for ``task='multilabel'`` -> ``'auroc'`` (macro over the labels).
    """
    from .tasks import get_task

    return get_task(task).resolve_monitor(name, num_classes)


def recorded_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a :meth:`TrainConfig.to_dict`, possibly filtered) as a run folder records them: the
    :data:`LATER_SETTINGS` left out while at their defaults."""
    return without_later_defaults(settings, LATER_SETTINGS)
