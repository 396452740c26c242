"""MOSAIC reports: per-dataset ACC/AUC table with 2-D / 3-D / all means, and the trainable-parameter report.

Means are plain averages over the datasets present (the paper's "18-dataset mean" when all 18 are).
The RetinaMNIST +-1 accuracy is shown in its own ``ACC+-1`` column and never enters the official
means; :func:`mean_accuracies` also returns ``all_acc_with_retina_pm1`` (the reference's headline
number, computed with the +-1 Retina accuracy) under that explicit name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .metrics import TaskMetrics

__all__ = [
    "ParameterReport",
    "format_metrics_table",
    "format_parameter_report",
    "mean_accuracies",
    "medmnist_table",
    "parameter_report",
]


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def mean_accuracies(metrics: Mapping[str, TaskMetrics], spatial_dims: Mapping[str, int]) -> dict[str, float]:
    """``acc_2d``, ``acc_3d``, ``acc_all``, ``auc_2d``, ``auc_3d``, ``auc_all`` (official metrics) and
    ``all_acc_with_retina_pm1`` (the MOSAIC reference's mean, Retina counted with +-1 tolerance)."""
    names_2d = [k for k in metrics if spatial_dims.get(k, 2) == 2]
    names_3d = [k for k in metrics if spatial_dims.get(k, 2) == 3]
    out: dict[str, float] = {}
    for metric in ("acc", "auc"):
        out[f"{metric}_2d"] = _nanmean([getattr(metrics[k], metric) for k in names_2d])
        out[f"{metric}_3d"] = _nanmean([getattr(metrics[k], metric) for k in names_3d])
        out[f"{metric}_all"] = _nanmean([getattr(metrics[k], metric) for k in metrics])
    out["all_acc_with_retina_pm1"] = _nanmean(
        [m.acc_pm1 if m.acc_pm1 is not None else m.acc for m in metrics.values()]
    )
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{100 * value:.2f}"


def format_metrics_table(
    metrics: Mapping[str, TaskMetrics],
    spatial_dims: Mapping[str, int],
    *,
    title: str = "",
    note: str = "",
) -> str:
    """A Markdown table: one row per dataset (ACC, AUC, ACC+-1, n) then the 2-D, 3-D and all means (%)."""
    lines = []
    if title:
        lines += [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| dataset | dims | ACC | AUC | ACC±1 (MOSAIC, not official) | n |", "|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {spatial_dims.get(name, 2)}-D | {_fmt(m.acc)} | {_fmt(m.auc)} | {_fmt(m.acc_pm1)} | {m.n} |")
    means = mean_accuracies(metrics, spatial_dims)
    for label, key in (("2-D mean", "2d"), ("3-D mean", "3d"), ("all mean", "all")):
        lines.append(f"| **{label}** | | {_fmt(means[f'acc_{key}'])} | {_fmt(means[f'auc_{key}'])} | | |")
    if any(m.acc_pm1 is not None for m in metrics.values()):
        lines += [
            "",
            (
                "All-dataset mean ACC with the MOSAIC reference's ±1 RetinaMNIST accuracy (not comparable to "
                f"official numbers): {_fmt(means['all_acc_with_retina_pm1'])}"
            ),
        ]
    return "\n".join(lines)


@dataclass
class ParameterReport:
    """Parameter counts of a model, by group (``backbone``, ``tokenizer_3d``, ``adapter:<S>``, ``head``).

    Attributes:
        total, trainable: parameter counts.
        groups: ``group -> (count, trainable count)``.
    """

    total: int
    trainable: int
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "trainable": self.trainable,
            "trainable_share": self.trainable_share,
            "groups": {k: {"count": c, "trainable": t} for k, (c, t) in self.groups.items()},
        }


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count parameters by group (uses ``model.parameter_group(name)`` when the model has it).

    Works on ``meta``-device models (no memory): ``MosaicModel(config, device="meta")``.
    """
    group_of = getattr(model, "parameter_group", lambda name: "all")
    groups: dict[str, list[int]] = {}
    total = trainable = 0
    for name, p in model.named_parameters():
        n = p.numel()
        g = groups.setdefault(group_of(name), [0, 0])
        g[0] += n
        total += n
        if p.requires_grad:
            g[1] += n
            trainable += n
    return ParameterReport(total, trainable, {k: (v[0], v[1]) for k, v in sorted(groups.items())})


def format_parameter_report(report: ParameterReport) -> str:
    """A Markdown table of the parameter groups, total and trainable share."""
    lines = ["| group | parameters | trainable |", "|---|---|---|"]
    for group, (count, trainable) in report.groups.items():
        lines.append(f"| {group} | {count:,} | {trainable:,} |")
    lines.append(f"| **total** | {report.total:,} | {report.trainable:,} ({100 * report.trainable_share:.2f} %) |")
    return "\n".join(lines)


def medmnist_table(data: str | Path | None = None, size: int = 28) -> str:
    """A Markdown table of the 18 MedMNIST datasets: task, classes, channels, split sizes, licence and the MOSAIC
    specialist (with its bottleneck) that routes each; with ``data``, a last column says whether the ``.npz``
    file for ``size`` (3-D datasets: ``min(size, 64)``) is in that folder (``present`` / ``MISSING``)."""
    from ...data.medmnist import MEDMNIST_FLAGS, medmnist_filename, medmnist_info
    from ...nn.adapters import ROUTING_TABLES

    table = ROUTING_TABLES["mosaic"]
    header = "| dataset | task | classes | ch | train / val / test | licence | specialist |"
    if data is not None:
        header += " file |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for flag in MEDMNIST_FLAGS:
        i = medmnist_info(flag)
        n = i.n_samples
        spec = table.route(flag)
        row = (f"| {flag} | {i.task} | {i.num_classes} | {i.n_channels} | {n['train']:,} / {n['val']:,} / "
               f"{n['test']:,} | {i.license} | {spec} (r={table.specialists[spec].bottleneck}) |")
        if data is not None:
            name = medmnist_filename(flag, min(size, 64) if i.spatial_dims == 3 else size)
            row += f" {name} {'present' if (Path(data) / name).is_file() else 'MISSING'} |"
        lines.append(row)
    return "\n".join(lines)
