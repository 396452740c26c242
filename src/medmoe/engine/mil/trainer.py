"""MIL training on the shared loop (:class:`~medmoe.engine.loop.TrainingLoop`; CPU, CUDA, MPS, DDP: same code).

:func:`train_one_fold` trains one model on one train/val/test split; this module gives the loop its hooks
(:class:`_MILHooks`: bag order, targets and loss of the task, validation metrics, the checkpoint) and
evaluates the best checkpoint at the end:

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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ...data.bags import SubsampledCollate, collate_bags, feature_mean_std
from ...nn.dropout import fast_dropout
from ...registry import create_model
from ..checkpoint import (
    CheckpointError,
    atomic_write_text,
    finished_trainer_state,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
    save_trainer_state,
    unwrap_model,
)
from ..loop import (
    CHECKPOINT_DIR,
    METRICS_CSV,
    EarlyStopping,
    Improvement,
    LoopConfig,
    LoopHooks,
    LoopParts,
    LoopResult,
    Seeding,
    StepOutput,
    TrainingLoop,
    Validation,
    derive_seed,
    launch_fabric,
)
from ..optim import make_optimizer
from ..precision import resolve_precision
from ..run_logging import make_loggers
from ..runs import writing
from ..schedules import WarmupCosine
from .config import TrainConfig
from .inference import bag_loader, infer_logits, shard_indices, with_feature_stats
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


_FABRICS: dict[tuple[Any, ...], Any] = {}


def make_fabric(cfg: TrainConfig) -> Fabric:
    """A launched :class:`lightning_fabric.Fabric` for ``cfg`` (cached per process and settings): the shared
    :func:`medmoe.engine.loop.launch_fabric` with DDP's ``find_unused_parameters=True``, because some MIL
    models (CLAM instance classifiers) do not use every parameter at every step.

    ``strategy='ddp'`` (or ``'auto'`` with several devices) uses Fabric's subprocess launcher: the
    running script is started again once per extra device, so call the trainer from a script (``python
    train.py``), not from an interactive session. Spawn-based strategies need
    ``fabric.launch(function)``; launch them yourself and pass ``fabric=`` to :func:`train_one_fold`.
    With ``num_nodes > 1`` (or under ``torchrun`` / SLURM with one process per device) the processes
    are started externally and Fabric reads their ranks and the rendezvous address from the cluster
    environment (``torchrun``'s or SLURM's variables); ``devices * num_nodes`` must equal the world size.
    """
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    key = (cfg.accelerator, cfg.devices, cfg.num_nodes, cfg.strategy, precision)
    if key not in _FABRICS:
        _FABRICS[key] = launch_fabric(cfg.accelerator, cfg.devices, precision, cfg.strategy,
                                      num_nodes=cfg.num_nodes, find_unused_parameters=True)
    return _FABRICS[key]


# ----------------------------------------------------------------------------------------------
# data helpers


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


def _epoch_order(labels: Sequence[int], num_classes: int, balanced: bool, seed: int, epoch: int) -> list[int]:
    """The epoch's bag order: a seeded permutation, or class-balanced draws with replacement
    (what :class:`torch.utils.data.WeightedRandomSampler` does with weights ``1 / n_class``)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 17))
    n = len(labels)
    if not balanced:
        return torch.randperm(n, generator=g).tolist()
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    weights = 1.0 / counts[torch.as_tensor(labels, dtype=torch.long)]
    return torch.multinomial(weights, n, replacement=True, generator=g).tolist()


# ----------------------------------------------------------------------------------------------
# inference


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
    dataset = with_feature_stats(dataset, feature_stats)
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
    logits, labels = infer_logits(
        raw, dataset, batch_size=batch_size, device=dev, num_workers=num_workers, fabric=fabric
    )
    values = thresholds.values if isinstance(thresholds, DecisionThresholds) else thresholds
    metrics = the_task.metrics(logits, dataset, state, level=metrics_level, thresholds=values)
    return EvalResult(metrics, the_task.probabilities(logits, state), labels, list(dataset.bag_ids))


# ----------------------------------------------------------------------------------------------
# training


