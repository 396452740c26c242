"""Training loop for MIL bag classification on Lightning Fabric (CPU, CUDA, MPS, DDP: same code).

:func:`train_one_fold` trains one model on one train/val/test split:

* AdamW (``lr``, ``weight_decay``) over the trainable parameters;
* linear warm-up for ``warmup_epochs`` then cosine decay to ``min_lr``, stepped after every optimiser
  step (``scheduler_interval='step'``, default) or once per epoch (``'epoch'``);
* gradient-norm clipping (``grad_clip``), mixed precision on GPUs (``precision``);
* the task (``cfg.task``, a :class:`~medmoe.engine.mil.tasks.Task` picked once with
  :func:`~medmoe.engine.mil.tasks.get_task`) decides the outputs, targets, loss, metrics, monitor, decision
  thresholds and test-prediction columns; the loss is ``out.total_loss(task_loss)`` with the task's
  ``label`` passed to the model, so auxiliary losses (CLAM instance loss, DTFD tier-1 loss) are included.
  Classification: ``cross_entropy(out.logits, label, weight=class_weights)``; ``task='survival'``: the
  discrete-time NLL survival loss of :mod:`medmoe.engine.mil.survival` on ``survival_bins`` hazard outputs
  (time bins cut at the training fold's uncensored-time quantiles, saved in the checkpoint; the bin is the
  ``label`` the model sees), early stopping on the concordance index; ``task='multilabel'``: one logit per
  label and binary cross-entropy (:mod:`medmoe.engine.mil.multilabel`), early stopping on the labels'
  macro AUROC;
* class-balanced cross-entropy weights or a class-balanced sampler, input feature dropout, optional
  feature standardisation fitted on the training bags only, optional random patch subsets of large
  training bags (``max_instances``, new subsets every epoch; evaluation sees every patch);
* early stopping on a validation metric; the best epoch is saved as a self-describing checkpoint
  (``out_dir/checkpoint``) and the final val/test metrics come from it;
* ``out_dir/metrics.csv`` (one row per epoch: ``epoch``, ``lr`` of the epoch's last step,
  ``train_loss``, ``train_seconds`` (the training pass), ``data_wait_seconds`` (the part of it spent
  blocked on the loader: reading, collating and moving bags), ``val_<metric>``, ``best``, ``seconds``
  (the whole epoch, validation included); rewritten atomically from the run history
  after every epoch, so after a resume it matches the trainer state), optional TensorBoard / MLflow;
* resumable: ``out_dir/trainer_state.pt`` (model, optimiser, scheduler, epoch, RNG states, early-stopping
  state, history) is written atomically after every epoch, and ``resume=True`` continues from it;
  when the run has finished only the history and bookkeeping are kept (``keep_last_state`` keeps all),
  and resuming it re-evaluates the best checkpoint. Settings that cannot change the result
  (``progress``, ``loggers``, ``num_workers``, ``keep_last_state``) may differ between a run and its resume.

Determinism: the epoch's bag order (shuffle or balanced sampling) comes from a generator seeded with
``(seed, epoch)``, and the global torch / numpy / python RNGs are re-seeded from ``(seed, epoch, rank)``
at the start of every epoch. An interrupted run resumed from its trainer state therefore ends with
exactly the same weights and metrics as an uninterrupted one (on the same hardware and software).

Distributed (``devices > 1`` or ``num_nodes > 1``, one process per device on every node): each
process trains on its shard of the epoch's bag order (padded by wrapping so every rank takes the same
number of steps); gradients are averaged by DDP, so the effective batch is ``batch_size * world_size``.
Evaluation shards the bags without duplicates and gathers the probabilities, so metrics are computed on
exactly the evaluated set.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ...data.bags import Standardize, SubsampledCollate, collate_bags, feature_mean_std
from ...errors import SETTING, InputError
from ...nn.dropout import fast_dropout
from ...registry import create_model
from ..checkpoint import (
    TRAINER_STATE_NAME,
    CheckpointError,
    atomic_write_text,
    finished_trainer_state,
    load_checkpoint,
    load_trainer_state,
    read_checkpoint_info,
    save_checkpoint,
    save_trainer_state,
    unwrap_model,
)
from ..divergence import check_finite_loss, check_finite_model
from ..optim import make_optimizer
from ..precision import resolve_precision
from ..run_logging import training_progress, write_history_csv
from ..runs import writing
from .config import TrainConfig
from .tasks import Task, get_task
from .tasks.base import TEST_PREDICTIONS_CSV
from .thresholds import THRESHOLDS_KEY, DecisionThresholds

if TYPE_CHECKING:  # pragma: no cover
    from lightning_fabric import Fabric

__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_CSV",
    "EvalResult",
    "FoldResult",
    "WarmupCosine",
    "evaluate",
    "make_fabric",
    "train_one_fold",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
METRICS_CSV = "metrics.csv"
FOLD_RESULT_JSON = "fold_result.json"
#: The best checkpoint's prediction for every test bag (the task's columns, e.g. ``bag_id, label,
#: prob_<class>...``, or for survival ``bag_id, time, event, risk``): :data:`TEST_PREDICTIONS_CSV`.


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class FoldResult:
    """Outcome of :func:`train_one_fold`.

    Attributes:
        out_dir: the run folder.
        checkpoint_dir: the best checkpoint (load with :func:`medmoe.engine.load_checkpoint`).
        monitor: the early-stopping metric (``'auroc'``, ``'kappa'``, ... or ``'none'`` without a
            validation set, in which case the last epoch is kept).
        best_epoch: 0-based epoch of the best checkpoint.
        epochs_run: epochs trained.
        stopped_early: whether early stopping ended training before ``cfg.epochs``.
        val_metrics: validation metrics of the best checkpoint (empty without a validation set).
        test_metrics: test metrics of the best checkpoint (``None`` without a test set).
        history: one dict per epoch (the rows of ``metrics.csv``).
        thresholds: the decision thresholds saved in the checkpoint (binary and multi-label tasks; chosen
            on the validation set, see :mod:`medmoe.engine.mil.thresholds`), as their ``config.json`` record;
            ``None`` for multi-class and survival.
    """

    out_dir: Path
    checkpoint_dir: Path
    monitor: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["checkpoint_dir"] = str(self.checkpoint_dir)
        return d


class EvalResult(NamedTuple):
    """What :func:`evaluate` returns (unpacks as ``metrics, probs, labels, bag_ids``).

    ``probs (n, C)`` float32 and ``labels (n,)`` int64 on the CPU, in dataset order. For a survival
    model ``probs`` are the survival curves ``S_k`` ``(n, K)`` and ``labels`` the event indicators.
    """

    metrics: dict[str, float]
    probs: Tensor
    labels: Tensor
    bag_ids: list[str]


# ----------------------------------------------------------------------------------------------
# schedule, seeds, fabric


class WarmupCosine:
    """Learning-rate factor for :class:`torch.optim.lr_scheduler.LambdaLR`.

    ``factor(t) = (t + 1) / warmup`` for ``t < warmup`` (linear warm-up), then
    ``m + (1 - m) * (1 + cos(pi * p)) / 2`` with ``p = (t - warmup) / (total - warmup)`` clipped to 1 and
    ``m = min_lr / lr``: cosine decay from ``lr`` to ``min_lr``. ``t`` counts optimiser steps or epochs.
    With ``warmup = 0`` and epoch stepping this is ``CosineAnnealingLR(T_max=total, eta_min=min_lr)``.
    """

    def __init__(self, total: int, warmup: int, lr: float, min_lr: float) -> None:
        self.total = int(total)
        self.warmup = int(warmup)
        self.floor = float(min_lr) / float(lr)

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        p = min(1.0, (t - self.warmup) / span)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def _derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from ``seed`` and integer keys (numpy's SeedSequence: well mixed, stable)."""
    ss = np.random.SeedSequence([int(seed), *[int(k) for k in keys]])
    lo, hi = (int(v) for v in ss.generate_state(2, dtype=np.uint32))
    return (lo | (hi << 32)) & ((1 << 63) - 1)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


