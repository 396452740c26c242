"""The one training loop of medmoe: Lightning Fabric, hooks, seeding, resume, early stopping, checkpoints.

Every pipeline (MIL :func:`~medmoe.engine.mil.trainer.train_one_fold`, segmentation
:func:`~medmoe.engine.seg.training.train_segmentation`, MOSAIC :func:`~medmoe.engine.mosaic.training.train_mosaic`)
trains through :class:`TrainingLoop`. The loop owns
what every pipeline needs and nothing a pipeline does on its own:

* **Fabric** (:func:`launch_fabric`): one launched ``lightning_fabric.Fabric`` (CPU, CUDA, MPS, DDP), or the
  caller's;
* **seeding** (:class:`Seeding`): the global torch / numpy (/ python) generators at the start, and optionally
  again at the start of every epoch from ``(seed, epoch, rank)``, so an epoch's random draws do not depend on
  the epochs before it;
* **the training step**: zero the gradients, ``fabric.backward``, gradient-norm clipping, ``optimizer.step``,
  the scheduler (after every step or every epoch), a NaN/inf loss stops the run
  (:class:`~medmoe.engine.divergence.TrainingDivergedError`), a non-finite model is never saved;
* **early stopping** (:class:`EarlyStopping`): the pipeline gives its rule (:class:`Improvement`,
  :class:`MinDeltaImprovement`), patience and minimum epochs, so each pipeline keeps its own numbers (MIL and
  segmentation count any gain, MOSAIC only a gain above ``min_delta`` or, with the reference's rule, any gain
  while a small drop resets the patience);
* **checkpoints**: the best epoch's model through the pipeline's ``save_best`` hook (``out_dir/checkpoint``),
  the last epoch as the resume state ``out_dir/trainer_state.pt`` (model, optimiser, scheduler, RNG states,
  early-stopping state, history, the pipeline's own state), both written atomically;
* **resume with a settings check**: the state records the run's ``signature`` (its settings); a state written
  with other settings is refused with an :class:`~medmoe.errors.InputError` that names each difference;
* **the metrics CSV** (``out_dir/metrics.csv``, one row per epoch, rewritten atomically from the history),
  **loggers** (objects with ``log_metrics(metrics, step)`` and ``finalize(status)``: TensorBoard, MLflow) and a
  **progress** bar on a terminal.

A pipeline subclasses :class:`LoopHooks`; the loop calls, in order::

    parts = hooks.setup(loop)                       # model, optimiser, scheduler (Fabric-wrapped)
    (resume: the trainer state is loaded into parts and hooks.load_state_dict(...))
    for epoch in range(start, epochs):              # "round" for MOSAIC (LoopConfig.unit)
        (seed the epoch)
        hooks.on_epoch_start(loop, epoch)
        for batch in hooks.batches(loop, epoch):
            out = hooks.training_step(loop, batch, epoch)   # StepOutput(loss, values, where, info)
            (check the loss, backward, clip, optimiser step)
            hooks.after_step(loop, batch)           # e.g. MOSAIC's teacher EMA
            (scheduler step, progress, time limit)
        row = hooks.end_of_epoch(loop, epoch, outputs)      # the row's training columns
        validation = hooks.validation(loop, epoch, is_last)  # Validation(score, metrics) or None
        (early stopping) -> hooks.save_best(loop, epoch, row) when the epoch is the best so far
        (metrics.csv, trainer_state.pt, loggers)

The run-folder check (``manifest.json``, ``--resume``/``--overwrite``) stays with the pipeline
(:mod:`medmoe.engine.runs`), before the loop starts; the loop's own settings check guards the trainer state.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import SETTING, InputError
from .checkpoint import TRAINER_STATE_NAME, load_trainer_state, save_trainer_state, unwrap_model
from .divergence import check_finite_loss, check_finite_model
from .run_logging import training_progress, write_history_csv
from .runs import identity_differences, writing

__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_CSV",
    "EarlyStopping",
    "Improvement",
    "LoopConfig",
    "LoopHooks",
    "LoopParts",
    "LoopResult",
    "MinDeltaImprovement",
    "Seeding",
    "StepOutput",
    "TrainingLoop",
    "Validation",
    "derive_seed",
    "launch_fabric",
    "rng_state",
    "seed_all",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
METRICS_CSV = "metrics.csv"


# ----------------------------------------------------------------------------------------------
# seeds and random states


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from ``seed`` and integer keys (numpy's SeedSequence: well mixed, stable)."""
    ss = np.random.SeedSequence([int(seed), *[int(k) for k in keys]])
    lo, hi = (int(v) for v in ss.generate_state(2, dtype=np.uint32))
    return (lo | (hi << 32)) & ((1 << 63) - 1)


