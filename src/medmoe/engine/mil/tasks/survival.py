"""Discrete-time survival (``TrainConfig(task='survival')``): a censored follow-up time per bag.

The model predicts ``survival_bins`` hazard logits; the time bins are cut at the quantiles of the training
fold's uncensored times (:func:`~medmoe.engine.mil.survival.survival_bin_edges`, saved in the checkpoint as
``survival_bin_edges``); the bin is the label the model's auxiliary losses see. Loss: the NLL survival loss,
metrics: the concordance index of the risk ``-sum_k S_k`` and the mean NLL, early stopping on the c-index.
The maths live in :mod:`medmoe.engine.mil.survival`; this module wires them into the :class:`Task` protocol.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ....data.label_table import TIME_COLUMNS, survival_time_column
from ..survival import (
    SURVIVAL_METRIC_NAMES,
    assign_time_bins,
    nll_survival_loss,
    risk_scores,
    survival_bin_edges,
    survival_curves,
    survival_metrics,
)
from .base import Objective, Task, seed_rows
from .patients import mean_per_group

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig

__all__ = ["TEST_RISKS_CSV", "TIME_COLUMNS", "SurvivalTask", "survival_time_column"]

#: The pooled out-of-fold test risks of a survival cross-validation run.
TEST_RISKS_CSV = "test_risks.csv"
#: The checkpoint ``config.json`` key of the inner time-bin edges.
EDGES_KEY = "survival_bin_edges"


class _SurvivalNLL(Objective):
    """The discrete-time NLL of the hazard logits; the model's auxiliary losses see the time bin."""

    def __init__(self, bin_of: dict[str, int], event_of: dict[str, int], alpha: float, device: Any) -> None:
        self.bin_of, self.event_of, self.alpha, self.device = bin_of, event_of, alpha, device

    def targets(self, batch: Any) -> tuple[Tensor | None, Any]:
        bins = torch.tensor([self.bin_of[b] for b in batch.bag_ids], device=self.device)
        events = torch.tensor([self.event_of[b] for b in batch.bag_ids], device=self.device)
        return bins, (bins, events)

    def loss(self, logits: Tensor, target: Any) -> Tensor:
        bins, events = target
        return nll_survival_loss(logits.float(), bins, events, alpha=self.alpha)


def _edges(state: Mapping[str, Any]) -> list[float]:
    edges = state.get(EDGES_KEY)
    if edges is None:
        raise ValueError("a survival model is evaluated with the time bins it was trained with: pass its "
                         "checkpoint's survival_bin_edges")
    return list(edges)