_FABRICS: dict[tuple[Any, ...], Any] = {}


def make_fabric(cfg: TrainConfig) -> Fabric:
    """A launched :class:`lightning_fabric.Fabric` for ``cfg`` (cached per process and settings).

    ``strategy='ddp'`` (or ``'auto'`` with several devices) uses Fabric's subprocess launcher: the
    running script is started again once per extra device, so call the trainer from a script (``python
    train.py``), not from an interactive session. Spawn-based strategies need
    ``fabric.launch(function)``; launch them yourself and pass ``fabric=`` to :func:`train_one_fold`.
    With ``num_nodes > 1`` (or under ``torchrun`` / SLURM with one process per device) the processes
    are started externally and Fabric reads their ranks and the rendezvous address from the cluster
    environment (``torchrun``'s or SLURM's variables); ``devices * num_nodes`` must equal the world size.
    DDP is set up with ``find_unused_parameters=True`` because some MIL models (CLAM instance
    classifiers) do not use every parameter at every step.
    """
    try:
        from lightning_fabric import Fabric
        from lightning_fabric.strategies import DDPStrategy
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the medmoe trainer needs lightning-fabric; install the MIL extra: pip install 'medmoe[mil]'"
        ) from err
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    key = (cfg.accelerator, cfg.devices, cfg.num_nodes, cfg.strategy, precision)
    if key in _FABRICS:
        return _FABRICS[key]
    strategy: Any = cfg.strategy
    if strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook", "spawn"):
        raise ValueError(
            f"strategy {strategy!r} needs fabric.launch(function); use strategy='ddp' in a script, or "
            "create and launch a Fabric yourself and pass it as train_one_fold(..., fabric=fabric)"
        )
    if strategy == "ddp":
        strategy = DDPStrategy(find_unused_parameters=True)
    fabric = Fabric(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=precision,
    )
    if fabric.world_size > 1 and cfg.strategy == "auto":
        fabric = Fabric(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            precision=precision,
            strategy=DDPStrategy(find_unused_parameters=True),
        )
    fabric.launch()
    _FABRICS[key] = fabric
    return fabric


