"""Run a MIL model over one slide's bag and draw every heatmap and expert plot it supports.

:func:`infer_slide` gives, from one forward pass (plus one patch-embedding pass for Mammoth's slot
tokens), the class probabilities, the attention over the *input patches* (``MILOutput.attention``;
for Mammoth with ``keep_slots`` the slot attention carried back through the routing), instance
logits where the model has them, the expert assignment ``(n, E)`` and the slot outputs.

:func:`slide_heatmaps` writes, into ``out_dir``::

    attention.png | attention_<k>.png        attention heatmap per branch/class (percentile-normalised)
    instance_<class>.png                     instance probability per class (models with instance logits)
    routing/expert_XX.png                    routing share per expert (the most loaded experts)
    routing/argmax_expert.png                arg-max expert per patch (categorical)
    topk/<name>_top<k>.png                   top-k patches per attention branch and per expert (needs a slide)
    expert_stats/*.png, expert_stats.json    load, routing entropy, slot outputs (PCA) coloured by expert
    heatmaps.json                            prediction, files, statistics

Without a slide image the maps are drawn from the coordinates only (no top-k grids).
:func:`cohort_expert_stats` routes every bag of a labelled dataset and writes expert load, routing
entropy and expert usage per class (``expert_stats/cohort_*``).
:func:`demo_slide_heatmaps` runs the whole path on the real CMU-1 H&E crop with the built-in (not
pretrained) feature extractor.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SlideInference", "cohort_expert_stats", "demo_slide_heatmaps", "infer_slide", "slide_heatmaps"]

logger = logging.getLogger(__name__)


@dataclass
class SlideInference:
    """What a model says about one slide (all numpy, on the CPU).

    Attributes:
        probs: ``(C,)`` class probabilities.
        logits: ``(C,)`` the model's raw outputs (hazard logits for a survival model).
        attention: ``(k, n)`` patch scores or ``None``; ``attention_kind`` says ``pre-softmax`` (logits,
            ``-inf`` never occurs for one unpadded bag) or ``post-softmax`` (weights summing to 1).
        instance_probs: ``(n, C)`` per-patch class probabilities (softmax of instance logits) or ``None``.
        expert_assignment: ``(n, E)`` routing share per expert or ``None`` (no MoE embedding).
        slot_tokens: ``(E*S, dim)`` Mammoth slot outputs (``keep_slots``) or ``None``.
        slot_expert_ids: ``(E*S,)`` expert of each slot token.
    """

    probs: np.ndarray
    logits: np.ndarray | None = None
    attention: np.ndarray | None = None
    attention_kind: str = "none"
    instance_probs: np.ndarray | None = None
    expert_assignment: np.ndarray | None = None
    slot_tokens: np.ndarray | None = None
    slot_expert_ids: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _standardize(x: Tensor, stats: dict[str, Any] | None) -> Tensor:
    if not stats:
        return x
    from ...data.bags import Standardize

    return Standardize(torch.as_tensor(stats["mean"], dtype=torch.float32),
                       torch.as_tensor(stats["std"], dtype=torch.float32))(x)


@torch.no_grad()
def infer_slide(
    model: nn.Module,
    features: Tensor | np.ndarray,
    *,
    feature_stats: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> SlideInference:
    """Run ``model`` on one bag ``features (n, d)`` and collect attention and routing.

    Args:
        model: a medmoe MIL model.
        features: the slide's patch features, in the order of its coords.
        feature_stats: ``{'mean', 'std'}`` saved in the checkpoint (features are standardised as in
            training), or ``None``.
        device: where to run.
    """
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features).float()
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {tuple(x.shape)}")
    in_dim = getattr(getattr(model, "config", None), "in_dim", x.shape[1])
    from .prediction import check_feature_dim

    check_feature_dim(in_dim, x.shape[1], "the slide")
    x = _standardize(x, feature_stats).unsqueeze(0).to(device)
    was_training = model.training
    model.to(device).eval()
    try:
        out = model(x, return_attention=True, return_routing=True)
        probs = torch.softmax(out.logits.float(), -1)[0].cpu().numpy()
        result = SlideInference(probs=probs, logits=out.logits[0].float().cpu().numpy())
        if out.attention is not None:
            att = out.attention[0].float()
            result.attention = att.reshape(-1, att.shape[-1]).cpu().numpy()
            result.attention_kind = str(out.extras.get("attention_kind", getattr(model, "attention_kind", "")))
        if out.instance_logits is not None:
            result.instance_probs = torch.softmax(out.instance_logits[0].float(), -1).cpu().numpy()
        if out.routing is not None:
            result.expert_assignment = out.routing.expert_assignment[0].float().cpu().numpy()
        pe = getattr(model, "patch_embed", None)
        if (pe is not None and getattr(pe, "is_moe", False) and not getattr(pe, "preserves_tokens", True)
                and hasattr(pe, "num_slots") and hasattr(pe, "num_experts")):
            tokens = pe.embed(x).tokens[0].float().cpu().numpy()
            result.slot_tokens = tokens
            result.slot_expert_ids = np.repeat(np.arange(pe.num_experts), pe.num_slots)
    finally:
        model.train(was_training)
    return result


def _branch_names(k: int, kind: str, class_names: list[str]) -> list[str]:
    if k == 1:
        return ["attention"]
    if k == len(class_names):
        return [f"attention_{c}" for c in class_names]
    return [f"attention_{i}" for i in range(k)]


# Just over 100 lines: most of it is the signature and docstring; the body is one pass over the maps a model
# supports (its expert maps are already in their own function).
def slide_heatmaps(
    model: nn.Module,
    features: Tensor | np.ndarray,
    coords: Tensor | np.ndarray,
    patch_size_level0: int,
    out_dir: str | os.PathLike,
    *,
    slide: Any = None,
    feature_stats: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    task: str = "classification",
    num_expert_maps: int = 8,
    top_k: int = 10,
    max_size: int = 2048,
    alpha: float = 0.5,
    blur: float = 0.0,
    cmap: str = "turbo",
    normalize: str = "percentile",
    device: str | torch.device = "cpu",
    embedding: str = "pca",
    thresholds: Any = None,
) -> dict[str, Any]:
    """Every heatmap and expert plot for one slide (layout in the module docstring).

    Args:
        model: a medmoe MIL model (any: attention maps need ``attention``, routing maps an MoE embedding).
        features: ``(n, d)`` patch features; ``coords (n, 2)`` their top-left level-0 ``(x, y)``.
        patch_size_level0: patch side in level-0 pixels (``.h5`` attribute ``patch_size_level0``).
        out_dir: output folder.
        slide: a :class:`~medmoe.data.slides.Slide` or path, or ``None`` for coordinates-only maps.
        feature_stats: the checkpoint's standardisation statistics.
        class_names: names of the classes (default ``0..C-1``).
        task: the checkpoint's task; for ``'survival'`` the titles and ``heatmaps.json`` give the predicted
            risk and survival curve instead of class probabilities, for ``'multilabel'`` each label's
            probability (sigmoid) and the labels called present; neither draws per-class instance maps.
        num_expert_maps: per-expert maps for the most loaded experts (``-1`` = all, 0 = none).
        top_k: patches per top-k grid (0 = no grids).
        max_size, alpha, blur, cmap, normalize: passed to :func:`medmoe.viz.heatmap.draw_heatmap`.
        embedding: ``pca`` or ``tsne`` for the slot-output map.
        thresholds: the checkpoint's decision thresholds (two classes: one; multi-label: one per label; see
            :func:`medmoe.engine.mil.thresholds.checkpoint_thresholds`); ``None`` = arg-max / 0.5.

    Returns:
        The summary also written to ``out_dir/heatmaps.json`` (prediction, files, expert statistics).
    """
    from ...data.slides import open_slide
    from ...viz.heatmap import draw_heatmap, make_canvas
    from ...viz.patch_grid import save_top_k_grids
    from .tasks import get_task

    c = np.asarray(coords.cpu().numpy() if isinstance(coords, Tensor) else coords)
    n_feat = features.shape[0] if features.ndim == 2 else features.shape[-2]
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2), got shape {c.shape}")
    if c.shape[0] != n_feat:
        raise ValueError(
            f"coords and features have different lengths ({c.shape[0]} vs {n_feat}); they must come from "
            "the same feature file"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sl = open_slide(slide) if slide is not None else None
    canvas = make_canvas(c, patch_size_level0, slide=sl, max_size=max_size)  # checks coords vs slide
    res = infer_slide(model, features, feature_stats=feature_stats, device=device)
    the_task = get_task(task)
    files: dict[str, Any] = {"attention": [], "instance": [], "experts": [], "topk": [], "expert_stats": []}
    # the task's headline: class probabilities; survival: risk and curve; multi-label: the labels called present
    names, tag, prediction = the_task.slide_prediction(res.logits, res.probs, class_names, thresholds)
    score_sets: dict[str, np.ndarray] = {}

    if res.attention is not None:
        for name, scores in zip(_branch_names(res.attention.shape[0], res.attention_kind, names), res.attention):
            hm = draw_heatmap(c, scores, patch_size_level0, canvas=canvas, normalize=normalize, cmap=cmap,
                              alpha=alpha, blur=blur, title=f"{name} ({res.attention_kind}); {tag}",
                              out_path=out / f"{name}.png")
            files["attention"].append(str(hm.path))
            score_sets[name] = scores
    if res.instance_probs is not None and the_task.draws_instance_maps:
        for ci, cname in enumerate(names):
            hm = draw_heatmap(c, res.instance_probs[:, ci], patch_size_level0, canvas=canvas, normalize="none",
                              cmap=cmap, alpha=alpha, blur=blur, title=f"instance P({cname}); {tag}",
                              label=f"P({cname})", out_path=out / f"instance_{cname}.png")
            files["instance"].append(str(hm.path))

    stats_dict = None
    if res.expert_assignment is not None:
        stats_dict = _expert_maps(res, c, patch_size_level0, out, canvas, files, score_sets, num_expert_maps,
                                  embedding, normalize=normalize, cmap=cmap, alpha=alpha, blur=blur)

    if sl is not None and top_k > 0 and score_sets:
        grids = save_top_k_grids(sl, c, int(patch_size_level0), score_sets, out / "topk", k=top_k)
        files["topk"] = [str(p) for p in grids.values()]
    summary = {
        "num_patches": int(c.shape[0]),
        "patch_size_level0": int(patch_size_level0),
        "slide": str(getattr(sl, "path", None)) if sl is not None else None,
        **prediction,
        "attention_kind": res.attention_kind,
        "expert_stats": stats_dict,
        "files": files,
    }
    (out / "heatmaps.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _expert_maps(res: Any, c: np.ndarray, patch_size_level0: int, out: Path, canvas: Any, files: dict[str, Any],
                 score_sets: dict[str, np.ndarray], num_expert_maps: int, embedding: str, *, normalize: str,
                 cmap: str, alpha: float, blur: float) -> dict[str, Any]:
    """The routing maps of ``res.expert_assignment`` ``(n, E)``: per-expert maps of the most loaded experts, the
    arg-max expert map, load / entropy / slot-output plots and ``expert_stats.json``; adds their paths to
    ``files`` and the chosen experts' scores to ``score_sets`` (for the top-k grids); returns the statistics."""
    from ...viz import expert_stats as es
    from ...viz.heatmap import draw_argmax_expert_map, draw_expert_maps

    a = res.expert_assignment
    stats = es.compute_expert_stats(a)
    stats_dict = stats.to_dict()
    E = a.shape[1]
    order = [int(e) for e in np.argsort(-np.asarray(stats.load), kind="stable")]
    chosen = order if num_expert_maps < 0 else order[: max(0, num_expert_maps)]
    if chosen:
        paths = draw_expert_maps(c, a, patch_size_level0, out / "routing", experts=sorted(chosen), canvas=canvas,
                                 normalize=normalize, cmap=cmap, alpha=alpha, blur=blur)
        files["experts"] = [str(paths[e]) for e in sorted(paths)]
    hm = draw_argmax_expert_map(c, a, patch_size_level0, canvas=canvas, title=f"arg-max expert ({E} experts)",
                                out_path=out / "routing" / "argmax_expert.png")
    files["argmax_expert"] = str(hm.path)
    st = out / "expert_stats"
    files["expert_stats"].append(str(es.plot_expert_load(stats.load, st / "expert_load.png")))
    assert stats.entropy is not None
    files["expert_stats"].append(str(es.plot_entropy_histogram(stats.entropy, st / "routing_entropy.png")))
    if res.slot_tokens is not None and res.slot_expert_ids is not None:
        files["expert_stats"].append(str(es.plot_slot_embedding(
            res.slot_tokens, res.slot_expert_ids, st / f"slot_outputs_{embedding}.png", method=embedding)))
    (st / "expert_stats.json").write_text(json.dumps(stats_dict, indent=2) + "\n")
    for e in chosen:
        score_sets[f"expert_{e:02d}"] = a[:, e]
    return stats_dict