class _BagBatches:
    """The epoch's training batches on the device, timing how long the loop waits for them (reading,
    collating and moving bags): ``wait`` seconds."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device, self.wait = loader, device, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        while True:
            t_wait = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                return
            batch = batch.to(self.device)
            self.wait += time.perf_counter() - t_wait
            yield batch


class _MILHooks(LoopHooks):
    """MIL on :class:`~medmoe.engine.loop.TrainingLoop`: bags in a seeded order sharded over processes, the
    task's targets and loss, warm-up + cosine per step or per epoch, the task's monitor on the validation set."""

    def __init__(self, model_name: str, model_overrides: dict[str, Any], train_set: Any, val_set: Any,
                 cfg: TrainConfig, task: Task, task_state: dict[str, Any], monitor: str,
                 extra_base: dict[str, Any]) -> None:
        self.model_name, self.model_overrides, self.cfg = model_name, model_overrides, cfg
        self.train_set, self.task, self.task_state, self.monitor = train_set, task, task_state, monitor
        self.val_set, self.extra_base = val_set, extra_base  # what every checkpoint's config.json records
        self.val_metrics: dict[str, float] = {}

    def setup(self, loop: TrainingLoop) -> LoopParts:
        cfg, fabric, train_set = self.cfg, loop.fabric, self.train_set
        # features: standardisation fitted on the training bags only
        self.feature_stats = None
        if cfg.standardize_features:
            mean, std = feature_mean_std(train_set)
            self.feature_stats = {"mean": mean.tolist(), "std": std.tolist()}
        self.extra_base["feature_stats"] = self.feature_stats
        self.train_ds = with_feature_stats(train_set, self.feature_stats)
        self.val_ds = with_feature_stats(self.val_set, self.feature_stats)
        # e.g. one output per class; survival: one hazard per time bin; multi-label: one logit per label
        self.outputs = self.task.num_outputs(train_set, cfg)
        model = create_model(self.model_name, num_classes=self.outputs, in_dim=train_set.feature_dim,
                             **self.model_overrides)
        self.task.check_model(model, self.model_name)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.labels = list(train_set.labels)
        steps_per_epoch = math.ceil(math.ceil(len(self.labels) / fabric.world_size) / cfg.batch_size)
        if cfg.scheduler_interval == "step":
            schedule = WarmupCosine(
                cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), cfg.lr, cfg.min_lr
            )
        else:
            schedule = WarmupCosine(cfg.epochs, round(cfg.warmup_epochs), cfg.lr, cfg.min_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        model_f, optimizer_f = fabric.setup(model, optimizer)
        self.objective = self.task.objective(train_set, cfg, self.task_state, fabric.device)  # targets, loss
        return LoopParts(model_f, optimizer_f, scheduler)

    def batches(self, loop: TrainingLoop, epoch: int) -> _BagBatches:
        cfg, rank = self.cfg, loop.fabric.global_rank
        order = _epoch_order(self.labels, self.train_set.num_classes, cfg.balanced_sampling, cfg.seed, epoch)
        shard = shard_indices(order, rank, loop.fabric.world_size, pad=True)
        collate = (SubsampledCollate(cfg.max_instances, derive_seed(cfg.seed, epoch, 3000)) if cfg.max_instances
                   else collate_bags)
        loader = bag_loader(self.train_ds, shard, cfg.batch_size, cfg.num_workers,
                            seed=derive_seed(cfg.seed, epoch, 2000 + rank), collate=collate)
        self.t_train = time.perf_counter()
        self.epoch_batches = _BagBatches(loader, loop.fabric.device)
        return self.epoch_batches

    def training_step(self, loop: TrainingLoop, batch: Any, epoch: int) -> StepOutput:
        x = batch.x
        if self.cfg.feature_dropout > 0:
            x = fast_dropout(x, self.cfg.feature_dropout)
        # the label auxiliary losses (CLAM, DTFD) see: the class, the survival time bin or none
        label, target = self.objective.targets(batch)
        out = loop.model(x, batch.mask) if label is None else loop.model(x, batch.mask, label=label)
        loss = out.total_loss(self.objective.loss(out.logits, target))
        return StepOutput(loss, {"bags": len(batch)}, where=f" (bags {batch.bag_ids})")

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, outputs: list[StepOutput]) -> dict[str, Any]:
        train_seconds = time.perf_counter() - self.t_train
        loss_sum, count = 0.0, 0
        for out in outputs:
            loss_sum += out.loss_value * out.values["bags"]
            count += int(out.values["bags"])
        train_loss = loss_sum / max(count, 1)
        fabric = loop.fabric
        if fabric.world_size > 1:
            mean_loss = torch.tensor(train_loss, dtype=torch.float32, device=fabric.device)
            train_loss = float(fabric.all_reduce(mean_loss, reduce_op="mean"))
        return {
            "epoch": epoch,
            "lr": outputs[-1].values["lr"] if outputs else loop.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_seconds": round(train_seconds, 4),
            "data_wait_seconds": round(self.epoch_batches.wait, 4),
        }

    def validation(self, loop: TrainingLoop, epoch: int, is_last: bool) -> Validation:
        if self.val_ds is None:
            self.val_metrics = {}
            return Validation(float(epoch))  # no validation: the last epoch is the best
        cfg = self.cfg
        logits, _ = infer_logits(unwrap_model(loop.model), self.val_ds, batch_size=cfg.eval_bs,
                                 device=loop.fabric.device, num_workers=cfg.num_workers, fabric=loop.fabric,
                                 progress=loop.progress, description="validation")
        self.val_metrics = self.task.metrics(logits, self.val_ds, self.task_state, level=cfg.metrics_level, cfg=cfg)
        return Validation(self.val_metrics[self.monitor], {f"val_{k}": v for k, v in self.val_metrics.items()})

    def save_best(self, loop: TrainingLoop, epoch: int, row: dict[str, Any]) -> None:
        save_checkpoint(loop.config.out_dir / CHECKPOINT_DIR, loop.model,
                        {**self.extra_base, "epoch": epoch, "metrics": {"val": self.val_metrics}})


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
        resume: continue from ``out_dir/trainer_state.pt`` if it exists (same settings required: a
            difference is refused, naming it); a finished run is only re-evaluated. Without ``resume`` an
            existing state is overwritten.
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
    task = _check_fold(train_set, val_set, test_set, cfg, model_overrides)
    task_state = task.fit(train_set, cfg)  # e.g. the survival time bins, cut on the training fold

    fabric = fabric if fabric is not None else make_fabric(cfg)
    if fabric.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
    fabric.barrier()
    monitor, maximize = (
        task.resolve_monitor(cfg.early_stopping, train_set.num_classes) if val_set is not None else ("none", True)
    )
    signature = {
        "model_name": model_name,
        "model_overrides": json.loads(json.dumps(model_overrides, default=str)),
        "train_config": cfg.to_dict(),
        "train_bags": list(train_set.bag_ids),
        "world_size": fabric.world_size,
    }
    extra_base: dict[str, Any] = {
        "seed": cfg.seed,
        "split_hash": split_hash,
        "class_names": task.output_names(train_set),
        "feature_stats": None,  # fitted on the training bags in setup
        "train_config": cfg.to_dict(),
        "model_overrides": signature["model_overrides"],
        "monitor": monitor,
        "task": cfg.task,
        **task_state,
    }
    hooks = _MILHooks(model_name, model_overrides, train_set, val_set, cfg, task, task_state, monitor, extra_base)
    loggers = (make_loggers(cfg.loggers, out_dir, {"model_name": model_name, **cfg.to_dict()})
               if fabric.is_global_zero else [])
    stopping = EarlyStopping(Improvement(maximize), patience=cfg.patience if val_set is not None else None,
                             min_epochs=cfg.min_epochs, stop_at_last=False)
    loop = TrainingLoop(hooks, LoopConfig(
        out_dir=out_dir, epochs=cfg.epochs, seed=cfg.seed, signature=signature, resume=resume,
        seeding=Seeding(start="fabric", epoch_seed=_epoch_seed, epoch_python=True), early_stopping=stopping,
        scheduler_interval=cfg.scheduler_interval, grad_clip=cfg.grad_clip, clip_error_if_nonfinite=False,
        progress=cfg.progress, loggers=loggers, normalize_signature=_resume_signature,
        divergence_hint=_divergence_hint(cfg),
    ), fabric)
    run = loop.run()
    return _final_evaluation(loop, hooks, run, test_set, monitor)


def _check_fold(train_set: Any, val_set: Any, test_set: Any, cfg: TrainConfig,
                model_overrides: dict[str, Any]) -> Task:
    """Check the three bag sets against each other and the task (picked once here); return the task."""
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
    return task


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """MIL's per-epoch seed of the global generators (python, numpy, torch): ``(seed, epoch, 1000 + rank)``."""
    return derive_seed(seed, epoch, 1000 + rank)