# ----------------------------------------------------------------------------------------------
# data helpers


class _Chain:
    """Apply ``first`` then ``second`` (picklable for DataLoader workers)."""

    def __init__(self, first: Callable[[Tensor], Tensor], second: Callable[[Tensor], Tensor]) -> None:
        self.first, self.second = first, second

    def __call__(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))


def _with_stats(dataset: Any, stats: dict[str, Any] | None) -> Any:
    """``dataset`` with :class:`Standardize` appended to its transform (unchanged when no stats)."""
    if dataset is None or stats is None:
        return dataset
    std = Standardize(
        torch.as_tensor(stats["mean"], dtype=torch.float32),
        torch.as_tensor(stats["std"], dtype=torch.float32),
    )
    current = getattr(dataset, "transform", None)
    return dataset.with_transform(std if current is None else _Chain(current, std))


def _check_dataset(name: str, dataset: Any, num_classes: int | None, feature_dim: int | None) -> None:
    for attr in ("labels", "bag_ids", "num_classes", "feature_dim", "class_names"):
        if not hasattr(dataset, attr):
            raise ValueError(
                f"{name} must be a medmoe bag dataset (InMemoryBags, H5 bags, ...) exposing .{attr}; "
                f"got {type(dataset).__name__}"
            )
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty; every split needs at least one bag")
    if num_classes is not None and dataset.num_classes != num_classes:
        raise ValueError(f"{name} has {dataset.num_classes} classes but the training set has {num_classes}")
    if feature_dim is not None and dataset.feature_dim != feature_dim:
        raise ValueError(
            f"{name} has {dataset.feature_dim}-d features but the training set has {feature_dim}-d"
        )


def _loader(
    dataset: Any,
    indices: Sequence[int],
    batch_size: int,
    num_workers: int,
    seed: int,
    collate: Callable[[Sequence[Any]], Any] = collate_bags,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(indices),
        collate_fn=collate,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=False,
    )


def _epoch_order(labels: Sequence[int], num_classes: int, balanced: bool, seed: int, epoch: int) -> list[int]:
    """The epoch's bag order: a seeded permutation, or class-balanced draws with replacement
    (what :class:`torch.utils.data.WeightedRandomSampler` does with weights ``1 / n_class``)."""
    g = torch.Generator().manual_seed(_derive_seed(seed, epoch, 17))
    n = len(labels)
    if not balanced:
        return torch.randperm(n, generator=g).tolist()
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    weights = 1.0 / counts[torch.as_tensor(labels, dtype=torch.long)]
    return torch.multinomial(weights, n, replacement=True, generator=g).tolist()


def _shard(order: list[int], rank: int, world: int, pad: bool) -> list[int]:
    """Rank ``rank``'s bags ``order[rank::world]``; with ``pad``, wrapped to ``ceil(n / world)``."""
    if world == 1:
        return list(order)
    shard = order[rank::world]
    if pad:
        per_rank = math.ceil(len(order) / world)
        k = 0
        while len(shard) < per_rank:
            shard.append(order[k % len(order)])
            k += 1
    return shard


# ----------------------------------------------------------------------------------------------
# inference


@torch.no_grad()
def _infer(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    fabric: Fabric | None = None,
    progress: Any = None,
    description: str = "eval",
) -> tuple[Tensor, Tensor]:
    """Float32 logits ``(n, C)`` and labels ``(n,)`` of every bag on the CPU, in dataset order
    (DDP-sharded and gathered when ``fabric`` runs several processes)."""
    n = len(dataset)
    world = fabric.world_size if fabric is not None else 1
    rank = fabric.global_rank if fabric is not None else 0
    shard = _shard(list(range(n)), rank, world, pad=True)
    was_training = model.training
    model.eval()
    logit_parts: list[Tensor] = []
    loader = _loader(dataset, shard, batch_size, num_workers, seed=0)
    task = progress.add_task(description, total=len(loader), info="") if progress is not None else None
    for batch in loader:
        batch = batch.to(device)
        x = batch.x
        if fabric is not None:
            x = fabric.strategy.precision.convert_input(x)
            with fabric.autocast():
                out = model(x, batch.mask)
        else:
            out = model(x, batch.mask)
        logit_parts.append(out.logits.float())
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    model.train(was_training)
    logits = torch.cat(logit_parts, 0)
    if world > 1:
        assert fabric is not None
        gathered = fabric.all_gather(logits)  # (world, ceil(n / world), C)
        full = torch.empty(n, logits.shape[1], device=logits.device)
        for r in range(world):
            count = len(range(r, n, world))
            full[r::world] = gathered[r, :count]
        logits = full
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    return logits.float().cpu(), labels


