"""Heatmaps of files (what ``medmoe mil heatmap`` runs): one feature file, one slide read with the built-in
extractor, or a folder of feature files with their slides matched by file stem.

Each function reads the checkpoint's ``info`` for the feature statistics, class names and task, and passes the
drawing options (``num_expert_maps``, ``top_k``, ``max_size``, ``alpha``, ``blur``, ``cmap``, ``normalize``,
``embedding``, ``device``, ``thresholds``) to :func:`~medmoe.engine.mil.heatmap_pipeline.slide_heatmaps`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "NOT_SLIDES",
    "FolderHeatmaps",
    "check_builtin_feature_dim",
    "cohort_bags",
    "feature_file_heatmaps",
    "folder_heatmaps",
    "patch_size_level0_of",
    "slide_file_heatmaps",
    "slide_for",
]

#: Files beside the slides that are never a slide image (feature files, tables, our own outputs).
NOT_SLIDES = (".h5", ".pt", ".pth", ".csv", ".json", ".txt", ".md", ".npz", ".npy", ".yaml", ".yml")


def patch_size_level0_of(attrs: dict[str, Any], features: str | os.PathLike, given: int | None = None) -> int:
    """The patch side in level-0 pixels of a feature file: ``given`` when set, else the file's
    ``patch_size_level0`` (or ``patch_size``) attribute.

    Raises:
        ValueError: neither is there (the message names the setting to give).
    """
    if given is not None:
        return int(given)
    for key in ("patch_size_level0", "patch_size"):
        if key in attrs:
            return int(attrs[key])
    from ...errors import SETTING, InputError

    raise InputError(f"{features} does not record the patch size (attribute 'patch_size_level0'); pass "
                     "{patch_size_level0} PIXELS (the patch side in level-0 pixels)", patch_size_level0=SETTING)


def check_builtin_feature_dim(model: nn.Module | None, checkpoint: str | os.PathLike | None = None) -> None:
    """Refuse a model whose input dimension is not the built-in extractor's (128): its heatmaps need the
    features of the encoder it was trained with.

    Raises:
        ValueError: the dimensions differ (``None`` passes: the demo's own model).
    """
    from ...data.patch_features import BUILTIN_FEATURE_DIM

    if model is not None and model.config.in_dim != BUILTIN_FEATURE_DIM:
        from ...errors import SETTING, InputError

        raise InputError(
            f"checkpoint {checkpoint} expects {model.config.in_dim}-d features, but the built-in extractor gives "
            f"{BUILTIN_FEATURE_DIM}-d ones; pass {{features}} H5 from the encoder used in training, or train on "
            "built-in features (medmoe.data.extract_slide_features -> medmoe mil train --features DIR)",
            features=SETTING,
        )


def _checkpoint_settings(info: dict[str, Any]) -> dict[str, Any]:
    return {"feature_stats": info.get("feature_stats"), "class_names": info.get("class_names"),
            "task": info.get("task", "classification")}


def feature_file_heatmaps(
    model: nn.Module,
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    info: dict[str, Any] | None = None,
    slide: Any = None,
    patch_size_level0: int | None = None,
    **drawing: Any,
) -> dict[str, Any]:
    """Heatmaps of one TRIDENT/CLAM feature file (features + level-0 ``coords``), over ``slide``'s thumbnail
    when given, else drawn from the coordinates alone.

    Args:
        model: the MIL model; info: its checkpoint info (``feature_stats``, ``class_names``, ``task``).
        features: the ``.h5`` / ``.pt`` file.
        out: output folder.
        slide: the whole-slide image (path or :class:`~medmoe.data.slides.Slide`), or ``None``.
        patch_size_level0: the patch side in level-0 pixels (default: the file's attribute).
        drawing: drawing options (see the module docstring).

    Returns:
        :func:`~medmoe.engine.mil.heatmap_pipeline.slide_heatmaps`' summary.

    Raises:
        ValueError: the file has no coordinates or no patch size.
    """
    from ...data import read_feature_file
    from .heatmap_pipeline import slide_heatmaps

    feats, coords, attrs = read_feature_file(features, with_attrs=True)
    if coords is None:
        raise ValueError(f"{features} has no 'coords' dataset; heatmaps need patch coordinates")
    size0 = patch_size_level0_of(attrs, features, patch_size_level0)
    return slide_heatmaps(model, feats, coords, size0, out, slide=slide, **_checkpoint_settings(info or {}),
                          **drawing)


def slide_file_heatmaps(
    model: nn.Module,
    slide: str | os.PathLike,
    out: str | os.PathLike,
    *,
    info: dict[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    patch_size: int = 224,
    magnification: float | None = None,
    tissue_threshold: float = 0.5,
    **drawing: Any,
) -> dict[str, Any]:
    """Heatmaps of a whole-slide image read with the built-in 128-d extractor (features written to
    ``out/features/<slide>.h5``); the model must take 128-d features (:func:`check_builtin_feature_dim`).

    Args:
        model, info: the MIL model and its checkpoint info; checkpoint: its folder (named in errors).
        slide: the slide file.
        out: output folder.
        patch_size, magnification, tissue_threshold: the extractor's tiling.
        drawing: drawing options (see the module docstring).

    Returns:
        :func:`~medmoe.engine.mil.heatmap_pipeline.slide_heatmaps`' summary.
    """
    from ...data.patch_features import extract_slide_features
    from .heatmap_pipeline import slide_heatmaps

    check_builtin_feature_dim(model, checkpoint)
    sf = extract_slide_features(slide, Path(out) / "features" / f"{Path(slide).stem}.h5", patch_size=patch_size,
                                magnification=magnification, tissue_threshold=tissue_threshold, progress=True)
    return slide_heatmaps(model, sf.features, sf.coords, sf.grid.patch_size_level0, out, slide=slide,
                          **_checkpoint_settings(info or {}), **drawing)


def slide_for(slides: Path | None, stem: str) -> Path | None:
    """The slide in folder ``slides`` whose file stem is ``stem`` (None without a folder or a match); feature
    files and tables (:data:`NOT_SLIDES`) are never taken for slides, so the slides may sit beside the
    feature files."""
    if slides is None:
        return None
    matches = sorted(p for p in slides.iterdir()
                     if p.stem == stem and p.suffix.lower() not in NOT_SLIDES and p.is_file())
    return matches[0] if matches else None


@dataclass
class FolderHeatmaps:
    """What :func:`folder_heatmaps` drew.

    Attributes:
        rows: one per slide drawn: ``slide``, ``num_patches``, then ``risk`` (survival) or ``prediction`` and
            ``prob_<class>``; also written to ``heatmaps.csv``.
        failed: ``(file name, error)`` of each feature file that could not be drawn (the others still were).
        num_files: feature files found.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, BaseException]] = field(default_factory=list)
    num_files: int = 0