def seed_all(seed: int, *, python: bool = True) -> None:
    """Seed the global generators: torch (all devices), numpy (``seed mod 2**32``) and, with ``python``,
    Python's :mod:`random`."""
    if python:
        random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global torch, numpy, python (and CUDA) generator states, as tensors and plain values (so the
    trainer state loads with ``weights_only=True``)."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned (CUDA only on as many devices as were saved)."""
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


@dataclass(frozen=True)
class Seeding:
    """How a run is seeded (each pipeline keeps its scheme, so its numbers stay the same).

    Attributes:
        start: ``"torch-numpy"`` (``torch.manual_seed(seed)``, ``np.random.seed(seed)``) or ``"fabric"``
            (``fabric.seed_everything(seed)``: python, numpy and torch), before :meth:`LoopHooks.setup`.
        epoch_seed: ``(seed, epoch, rank) -> seed`` to re-seed the global generators at the start of every
            epoch (an epoch's draws then do not depend on the epochs before it), or ``None``.
        epoch_python: also re-seed Python's :mod:`random` every epoch.
    """

    start: str = "torch-numpy"
    epoch_seed: Callable[[int, int, int], int] | None = None
    epoch_python: bool = False

    def __post_init__(self) -> None:
        if self.start not in ("torch-numpy", "fabric"):
            raise ValueError(f"Seeding.start must be 'torch-numpy' or 'fabric', got {self.start!r}")


# ----------------------------------------------------------------------------------------------
# early stopping


@dataclass(frozen=True)
class Improvement:
    """Any gain counts (MIL, segmentation): ``value > best`` (``<`` when not ``maximize``); a NaN value only
    counts when there is no best yet, a NaN best is beaten by anything."""

    maximize: bool = True

    def __call__(self, value: float, best: float | None, bad: int) -> tuple[bool, int]:
        if math.isnan(value):
            better = best is None
        elif best is None or math.isnan(best):
            better = True
        else:
            better = value > best if self.maximize else value < best
        return (True, 0) if better else (False, bad + 1)


@dataclass(frozen=True)
class MinDeltaImprovement:
    """MOSAIC's rules (maximising). ``lenient=False`` (medmoe): only a gain above ``min_delta`` saves and
    resets the count. ``lenient=True`` (the reference): any gain saves; a value within ``min_delta`` below
    the best resets the count; only a larger drop counts. The first value always saves; NaN counts."""

    min_delta: float = 0.0
    lenient: bool = False

    def __call__(self, value: float, best: float | None, bad: int) -> tuple[bool, int]:
        if best is None:
            return True, 0
        if math.isnan(value):
            return False, bad + 1
        if self.lenient:
            if value > best:
                return True, 0
            return False, 0 if value > best - self.min_delta else bad + 1
        if value > best + self.min_delta:
            return True, 0
        return False, bad + 1