def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    feature_stats: dict[str, Any] | None = None,
    num_workers: int = 0,
    fabric: Fabric | None = None,
    survival_bin_edges: Sequence[float] | None = None,
    metrics_level: str = "bag",
    multilabel: bool = False,
    thresholds: DecisionThresholds | Sequence[float] | None = None,
    task: str | Task | None = None,
    task_state: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Evaluate a MIL model on a bag dataset.

    Args:
        model: a medmoe MIL model (or a Fabric-wrapped one).
        dataset: bag dataset (labels must be valid class indices).
        batch_size: bags per forward pass (padded and masked).
        device: where to run (default: the model's device). Ignored when ``fabric`` is given.
        feature_stats: ``{'mean': (d,), 'std': (d,)}`` to standardise features (as saved in a
            checkpoint's ``feature_stats``); ``None`` = use features as they are.
        num_workers: DataLoader workers.
        fabric: a launched Fabric: its device and precision are used and, with several processes,
            the bags are sharded and the probabilities gathered.
        survival_bin_edges: the checkpoint's ``survival_bin_edges`` of a survival model (without ``task``:
            evaluate a survival model); the dataset must carry survival targets.
        metrics_level: ``'bag'`` or ``'group'`` (per patient, see ``TrainConfig.metrics_level``); the
            returned ``probs`` stay per bag.
        multilabel: without ``task``: evaluate a multi-label model (checkpoint ``task='multilabel'``); the
            dataset must carry the same labels.
        thresholds: decision thresholds of a binary or multi-label model (a checkpoint's, see
            :func:`medmoe.engine.mil.thresholds.checkpoint_thresholds`): the metrics then also hold the
            threshold-dependent ones at these thresholds (``balanced_accuracy_tuned``, ...) and ``threshold``.
        task: the model's task (a checkpoint's ``task``, see :mod:`medmoe.engine.mil.tasks`); ``None`` =
            ``'multilabel'`` with ``multilabel``, ``'survival'`` with ``survival_bin_edges``, else
            ``'classification'`` (the keywords of earlier medmoe versions).
        task_state: what the task learnt in training (a checkpoint's ``config.json`` dict will do, e.g. its
            ``survival_bin_edges``).

    Returns:
        :class:`EvalResult` ``(metrics, probs (n, C), labels (n,), bag_ids)``; ``metrics`` are those of
        :func:`~medmoe.engine.mil.metrics.compute_metrics` plus ``loss`` (mean cross-entropy), or for
        survival ``c_index`` and ``loss`` (mean NLL) with ``probs`` the survival curves; multi-label: those of
        :func:`~medmoe.engine.mil.multilabel.multilabel_metrics` with ``probs`` the ``(n, L)`` label probabilities.
    """
    dataset = _with_stats(dataset, feature_stats)
    raw = unwrap_model(model)
    if fabric is not None:
        dev = fabric.device
    else:
        dev = torch.device(device) if device is not None else next(raw.parameters()).device
        raw.to(dev)
    if task is None:  # the keywords of earlier versions name the task
        task = "multilabel" if multilabel else "survival" if survival_bin_edges is not None else "classification"
    the_task = get_task(task)
    state = dict(task_state or {})
    if survival_bin_edges is not None:
        state["survival_bin_edges"] = list(survival_bin_edges)
    the_task.check_evaluation_set(dataset, raw.config.num_classes)
    logits, labels = _infer(
        raw, dataset, batch_size=batch_size, device=dev, num_workers=num_workers, fabric=fabric
    )
    values = thresholds.values if isinstance(thresholds, DecisionThresholds) else thresholds
    metrics = the_task.metrics(logits, dataset, state, level=metrics_level, thresholds=values)
    return EvalResult(metrics, the_task.probabilities(logits, state), labels, list(dataset.bag_ids))


# ----------------------------------------------------------------------------------------------
# logging helpers


class _MLflowLogger:
    """Minimal MLflow adapter: logs params once and metrics per epoch into the active (or a new) run."""

    def __init__(self, run_name: str, params: dict[str, Any]) -> None:
        import mlflow

        self._mlflow = mlflow
        self._own_run = mlflow.active_run() is None
        if self._own_run:
            mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:250] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._mlflow.log_metrics(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isnan(v)}, step=step
        )

    def finalize(self, status: str) -> None:
        if self._own_run:
            self._mlflow.end_run()


class _TensorBoardLogger:
    def __init__(self, root: Path) -> None:
        from lightning_fabric.loggers import TensorBoardLogger

        self._logger = TensorBoardLogger(root_dir=str(root), name="tensorboard")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def finalize(self, status: str) -> None:
        self._logger.finalize(status)


def _make_loggers(cfg: TrainConfig, out_dir: Path, params: dict[str, Any]) -> list[Any]:
    import importlib.util

    loggers: list[Any] = []
    for name in cfg.loggers:
        if name == "tensorboard":
            if (
                importlib.util.find_spec("tensorboard") is None
                and importlib.util.find_spec("tensorboardX") is None
            ):
                logger.warning("TensorBoard logging requested but tensorboard is not installed; skipping it")
                continue
            loggers.append(_TensorBoardLogger(out_dir))
        elif name == "mlflow":
            if importlib.util.find_spec("mlflow") is None:
                logger.warning("MLflow logging requested but mlflow is not installed; skipping it")
                continue
            loggers.append(_MLflowLogger(out_dir.name, params))
    return loggers


# ----------------------------------------------------------------------------------------------
# training


def _is_better(value: float, best: float | None, maximize: bool) -> bool:
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value > best if maximize else value < best


def train_one_fold(
    model_name: str,
    train_set: Any,
    val_set: Any,
    test_set: Any,
    cfg: TrainConfig,
    out_dir: str | Path,
    model_overrides: dict[str, Any] | None = None,
    resume: bool = False,
    *,
    split_hash: str | None = None,
    fabric: Fabric | None = None,
) -> FoldResult:
    """Train ``model_name`` on ``train_set``, early-stop on ``val_set``, report ``test_set``.

    Args:
        model_name: registry name, e.g. ``'abmil.base'`` or ``'abmil.base_mammoth'``; ``in_dim`` and
            ``num_classes`` come from the training set.
        train_set: bag dataset to train on (``labels``, ``bag_ids``, ``num_classes``, ``feature_dim``,
            ``class_names``, ``with_transform``).
        val_set: bag dataset for early stopping, or ``None`` (keep the last epoch).
        test_set: bag dataset evaluated once with the best checkpoint, or ``None``.
        cfg: training settings.
        out_dir: run folder: ``checkpoint/`` (best model), ``trainer_state.pt``, ``metrics.csv``,
            ``fold_result.json``.
        model_overrides: config overrides for :func:`medmoe.create_model` (e.g. ``embed_dim=64``,
            ``patch_embed='mammoth'``, ``patch_embed_args={'num_experts': 4}``).
        resume: continue from ``out_dir/trainer_state.pt`` if it exists (same settings required); a
            finished run is only re-evaluated. Without ``resume`` an existing state is overwritten.
        split_hash: identifier of the data split, stored in the checkpoint.
        fabric: a launched Fabric to use instead of one built from ``cfg``.

    Returns:
        :class:`FoldResult`.
    """
    model_overrides = dict(model_overrides or {})
    out_dir = Path(out_dir)
    if val_set is not None and len(val_set) == 0:
        val_set = None
    if test_set is not None and len(test_set) == 0:
        test_set = None
    _check_dataset("train_set", train_set, None, None)
    num_classes, in_dim = train_set.num_classes, train_set.feature_dim
    task = get_task(cfg.task)  # classification, survival, multilabel, ...: every task branch lives there
    task.check_training_set(train_set)
    for name, ds in (("val_set", val_set), ("test_set", test_set)):
        if ds is not None:
            _check_dataset(name, ds, num_classes if task.class_count_must_match else None, in_dim)
    if "in_dim" in model_overrides or "num_classes" in model_overrides:
        raise ValueError(
            "in_dim and num_classes come from the training set; remove them from model_overrides"
        )
    for name, ds in (("val_set", val_set), ("test_set", test_set)):
        task.check_dataset(name, ds, train_set)
    task_state = task.fit(train_set, cfg)  # e.g. the survival time bins, cut on the training fold

    fabric = fabric if fabric is not None else make_fabric(cfg)
    rank, world, is_zero = fabric.global_rank, fabric.world_size, fabric.is_global_zero
    device = fabric.device
    if is_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
    fabric.barrier()
    monitor, maximize = (
        task.resolve_monitor(cfg.early_stopping, num_classes) if val_set is not None else ("none", True)
    )
    state_path = out_dir / TRAINER_STATE_NAME
    ckpt_dir = out_dir / CHECKPOINT_DIR

    fabric.seed_everything(cfg.seed, workers=False, verbose=False)

    # features: standardisation fitted on the training bags only
    feature_stats = None
    if cfg.standardize_features:
        mean, std = feature_mean_std(train_set)
        feature_stats = {"mean": mean.tolist(), "std": std.tolist()}
    train_ds = _with_stats(train_set, feature_stats)
    val_ds = _with_stats(val_set, feature_stats)
    test_ds = _with_stats(test_set, feature_stats)

    # e.g. one output per class; survival: one hazard per time bin; multi-label: one logit per label
    outputs = task.num_outputs(train_set, cfg)
    model = create_model(model_name, num_classes=outputs, in_dim=in_dim, **model_overrides)
    task.check_model(model, model_name)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    labels = list(train_set.labels)
    per_rank = math.ceil(len(labels) / world)
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    if cfg.scheduler_interval == "step":
        schedule = WarmupCosine(
            cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), cfg.lr, cfg.min_lr
        )
    else:
        schedule = WarmupCosine(cfg.epochs, round(cfg.warmup_epochs), cfg.lr, cfg.min_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model_f, optimizer_f = fabric.setup(model, optimizer)
    objective = task.objective(train_set, cfg, task_state, device)  # targets and loss of a batch

    run_signature = {
        "model_name": model_name,
        "model_overrides": json.loads(json.dumps(model_overrides, default=str)),
        "train_config": cfg.to_dict(),
        "train_bags": list(train_set.bag_ids),
        "world_size": world,
    }
    extra_base: dict[str, Any] = {
        "seed": cfg.seed,
        "split_hash": split_hash,
        "class_names": task.output_names(train_set),
        "feature_stats": feature_stats,
        "train_config": cfg.to_dict(),
        "model_overrides": run_signature["model_overrides"],
        "monitor": monitor,
        "task": cfg.task,
        **task_state,
    }

    start_epoch, best, best_epoch, bad_epochs = 0, None, -1, 0
    history: list[dict[str, Any]] = []
    last_state: dict[str, Any] | None = None  # the trainer state last written (or resumed from)
    finished, stopped_early = False, False
    if resume and state_path.is_file():
        state = last_state = load_trainer_state(state_path)
        if _resume_signature(state.get("signature")) != _resume_signature(run_signature):
            raise InputError(
                f"{state_path} belongs to a run with different settings (model, overrides, train config, "
                "training bags or number of devices); resume with the same settings, use another {out_dir}, "
                "or start over with {overwrite}", out_dir=SETTING, overwrite=True
            )
        complete = bool(state.get("complete", False))  # a finished run's slim state: no weights
        if not complete:
            model.load_state_dict(state["model"])
            optimizer_f.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        best = state["best"]
        best_epoch, bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
        history = list(state["history"])
        finished, stopped_early = bool(state["finished"]) or complete, bool(state["stopped_early"])
        if not complete:
            _set_rng_state(state["rng"])
        if is_zero:
            logger.info(
                "resuming %s from epoch %d (best %s = %s at epoch %d)",
                out_dir,
                start_epoch,
                monitor,
                best,
                best_epoch,
            )
    elif resume and is_zero:
        logger.info("no trainer state in %s; starting from scratch", out_dir)

    loggers = _make_loggers(cfg, out_dir, {"model_name": model_name, **cfg.to_dict()}) if is_zero else []
    progress = training_progress(cfg.progress and is_zero)
    if progress is not None:
        progress.start()
    status = "success"
    try:
        epoch = start_epoch
        while not finished and epoch < cfg.epochs:
            t0 = time.perf_counter()
            _seed_all(_derive_seed(cfg.seed, epoch, 1000 + rank))
            order = _epoch_order(labels, num_classes, cfg.balanced_sampling, cfg.seed, epoch)
            shard = _shard(order, rank, world, pad=True)
            loader = _loader(
                train_ds,
                shard,
                cfg.batch_size,
                cfg.num_workers,
                seed=_derive_seed(cfg.seed, epoch, 2000 + rank),
                collate=(
                    SubsampledCollate(cfg.max_instances, _derive_seed(cfg.seed, epoch, 3000))
                    if cfg.max_instances
                    else collate_bags
                ),
            )
            model_f.train()
            loss_sum = 0.0
            lr_used = optimizer_f.param_groups[0]["lr"]
            count = 0
            bar = (
                progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader), info="")
                if progress
                else None
            )
            data_wait = 0.0  # seconds the loop spent blocked on the loader (reading + collating bags)
            t_train = time.perf_counter()
            loader_iter = iter(loader)
            while True:
                t_wait = time.perf_counter()
                batch = next(loader_iter, None)
                if batch is None:
                    break
                batch = batch.to(device)
                data_wait += time.perf_counter() - t_wait
                x = batch.x
                if cfg.feature_dropout > 0:
                    x = fast_dropout(x, cfg.feature_dropout)
                # the label auxiliary losses (CLAM, DTFD) see: the class, the survival time bin or none
                label, target = objective.targets(batch)
                out = model_f(x, batch.mask) if label is None else model_f(x, batch.mask, label=label)
                loss = out.total_loss(objective.loss(out.logits, target))
                # one sync per step: a NaN must stop the run
                loss_value = check_finite_loss(
                    loss, f"epoch {epoch + 1}, step {count // cfg.batch_size + 1} (bags {batch.bag_ids})",
                    _divergence_hint(cfg),
                )
                optimizer_f.zero_grad(set_to_none=True)
                fabric.backward(loss)
                if cfg.grad_clip:
                    fabric.clip_gradients(
                        model_f, optimizer_f, max_norm=float(cfg.grad_clip), error_if_nonfinite=False
                    )
                lr_used = optimizer_f.param_groups[0]["lr"]
                optimizer_f.step()
                if cfg.scheduler_interval == "step":
                    scheduler.step()
                loss_sum += loss_value * len(batch)
                count += len(batch)
                if bar is not None:
                    progress.update(bar, advance=1, info=f"loss {loss_value:.4f}")
            train_seconds = time.perf_counter() - t_train
            check_finite_model(model, f"the end of epoch {epoch + 1}", _divergence_hint(cfg))  # never saved
            if bar is not None:
                progress.remove_task(bar)
            if cfg.scheduler_interval == "epoch":
                scheduler.step()
            train_loss = loss_sum / max(count, 1)
            if world > 1:
                mean_loss = torch.tensor(train_loss, dtype=torch.float32, device=device)
                train_loss = float(fabric.all_reduce(mean_loss, reduce_op="mean"))

            row: dict[str, Any] = {
                "epoch": epoch,
                "lr": lr_used,
                "train_loss": train_loss,
                "train_seconds": round(train_seconds, 4),
                "data_wait_seconds": round(data_wait, 4),
            }
            if val_ds is not None:
                logits, _ = _infer(
                    model,
                    val_ds,
                    batch_size=cfg.eval_bs,
                    device=device,
                    num_workers=cfg.num_workers,
                    fabric=fabric,
                    progress=progress,
                    description="validation",
                )
                val_metrics = task.metrics(logits, val_ds, task_state, level=cfg.metrics_level, cfg=cfg)
                row.update({f"val_{k}": v for k, v in val_metrics.items()})
                value = val_metrics[monitor]
            else:
                val_metrics, value = {}, float(epoch)  # no validation: the last epoch is the best
            improved = _is_better(value, best, maximize)
            if improved:
                kept = _kept(best_epoch, history)  # what a failed save leaves: the previous best
                best, best_epoch, bad_epochs = value, epoch, 0
                if is_zero:
                    with writing(ckpt_dir, keep=kept):
                        save_checkpoint(
                            ckpt_dir, model, {**extra_base, "epoch": epoch, "metrics": {"val": val_metrics}}
                        )
            else:
                bad_epochs += 1
            row["best"] = bool(improved)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            done_epochs = epoch + 1
            if (
                cfg.patience is not None
                and val_ds is not None
                and done_epochs >= cfg.min_epochs
                and bad_epochs >= cfg.patience
                and done_epochs < cfg.epochs
            ):
                stopped_early = True
            finished = stopped_early or done_epochs >= cfg.epochs
            if is_zero:
                logger.info(
                    "epoch %d/%d  train_loss %.4f  %s  %s",
                    done_epochs,
                    cfg.epochs,
                    train_loss,
                    f"val_{monitor} {value:.4f}" if val_ds is not None else "",
                    "*" if improved else "",
                )
                last_state = {
                        "signature": run_signature,
                        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": optimizer_f.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "best": best,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                        "history": history,
                        "finished": finished,
                        "stopped_early": stopped_early,
                        "rng": _rng_state(),
                }
                with writing(state_path, keep=_kept(best_epoch, history[:-1])):
                    save_trainer_state(state_path, last_state)
                    write_history_csv(out_dir / METRICS_CSV, history)
                for lg in loggers:
                    lg.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            fabric.barrier()
            epoch += 1
        if stopped_early and is_zero:
            logger.info(
                "early stopping after %d epochs (best %s %.4f at epoch %d)",
                len(history),
                monitor,
                float("nan") if best is None else best,
                best_epoch + 1,
            )

        # final evaluation with the best checkpoint
        fabric.barrier()
        if not (ckpt_dir / "model.safetensors").is_file():
            raise CheckpointError(f"no best checkpoint in {ckpt_dir}; the run did not complete an epoch")
        best_model, _ = load_checkpoint(ckpt_dir)
        model.load_state_dict(best_model.state_dict())

        test_logits: Tensor | None = None
        val_logits: Tensor | None = None

        def best_metrics(ds: Any, thresholds: DecisionThresholds | None = None) -> dict[str, float]:
            nonlocal test_logits, val_logits
            logits, _ = _infer(
                model, ds, batch_size=cfg.eval_bs, device=device, num_workers=cfg.num_workers, fabric=fabric
            )
            if ds is test_ds:
                test_logits = logits
            if ds is val_ds:
                val_logits = logits
            return task.metrics(logits, ds, task_state, level=cfg.metrics_level, cfg=cfg,
                                thresholds=thresholds.values if thresholds is not None else None)

        final_val: dict[str, float] = best_metrics(val_ds) if val_ds is not None else {}
        # decision thresholds: chosen on the validation outputs only, then applied to the test set
        thresholds = task.choose_thresholds(val_logits, val_ds, cfg.metrics_level, outputs)
        if thresholds is not None and is_zero:
            logger.info("%s", thresholds.describe())
        final_test: dict[str, float] | None = best_metrics(test_ds, thresholds) if test_ds is not None else None
        result = FoldResult(
            out_dir=out_dir,
            checkpoint_dir=ckpt_dir,
            monitor=monitor,
            best_epoch=best_epoch,
            epochs_run=len(history),
            stopped_early=stopped_early,
            val_metrics=final_val,
            test_metrics=final_test,
            history=history,
            thresholds=thresholds.to_record() if thresholds is not None else None,
        )
        if is_zero:
            with writing(out_dir, keep=_kept(best_epoch, history)):
                info = read_checkpoint_info(ckpt_dir)
                save_checkpoint(
                    ckpt_dir,
                    model,
                    {
                        **extra_base,
                        "epoch": info.get("epoch", best_epoch),
                        "metrics": {"val": final_val, "test": final_test},
                        **({THRESHOLDS_KEY: thresholds.to_record()} if thresholds is not None else {}),
                    },
                )
                if test_logits is not None:
                    _write_test_predictions(out_dir / TEST_PREDICTIONS_CSV, test_ds, test_logits, task)
                atomic_write_text(
                    out_dir / FOLD_RESULT_JSON, json.dumps(_nan_to_none(result.to_dict()), indent=2) + "\n"
                )
                if not cfg.keep_last_state and last_state is not None and not last_state.get("complete", False):
                    save_trainer_state(state_path, finished_trainer_state(last_state))
        fabric.barrier()
        return result
    except BaseException:
        status = "failed"
        raise
    finally:
        if progress is not None:
            progress.stop()
        for lg in loggers:
            try:
                lg.finalize(status)
            except Exception:  # pragma: no cover - logging must not hide the real error
                logger.exception("logger finalisation failed")


def _write_test_predictions(path: Path, dataset: Any, logits: Tensor, task: Task) -> None:
    """One row per test bag (pooled over folds by cross-validation), in the task's columns
    (:meth:`~medmoe.engine.mil.tasks.Task.test_prediction_table`): ``bag_id,label,prob_<class>...``; for
    survival ``bag_id,time,event,risk``; multi-label ``bag_id,target_<label>...,prob_<label>...``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header, rows = task.test_prediction_table(dataset, logits)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _divergence_hint(cfg: TrainConfig) -> str:
    """What to change when MIL training diverges (the CLI's flags)."""
    return (f"the learning rate {cfg.lr:g} is likely too high (lower --lr), or the features hold NaN/inf or "
            "huge values (check them; keep --standardize on)")


def _kept(best_epoch: int, history: Sequence[dict[str, Any]]) -> str:
    """What survives a failed write: the best checkpoint so far and the last saved trainer state."""
    if best_epoch < 0:
        return "no checkpoint had been saved yet"
    last = f"; the trainer state of epoch {len(history)} is intact" if history else ""
    return f"the best checkpoint (epoch {best_epoch + 1}) is intact{last}"


#: train-config fields that cannot change a run's result: they may differ between a run and its resume
RESUME_NEUTRAL_SETTINGS = ("progress", "loggers", "num_workers", "keep_last_state")
_RESUME_NEUTRAL = RESUME_NEUTRAL_SETTINGS


def _resume_signature(signature: Any) -> Any:
    """``signature`` without the train-config fields that cannot change a run's result; fields added to
    :class:`TrainConfig` after the run was written count with their defaults."""
    if not isinstance(signature, dict) or not isinstance(signature.get("train_config"), dict):
        return signature
    config = {**TrainConfig().to_dict(), **signature["train_config"]}
    config = {k: v for k, v in config.items() if k not in _RESUME_NEUTRAL}
    return {**signature, "train_config": config}


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