def demo_slide_heatmaps(
    out_dir: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    info: dict[str, Any] | None = None,
    patch_size: int = 224,
    tissue_threshold: float = 0.5,
    progress: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """The whole path on a real slide: CMU-1 H&E crop (fetched) -> tissue patches -> built-in features
    (128-d, not pretrained; written to ``out_dir/features/cmu_small_region.h5``) -> model -> heatmaps.

    Args:
        out_dir: output folder.
        model: a MIL model with ``in_dim = 128``; default an **untrained**
            ``abmil.base_mammoth`` (8 experts x 4 slots) with a fixed seed, which shows the mechanics,
            not biology. Train one on built-in features (``medmoe mil train --features``) for real use.
        info: checkpoint info (for ``feature_stats`` and ``class_names``).
        patch_size, tissue_threshold: tiling at level 0 (20x).
        kwargs: passed to :func:`slide_heatmaps`.
    """
    from ...data.patch_features import BUILTIN_FEATURE_DIM, extract_slide_features
    from ...data.slide_samples import cmu_small_region_path

    out = Path(out_dir)
    path = cmu_small_region_path()
    sf = extract_slide_features(path, out / "features" / "cmu_small_region.h5", patch_size=patch_size,
                                tissue_threshold=tissue_threshold, progress=progress)
    if model is None:
        from ...registry import create_model

        torch.manual_seed(0)
        model = create_model(
            "abmil.base_mammoth", in_dim=BUILTIN_FEATURE_DIM, num_classes=2, embed_dim=128, attn_dim=64,
            patch_embed_args={"num_experts": 8, "num_slots": 4, "num_heads": 4, "slot_dim": 64},
        )
    info = info or {}
    stats = info.get("feature_stats")
    if stats is None:  # untrained model: standardise with the slide's own statistics
        f = sf.features
        stats = {"mean": f.mean(0).tolist(), "std": f.std(0).tolist()}
    return slide_heatmaps(model, sf.features, sf.coords, sf.grid.patch_size_level0, out, slide=path,
                          feature_stats=stats, class_names=info.get("class_names"),
                          task=info.get("task", "classification"), **kwargs)


@torch.no_grad()
def cohort_expert_stats(
    model: nn.Module,
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    feature_stats: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Expert statistics over a labelled bag dataset: load, routing entropy and usage per class.

    ``class_names`` names the label indices of a dataset without ``class_names`` of its own.
    Writes ``out_dir/cohort_expert_stats.json``, ``cohort_usage_per_class.png``, ``cohort_expert_load.png``
    and ``cohort_routing_entropy.png``; returns the JSON content.

    Raises:
        ValueError: the model has no mixture-of-experts patch embedding.
    """
    from ...viz import expert_stats as es

    if not getattr(getattr(model, "patch_embed", None), "is_moe", False):
        raise ValueError("the model's patch embedding does not route (patch_embed is not mammoth/soft_moe); "
                         "expert statistics need a MoE model such as 'abmil.base_mammoth'")
    assignments, labels = [], []
    for i in range(len(dataset)):
        bag = dataset[i]
        res = infer_slide(model, bag.features, feature_stats=feature_stats, device=device)
        assert res.expert_assignment is not None
        assignments.append(res.expert_assignment)
        labels.append(int(bag.label))
    # bag labels index the dataset's classes (for a multi-label cohort: its label combinations, which
    # outnumber the model's outputs), so those names and their count come first
    names = list(getattr(dataset, "class_names", None) or []) or class_names or None
    num_classes = len(names) if names else getattr(getattr(model, "config", None), "num_classes", None)
    stats = es.compute_expert_stats(assignments, labels, num_classes=num_classes, class_names=names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    es.plot_expert_load(stats.load, out / "cohort_expert_load.png", title=f"expert load ({len(labels)} bags)")
    assert stats.entropy is not None
    es.plot_entropy_histogram(stats.entropy, out / "cohort_routing_entropy.png")
    assert stats.usage_per_class is not None
    es.plot_usage_per_class(stats.usage_per_class, out / "cohort_usage_per_class.png", class_names=names)
    data = stats.to_dict()
    (out / "cohort_expert_stats.json").write_text(json.dumps(data, indent=2) + "\n")
    return data