class SurvivalTask(Task):
    """Censored survival: hazard logits per time bin, NLL loss, c-index."""

    name: ClassVar[str] = "survival"
    monitor_metrics: ClassVar[Mapping[str, bool]] = {"c_index": True, "loss": False}
    summary_metrics: ClassVar[tuple[str, ...]] = SURVIVAL_METRIC_NAMES
    plots: ClassVar[tuple[str, ...]] = ("kaplan_meier.png",)
    pooled_predictions_csv: ClassVar[str] = TEST_RISKS_CSV
    labels_colour_embeddings: ClassVar[bool] = False

    def check_config(self, cfg: TrainConfig) -> None:
        if cfg.class_weights != "none":
            raise ValueError("TrainConfig.class_weights='balanced' weights cross-entropy classes; survival has none")

    def default_monitor(self, num_classes: int) -> str:
        return "c_index"

    def check_dataset(self, name: str, dataset: Any, train_set: Any = None) -> None:
        if dataset is not None and not getattr(dataset, "is_survival", False):
            raise ValueError(
                f"task='survival' needs survival targets on {name}: read the CSV with "
                "FeatureFolderBags(..., time_col='time') (event column 'event' or 'censorship'), or call "
                "dataset.with_survival(times, events)"
            )

    def num_outputs(self, dataset: Any, cfg: TrainConfig) -> int:
        return cfg.survival_bins

    def fit(self, train_set: Any, cfg: TrainConfig) -> dict[str, Any]:
        return {EDGES_KEY: survival_bin_edges(train_set.survival_times, train_set.survival_events, cfg.survival_bins)}

    def objective(self, train_set: Any, cfg: TrainConfig, state: Mapping[str, Any], device: Any) -> Objective:
        bins = assign_time_bins(train_set.survival_times, _edges(state)).tolist()
        return _SurvivalNLL(dict(zip(train_set.bag_ids, bins)), dict(zip(train_set.bag_ids, train_set.survival_events)),
                            cfg.survival_alpha, device)

    # ------------------------------------------------------------------------------------------
    # evaluation

    def metrics(self, logits: Tensor, dataset: Any, state: Mapping[str, Any], *, level: str = "bag",
                thresholds: Sequence[float] | None = None, cfg: TrainConfig | None = None) -> dict[str, float]:
        edges = _edges(state)
        labels = torch.as_tensor(dataset.labels, dtype=torch.long)
        scores, times, events = logits, dataset.survival_times, dataset.survival_events
        if level == "group":
            scores, labels, times, events = mean_per_group(scores, labels, dataset, times, events)
        return survival_metrics(scores, times, events, edges, cfg.survival_alpha if cfg is not None else 0.0)

    def probabilities(self, logits: Tensor, state: Mapping[str, Any]) -> Tensor:
        return survival_curves(logits)

    # ------------------------------------------------------------------------------------------
    # predictions

    def test_prediction_table(self, dataset: Any, logits: Tensor) -> tuple[list[str], list[list[Any]]]:
        risk = risk_scores(logits).tolist()
        rows = zip(dataset.bag_ids, dataset.survival_times, dataset.survival_events, risk)
        return ["bag_id", "time", "event", "risk"], [list(r) for r in rows]

    def pool_extra_columns(self, rows: Sequence[Mapping[str, str]]) -> tuple[list[str], list[list[Any]]]:
        """``high_risk``: risk above the median of the fold's test bags (the usual risk stratification)."""
        median = statistics.median(float(r["risk"]) for r in rows)
        return ["high_risk"], [[int(float(r["risk"]) > median)] for r in rows]

    def outcome_rows(self, dataset: Any) -> list[dict[str, Any]]:
        known = getattr(dataset, "is_survival", False)
        times = dataset.survival_times if known else [None] * len(dataset)
        events = dataset.survival_events if known else [None] * len(dataset)
        return [{"bag_id": b, "time": t, "event": e} for b, t, e in zip(dataset.bag_ids, times, events)]

    def add_predictions(self, rows: list[dict[str, Any]], logits: Tensor, info: Mapping[str, Any]) -> None:
        curves, risk = survival_curves(logits), risk_scores(logits)
        for i, row in enumerate(rows):
            row["risk"] = float(risk[i])
            row.update({f"survival_{k}": float(curves[i, k]) for k in range(curves.shape[1])})

    def add_ensemble_predictions(self, rows: list[dict[str, Any]], outputs: Sequence[Tensor],
                                 infos: Sequence[Mapping[str, Any]]) -> None:
        n = len(outputs)
        risks = torch.stack([risk_scores(z) for z in outputs])  # (m, bags)
        mean = risks.mean(0)
        std = risks.std(0) if n > 1 else torch.zeros_like(mean)
        for i, row in enumerate(rows):
            row.update({"risk": float(mean[i]), "risk_std": float(std[i]), "n_models": n})

    def slide_prediction(self, logits: Tensor, probs: Any, class_names: Sequence[str] | None,
                         thresholds: Any) -> tuple[list[str], str, dict[str, Any]]:
        z = torch.as_tensor(logits).view(1, -1)
        risk, curve = float(risk_scores(z)[0]), survival_curves(z)[0].tolist()
        return [f"bin_{k}" for k in range(len(probs))], f"risk {risk:.3f}", {"risk": risk, "survival": curve}

    # ------------------------------------------------------------------------------------------
    # reading bags, plots

    def read_bags(self, features: str | Path, labels: str | Path, *, patient_mode: str = "separate",
                  time_col: str | None = None, event_col: str = "event", label_cols: Sequence[str] | None = None,
                  class_names: Sequence[str] | None = None) -> Any:
        """The bags with their follow-up time (``time_col``, default the first of :data:`TIME_COLUMNS`) and event."""
        from ....data import FeatureFolderBags

        tcol = survival_time_column(labels, time_col)
        return FeatureFolderBags(features, labels, patient_mode=patient_mode, time_col=tcol, event_col=event_col)

    def plot_test_predictions(self, out_dir: Path, model_name: str, seed: int, dataset: Any) -> list[Path]:
        """Kaplan-Meier curves of one seed's out-of-fold test predictions (every patient once)."""
        from ....viz.kaplan_meier import plot_risk_groups

        rows = seed_rows(out_dir / self.pooled_predictions_csv, seed)
        if not rows:
            return []
        return [plot_risk_groups(
            [float(r["time"]) for r in rows], [int(r["event"]) for r in rows], [r["high_risk"] == "1" for r in rows],
            out_dir / "kaplan_meier.png",
            time_label=getattr(dataset, "time_col", None) or "time",
            title=f"{model_name}: out-of-fold test risk, split at each fold's median (seed {seed})",
        )]