@dataclass(frozen=True)
class EarlyStopping:
    """When an epoch is the best and when training stops.

    Attributes:
        rule: ``(value, best, epochs without improvement) -> (improved, epochs without improvement)``:
            :class:`Improvement` (MIL, segmentation) or :class:`MinDeltaImprovement` (MOSAIC).
        patience: stop after this many epochs without improvement (``None``: never stop early).
        min_epochs: never stop before this many epochs (MIL).
        stop_at_last: whether reaching ``patience`` at the last epoch still counts as an early stop (MOSAIC:
            yes; MIL: no, the run simply ended).
    """

    rule: Callable[[float, float | None, int], tuple[bool, int]] = field(default_factory=Improvement)
    patience: int | None = None
    min_epochs: int = 0
    stop_at_last: bool = True

    def should_stop(self, done: int, epochs: int, bad: int) -> bool:
        """Whether training stops after ``done`` epochs of ``epochs`` with ``bad`` epochs without improvement."""
        if self.patience is None or done < self.min_epochs or bad < self.patience:
            return False
        return self.stop_at_last or done < epochs


# ----------------------------------------------------------------------------------------------
# what the hooks exchange with the loop


@dataclass
class LoopParts:
    """What :meth:`LoopHooks.setup` returns: the Fabric-wrapped model and optimiser, and an optional
    scheduler (stepped as ``LoopConfig.scheduler_interval`` says)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None


@dataclass
class StepOutput:
    """What :meth:`LoopHooks.training_step` returns.

    Attributes:
        loss: the scalar loss to back-propagate.
        values: numbers the pipeline aggregates at the end of the epoch (its own loss terms, batch size).
        where: appended to the step in a divergence message (``" (a batch of pathmnist)"``).
        info: progress-bar text (default ``"loss <value>"``).
    """

    loss: Tensor
    values: dict[str, float] = field(default_factory=dict)
    where: str = ""
    info: str = ""
    loss_value: float = float("nan")  # set by the loop (one sync per step)


@dataclass
class Validation:
    """What :meth:`LoopHooks.validation` returns: the monitored ``score`` and the row's columns."""

    score: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopConfig:
    """The loop's settings (each pipeline fills them from its own config).

    Attributes:
        out_dir: the run folder (``metrics.csv``, ``trainer_state.pt``; the pipeline saves ``checkpoint/``).
        epochs: epochs (MOSAIC: rounds) to train.
        seed: the run's seed.
        signature: JSON-able settings of the run; a trainer state with another signature is refused on resume.
        resume: continue from ``out_dir/trainer_state.pt`` when it exists.
        seeding: :class:`Seeding`.
        early_stopping: :class:`EarlyStopping`.
        scheduler_interval: ``"step"`` or ``"epoch"``: when the scheduler of :class:`LoopParts` steps.
        grad_clip: max gradient norm (``None``/0: no clipping).
        clip_error_if_nonfinite: Fabric's ``error_if_nonfinite`` when clipping.
        max_seconds: stop after this wall time (checked after each step; the epoch is then finished as the
            last one), ``None`` = no limit.
        unit: what an epoch is called in messages (``"epoch"``, ``"round"``).
        global_step_in_messages: number steps over the whole run (else within the epoch) in divergence messages.
        progress: a rich progress bar (rank 0, terminal only).
        loggers: metric loggers (``log_metrics(metrics, step)``, ``finalize(status)``), rank 0 only.
        state_trainable_only: keep only trainable parameters and buffers of the model in the trainer state
            (a frozen backbone is rebuilt identically by ``setup``).
        normalize_signature: applied to the stored and the new signature before they are compared (e.g. to
            drop settings that cannot change the result).
        divergence_hint: what to change when training diverges (the CLI's flags).
    """

    out_dir: Path
    epochs: int
    seed: int
    signature: Any
    resume: bool = False
    seeding: Seeding = field(default_factory=Seeding)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    scheduler_interval: str = "step"
    grad_clip: float | None = None
    clip_error_if_nonfinite: bool = True
    max_seconds: float | None = None
    unit: str = "epoch"
    global_step_in_messages: bool = False
    progress: bool = True
    loggers: Sequence[Any] = ()
    state_trainable_only: bool = False
    normalize_signature: Callable[[Any], Any] = field(default=lambda s: s)
    divergence_hint: str = "lower the learning rate (--lr)"

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {self.scheduler_interval!r}")


