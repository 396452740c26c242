"""Plots and reports (matplotlib, imported lazily).

* :mod:`~medmoe.viz.heatmap` — :func:`draw_heatmap`, :func:`draw_expert_maps`, :func:`draw_argmax_expert_map`,
  :func:`normalize_scores`, :func:`scores_to_canvas`, :func:`blend`, :func:`make_canvas`.
* :mod:`~medmoe.viz.patch_grid` — :func:`save_top_k_grids`, :func:`patch_grid`, :func:`top_k_indices`.
* :mod:`~medmoe.viz.expert_stats` — :func:`compute_expert_stats`, :func:`expert_load`, :func:`routing_entropy`,
  :func:`usage_per_class`, :func:`embed_2d` and ``plot_*``.
* :mod:`~medmoe.viz.report` — :func:`build_report` (``medmoe report RUN_DIR``).
"""

from .expert_stats import (
    ExpertStats,
    compute_expert_stats,
    embed_2d,
    expert_load,
    plot_entropy_histogram,
    plot_expert_load,
    plot_slot_embedding,
    plot_usage_per_class,
    routing_entropy,
    slot_expert_ids,
    usage_per_class,
)
from .heatmap import (
    Heatmap,
    HeatmapCanvas,
    blend,
    draw_argmax_expert_map,
    draw_expert_maps,
    draw_heatmap,
    make_canvas,
    normalize_scores,
    scores_to_canvas,
)
from .patch_grid import patch_grid, save_top_k_grids, top_k_indices
from .report import build_report

__all__ = [
    "ExpertStats",
    "Heatmap",
    "HeatmapCanvas",
    "blend",
    "build_report",
    "compute_expert_stats",
    "draw_argmax_expert_map",
    "draw_expert_maps",
    "draw_heatmap",
    "embed_2d",
    "expert_load",
    "make_canvas",
    "normalize_scores",
    "patch_grid",
    "plot_entropy_histogram",
    "plot_expert_load",
    "plot_slot_embedding",
    "plot_usage_per_class",
    "routing_entropy",
    "save_top_k_grids",
    "scores_to_canvas",
    "slot_expert_ids",
    "top_k_indices",
    "usage_per_class",
]