def _final_evaluation(loop: TrainingLoop, hooks: _MILHooks, run: LoopResult, test_set: Any,
                      monitor: str) -> FoldResult:
    """The best checkpoint's validation and test metrics, the decision thresholds (chosen on the validation
    outputs only), the checkpoint saved again with them, ``test_predictions.csv``, ``fold_result.json`` and
    the finished run's slim trainer state."""
    cfg, fabric, task, task_state = hooks.cfg, loop.fabric, hooks.task, hooks.task_state
    out_dir, is_zero = loop.config.out_dir, loop.is_zero
    ckpt_dir = out_dir / CHECKPOINT_DIR
    model = unwrap_model(loop.model)
    test_ds, val_ds = with_feature_stats(test_set, hooks.feature_stats), hooks.val_ds
    fabric.barrier()
    if not (ckpt_dir / "model.safetensors").is_file():
        raise CheckpointError(f"no best checkpoint in {ckpt_dir}; the run did not complete an epoch")
    best_model, _ = load_checkpoint(ckpt_dir)
    model.load_state_dict(best_model.state_dict())

    def best_logits(ds: Any) -> Tensor:
        return infer_logits(model, ds, batch_size=cfg.eval_bs, device=fabric.device, num_workers=cfg.num_workers,
                            fabric=fabric)[0]

    def metrics(logits: Tensor, ds: Any, thresholds: DecisionThresholds | None = None) -> dict[str, float]:
        return task.metrics(logits, ds, task_state, level=cfg.metrics_level, cfg=cfg,
                            thresholds=thresholds.values if thresholds is not None else None)

    val_logits = best_logits(val_ds) if val_ds is not None else None
    final_val: dict[str, float] = metrics(val_logits, val_ds) if val_logits is not None else {}
    # decision thresholds: chosen on the validation outputs only, then applied to the test set
    thresholds = task.choose_thresholds(val_logits, val_ds, cfg.metrics_level, hooks.outputs)
    if thresholds is not None and is_zero:
        logger.info("%s", thresholds.describe())
    test_logits = best_logits(test_ds) if test_ds is not None else None
    final_test = metrics(test_logits, test_ds, thresholds) if test_logits is not None else None
    result = FoldResult(
        out_dir=out_dir, checkpoint_dir=ckpt_dir, monitor=monitor, best_epoch=run.best_epoch,
        epochs_run=run.epochs_run, stopped_early=run.stopped_early, val_metrics=final_val, test_metrics=final_test,
        history=run.history, thresholds=thresholds.to_record() if thresholds is not None else None,
    )
    if is_zero:
        with writing(out_dir, keep=loop.kept_message()):
            info = read_checkpoint_info(ckpt_dir)
            save_checkpoint(ckpt_dir, model, {
                **hooks.extra_base,
                "epoch": info.get("epoch", run.best_epoch),
                "metrics": {"val": final_val, "test": final_test},
                **({THRESHOLDS_KEY: thresholds.to_record()} if thresholds is not None else {}),
            })
            if test_logits is not None:
                _write_test_predictions(out_dir / TEST_PREDICTIONS_CSV, test_ds, test_logits, task)
            atomic_write_text(out_dir / FOLD_RESULT_JSON, json.dumps(_nan_to_none(result.to_dict()), indent=2) + "\n")
            last = loop.last_state
            if not cfg.keep_last_state and last is not None and not last.get("complete", False):
                save_trainer_state(loop.state_path, finished_trainer_state(last))
    fabric.barrier()
    return result


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