@dataclass
class LoopResult:
    """What :meth:`TrainingLoop.run` returns.

    Attributes:
        history: one dict per epoch (the rows of ``metrics.csv``), including epochs of an earlier part of a
            resumed run.
        best, best_epoch: the best monitored value and its 0-based epoch (``None``/-1 before any).
        epochs_run: epochs trained in total.
        steps: optimiser steps in total.
        stopped_early: whether early stopping (or ``max_seconds``) ended training before ``epochs``.
        seconds: wall time of this call.
        resumed_from: the first epoch this call trained (0 for a new run).
    """

    history: list[dict[str, Any]]
    best: float | None
    best_epoch: int
    epochs_run: int
    steps: int
    stopped_early: bool
    seconds: float
    resumed_from: int = 0
    out_of_time: bool = False


class LoopHooks:
    """What a pipeline plugs into :class:`TrainingLoop` (override :meth:`setup`, :meth:`batches`,
    :meth:`training_step` and :meth:`save_best`; the others have defaults)."""

    def setup(self, loop: TrainingLoop) -> LoopParts:
        """Build the model, optimiser and scheduler and wrap them with ``loop.fabric.setup`` (called once,
        after the start seeding, before a resume state is loaded into them)."""
        raise NotImplementedError

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        """Called after the epoch's seeding, before its first batch (set a learning rate, re-seed a loader)."""

    def batches(self, loop: TrainingLoop, epoch: int) -> Iterable[Any]:
        """The epoch's training batches."""
        raise NotImplementedError

    def training_step(self, loop: TrainingLoop, batch: Any, epoch: int) -> StepOutput:
        """Forward one batch (the model is in training mode) and return its loss."""
        raise NotImplementedError

    def after_step(self, loop: TrainingLoop, batch: Any) -> None:
        """Called after each optimiser step (before the scheduler step)."""

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, outputs: list[StepOutput]) -> dict[str, Any]:
        """The training columns of the epoch's row (default: ``epoch`` and the mean loss)."""
        losses = [o.loss_value for o in outputs]
        return {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan")}

    def validation(self, loop: TrainingLoop, epoch: int, is_last: bool) -> Validation | None:
        """Score the epoch (``None``: not validated this epoch: it is neither best nor counted)."""
        return Validation(float(epoch))  # no validation: the last epoch is the best

    def save_best(self, loop: TrainingLoop, epoch: int, row: dict[str, Any]) -> None:
        """Save the best model so far (rank 0 only; inside :func:`~medmoe.engine.runs.writing`)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The pipeline's own resume state (tensors and plain values), saved with the trainer state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""


def _mean_loss(outputs: Sequence[StepOutput]) -> float:
    return float(np.mean([o.loss_value for o in outputs])) if outputs else float("nan")


# ----------------------------------------------------------------------------------------------
# fabric


def launch_fabric(
    accelerator: str = "auto", devices: int = 1, precision: str = "32-true", strategy: Any = "auto",
    num_nodes: int = 1, find_unused_parameters: bool = False,
) -> Any:
    """A launched ``lightning_fabric.Fabric`` (``pip install lightning-fabric``, in every medmoe extra).

    ``devices`` per node times ``num_nodes`` processes: under ``torchrun`` or SLURM, Fabric reads the ranks and
    the rendezvous address from the environment (docs/scaling.md). ``strategy='ddp'`` (or ``'auto'`` with
    several devices) starts the running script again once per extra device, so train from a script.
    ``find_unused_parameters=True`` sets up DDP for models that leave some parameters unused at some steps
    (MIL's CLAM instance classifiers); with ``strategy='auto'`` it applies once the world size is known.

    Raises:
        ValueError: a spawn-based ``strategy``: those need ``fabric.launch(function)``; launch such a Fabric
            yourself and pass it in.
    """
    try:
        from lightning_fabric import Fabric
        from lightning_fabric.strategies import DDPStrategy
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "training needs lightning-fabric: pip install 'medmoe[mil]' (or [seg], [vit])"
        ) from err
    if strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook", "spawn"):
        raise ValueError(
            f"strategy {strategy!r} needs fabric.launch(function); use strategy='ddp' in a script, or "
            "create and launch a Fabric yourself and pass it in (e.g. train_one_fold(..., fabric=fabric))"
        )
    chosen: Any = DDPStrategy(find_unused_parameters=True) if find_unused_parameters and strategy == "ddp" else strategy

    def build(chosen_strategy: Any) -> Any:
        return Fabric(accelerator=accelerator, devices=devices, precision=precision,  # type: ignore[arg-type]
                      strategy=chosen_strategy, num_nodes=num_nodes)

    fabric = build(chosen)
    if find_unused_parameters and strategy == "auto" and fabric.world_size > 1:
        fabric = build(DDPStrategy(find_unused_parameters=True))
    fabric.launch()
    return fabric


# ----------------------------------------------------------------------------------------------
# the loop


class TrainingLoop:
    """One run of :class:`LoopHooks` under :class:`LoopConfig` (see the module docstring).

    Attributes available to the hooks: ``fabric``, ``config``, ``model``, ``optimizer``, ``scheduler``,
    ``step`` (optimiser steps so far), ``history``, ``best``, ``best_epoch``, ``is_zero`` (rank 0),
    ``progress`` (the progress bar or ``None``), ``state_path`` and ``last_state`` (the trainer state last
    written or resumed from).
    """

    def __init__(self, hooks: LoopHooks, config: LoopConfig, fabric: Any) -> None:
        self.hooks, self.config, self.fabric = hooks, config, fabric
        self.is_zero = bool(fabric.is_global_zero)
        self.state_path = config.out_dir / TRAINER_STATE_NAME
        self.model: nn.Module | Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.best_epoch, self.bad_epochs, self.saved_epoch = -1, 0, -1
        self.stopped_early = self.finished = False
        self.last_state: dict[str, Any] | None = None
        self.progress: Any = None

    # -- setup and resume ------------------------------------------------------------------------

    def _seed_start(self) -> None:
        cfg = self.config
        if cfg.seeding.start == "fabric":
            self.fabric.seed_everything(cfg.seed, workers=False, verbose=False)
        else:
            seed_all(cfg.seed, python=False)

    def _resume(self) -> int:
        """Load the trainer state (after the settings check); return the first epoch to train."""
        cfg = self.config
        if not (cfg.resume and self.state_path.is_file()):
            if cfg.resume and self.is_zero:
                logger.info("no trainer state in %s; starting from scratch", cfg.out_dir)
            return 0
        state = self.last_state = load_trainer_state(self.state_path)
        self._check_signature(state)
        complete = bool(state.get("complete", False))  # a finished run's slim state: no weights
        if not complete:
            self._load_model_state(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if "rng" in state:
                set_rng_state(state["rng"])
            self.hooks.load_state_dict(state.get("hooks", {}))
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_epoch = self.saved_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.step = int(state.get("step", 0))
        self.history = list(state["history"])
        # a finished run trains no more (a slim state has no weights to continue from); a run that ended at
        # its last epoch continues when ``epochs`` grew (segmentation allows it)
        self.stopped_early = bool(state.get("stopped_early", False))
        self.finished = complete
        start = int(state["epoch"]) + 1
        if self.is_zero:
            logger.info(
                "resuming %s at %s %d (best %s at %s %d)",
                cfg.out_dir,
                cfg.unit,
                start + 1,
                self.best,
                cfg.unit,
                self.best_epoch + 1,
            )
        return start

    def _check_signature(self, state: dict[str, Any]) -> None:
        cfg = self.config
        stored = state.get("signature")
        if stored is None:  # written before the loop recorded settings: the run folder's manifest was checked
            logger.warning("%s records no settings; resuming it unchecked", self.state_path)
            return
        old, new = cfg.normalize_signature(stored), cfg.normalize_signature(cfg.signature)
        if old == new:
            return
        diffs, named = (
            identity_differences(old, new) if isinstance(old, dict) and isinstance(new, dict) else ([], {})
        )
        shown = "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "") if diffs else "its settings differ"
        used = {k: v for k, v in named.items() if "{" + k + "}" in shown}
        raise InputError(
            f"{self.state_path} belongs to a run with different settings ({shown}); resume with the same "
            "settings, use another {out_dir}, or start over with {overwrite}",
            out_dir=SETTING,
            overwrite=True,
            **used,
        )

    def _model_state(self) -> dict[str, Tensor]:
        module = unwrap_model(self.model)
        state = module.state_dict()
        if self.config.state_trainable_only:
            keep = {n for n, p in module.named_parameters() if p.requires_grad} | {
                n for n, _ in module.named_buffers()
            }
            state = {k: v for k, v in state.items() if k in keep}
        return {k: v.detach().cpu() for k, v in state.items()}

    def _load_model_state(self, state: dict[str, Tensor]) -> None:
        module = unwrap_model(self.model)
        result = module.load_state_dict(state, strict=not self.config.state_trainable_only)
        if result.unexpected_keys:
            raise InputError(
                f"{self.state_path} holds tensors this model does not have: "
                f"{result.unexpected_keys[:5]}; use another {{out_dir}}",
                out_dir=SETTING,
            )

    # -- one epoch -------------------------------------------------------------------------------

    def _seed_epoch(self, epoch: int) -> None:
        seeding = self.config.seeding
        if seeding.epoch_seed is not None:
            seed_all(
                seeding.epoch_seed(self.config.seed, epoch, self.fabric.global_rank),
                python=seeding.epoch_python,
            )

    def _train_epoch(self, epoch: int, t_start: float) -> tuple[list[StepOutput], bool]:
        """Run the epoch's batches; ``(step outputs, out of time)``."""
        cfg, fabric, hooks = self.config, self.fabric, self.hooks
        self.model.train()
        outputs: list[StepOutput] = []
        batches = hooks.batches(self, epoch)
        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        task = (
            self.progress.add_task(f"{cfg.unit} {epoch + 1}/{cfg.epochs}", total=total, info="")
            if self.progress is not None
            else None
        )
        out_of_time = False
        for batch in batches:
            out = hooks.training_step(self, batch, epoch)
            number = self.step + 1 if cfg.global_step_in_messages else len(outputs) + 1
            out.loss_value = check_finite_loss(
                out.loss, f"{cfg.unit} {epoch + 1}, step {number}{out.where}", cfg.divergence_hint
            )
            self.optimizer.zero_grad(set_to_none=True)
            fabric.backward(out.loss)
            if cfg.grad_clip:
                fabric.clip_gradients(
                    self.model,
                    self.optimizer,
                    max_norm=float(cfg.grad_clip),
                    error_if_nonfinite=cfg.clip_error_if_nonfinite,
                )
            out.values.setdefault("lr", self.optimizer.param_groups[0]["lr"])  # the lr this step used
            self.optimizer.step()
            hooks.after_step(self, batch)
            if self.scheduler is not None and cfg.scheduler_interval == "step":
                self.scheduler.step()
            self.step += 1
            outputs.append(out)
            if task is not None:
                self.progress.update(task, advance=1, info=out.info or f"loss {out.loss_value:.4f}")
            if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
                out_of_time = True
                break
        if task is not None:
            self.progress.remove_task(task)
        check_finite_model(
            self.model, f"the end of {cfg.unit} {epoch + 1}", cfg.divergence_hint
        )  # never saved
        if self.scheduler is not None and cfg.scheduler_interval == "epoch":
            self.scheduler.step()
        return outputs, out_of_time

    def _end_epoch(self, epoch: int, outputs: list[StepOutput], is_last: bool, t0: float) -> dict[str, Any]:
        """Validate, decide early stopping, save the best model, the history and the trainer state."""
        cfg, hooks = self.config, self.hooks
        row = hooks.end_of_epoch(self, epoch, outputs)
        validation = hooks.validation(self, epoch, is_last)
        improved = False
        if validation is not None:
            row.update(validation.metrics)
            improved, self.bad_epochs = cfg.early_stopping.rule(validation.score, self.best, self.bad_epochs)
            if improved:
                self.best, self.best_epoch = validation.score, epoch
                if self.is_zero:
                    with writing(cfg.out_dir / CHECKPOINT_DIR, keep=self.kept_message()):
                        hooks.save_best(self, epoch, row)
                    self.saved_epoch = epoch
        row["best"] = bool(improved)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        self.history.append(row)
        done = epoch + 1
        if self.is_zero:
            score = "" if validation is None else f", monitored {validation.score:.4f}"
            logger.info(
                "%s %d/%d: loss %.4f%s%s",
                cfg.unit,
                done,
                cfg.epochs,
                _mean_loss(outputs),
                score,
                " (best)" if improved else "",
            )
        if cfg.early_stopping.should_stop(done, cfg.epochs, self.bad_epochs):
            self.stopped_early = True
        if self.is_zero:
            self._save_state(epoch, finished=self.stopped_early or done >= cfg.epochs)
            for lg in cfg.loggers:
                lg.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "round")}, step=epoch)
        self.fabric.barrier()
        return row

    def kept_message(self, history: Sequence[dict[str, Any]] | None = None) -> str:
        """What survives a failed write (for :func:`~medmoe.engine.runs.writing`): the best checkpoint so far
        and the last saved trainer state (of ``history``, default: the whole history)."""
        unit = self.config.unit
        if self.saved_epoch < 0:
            return "no checkpoint had been saved yet"
        done = len(self.history if history is None else history)
        last = f"; the trainer state of {unit} {done} is intact" if done else ""
        return f"the best checkpoint ({unit} {self.saved_epoch + 1}) is intact{last}"

    def _save_state(self, epoch: int, finished: bool) -> None:
        cfg = self.config
        self.last_state = {
            "signature": cfg.signature,
            "model": self._model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch,
            "step": self.step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "finished": finished,
            "stopped_early": self.stopped_early,
            "rng": rng_state(),
            "hooks": self.hooks.state_dict(),
        }
        with writing(self.state_path, keep=self.kept_message(self.history[:-1])):
            save_trainer_state(self.state_path, self.last_state)
            write_history_csv(cfg.out_dir / METRICS_CSV, self.history)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> LoopResult:
        """Set up, resume, train until ``epochs``, early stopping or ``max_seconds``; return the outcome."""
        cfg = self.config
        self._seed_start()
        parts = self.hooks.setup(self)
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        start = self._resume()
        t_start = time.perf_counter()  # max_seconds counts the training, not the set-up
        self.progress = training_progress(cfg.progress and self.is_zero)
        if self.progress is not None:
            self.progress.start()
        status, out_of_time, epoch = "success", False, start
        try:
            while not (self.stopped_early or self.finished) and epoch < cfg.epochs:
                t0 = time.perf_counter()
                self._seed_epoch(epoch)
                self.hooks.on_epoch_start(self, epoch)
                outputs, out_of_time = self._train_epoch(epoch, t_start)
                self._end_epoch(epoch, outputs, epoch == cfg.epochs - 1 or out_of_time, t0)
                epoch += 1
                if out_of_time:
                    logger.info(
                        "stopping after %.1f s (max_seconds=%s)",
                        time.perf_counter() - t_start,
                        cfg.max_seconds,
                    )
                    break
            if self.stopped_early and self.is_zero:
                logger.info(
                    "early stopping after %d %ss (best %s at %s %d)",
                    len(self.history),
                    cfg.unit,
                    self.best,
                    cfg.unit,
                    self.best_epoch + 1,
                )
        except BaseException:
            status = "failed"
            raise
        finally:
            if self.progress is not None:
                self.progress.stop()
            for lg in cfg.loggers:
                try:
                    lg.finalize(status)
                except Exception:  # pragma: no cover - logging must not hide the real error
                    logger.exception("logger finalisation failed")
        return LoopResult(
            self.history,
            self.best,
            self.best_epoch,
            len(self.history),
            self.step,
            self.stopped_early,
            time.perf_counter() - t_start,
            start,
            out_of_time,
        )