def folder_heatmaps(
    model: nn.Module,
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    info: dict[str, Any] | None = None,
    slides: str | os.PathLike | None = None,
    patch_size_level0: int | None = None,
    **drawing: Any,
) -> FolderHeatmaps:
    """One heatmap folder per feature file of ``features`` (``out/<stem>/``) and ``out/heatmaps.csv``; a file
    that fails is recorded in ``failed`` and skipped, the others still get their maps.

    Args:
        model, info: the MIL model and its checkpoint info.
        features: a folder of ``.h5`` / ``.pt`` feature files.
        out: output folder.
        slides: a folder of slides matched to the feature files by file stem (:func:`slide_for`), or ``None``.
        patch_size_level0: the patch side in level-0 pixels (default: each file's attribute).
        drawing: drawing options (see the module docstring).

    Returns:
        The :class:`FolderHeatmaps` (no row when every file failed: the caller decides whether that is an error).

    Raises:
        ValueError: no feature file in ``features``; ``slides`` is not a folder.
    """
    import csv

    from rich.progress import track

    from ...data.feature_files import feature_files

    features, out = Path(features), Path(out)
    slides = None if slides is None else Path(slides)
    files = sorted(feature_files(features).values())  # refuses slide.h5 + slide.pt
    if not files:
        raise ValueError(f"no .h5 or .pt feature files in {features}")
    if slides is not None and not slides.is_dir():
        from ...errors import SETTING, InputError

        raise InputError(f"with a {{features}} folder, {{slide}} must be a folder of slides too; got {slides}",
                         features=SETTING, slide=SETTING)
    result = FolderHeatmaps(num_files=len(files))
    for path in track(files, description="heatmaps", transient=True, disable=not sys.stderr.isatty()):
        try:
            summary = feature_file_heatmaps(model, path, out / path.stem, info=info, slide=slide_for(slides, path.stem),
                                            patch_size_level0=patch_size_level0, **drawing)
        except (ValueError, RuntimeError, OSError) as err:
            result.failed.append((path.name, err))
        else:
            row = {"slide": path.stem, "num_patches": summary["num_patches"]}
            if "risk" in summary:
                row["risk"] = round(summary["risk"], 6)
            else:
                pred = summary["prediction"]  # a list of labels for a multi-label model
                row["prediction"] = ";".join(pred) if isinstance(pred, list) else pred
                row.update({f"prob_{k}": round(v, 6) for k, v in summary["probs"].items()})
            result.rows.append(row)
    if result.rows:
        with (out / "heatmaps.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(result.rows[0]))
            writer.writeheader()
            writer.writerows(result.rows)
    return result


def cohort_bags(cohort: str | os.PathLike, labels: str | os.PathLike, info: dict[str, Any]) -> Any:
    """The bags of a cohort's feature folder grouped by a labels CSV, for
    :func:`~medmoe.engine.mil.heatmap_pipeline.cohort_expert_stats`: through the checkpoint's classes when the
    CSV uses any of them (so a typo is an error, not a new group), else by the CSV's own values (another
    grouping, e.g. subtypes for a tumour/normal model); survival and multi-label checkpoints read their own
    columns (:func:`~medmoe.engine.mil.inputs.inference_dataset`)."""
    from ...data import FeatureFolderBags
    from .inputs import inference_dataset
    from .tasks import get_task
    from .tasks.classification import checkpoint_classes

    if get_task(info.get("task", "classification")).uses_class_labels:
        own = FeatureFolderBags(cohort, labels)
        if not set(own.class_names) & set(checkpoint_classes(info)):
            return own
    return inference_dataset(cohort, labels, info)[0]
