"""Scoring slides with trained MIL checkpoints, from files to files (``medmoe mil eval``, ``predict`` and
``embed``): metrics on a labelled dataset, a CSV of predictions per slide, slide embeddings and their map.

Refusals are :class:`~medmoe.errors.InputError` naming the settings (``out``, ``labels``, ...), which the
command line spells as its flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import SETTING, InputError

__all__ = ["check_output_file", "embed_slide_files", "evaluate_checkpoint", "predict_slide_files", "write_frame_csv"]


def check_output_file(out: str | Path, features: str | Path, labels: str | Path | None,
                      checkpoints: list[Path]) -> None:
    """Refuse an output file that is a folder, not a file, or one of the inputs (the labels CSV, a feature
    file, a checkpoint's file), or that cannot be written; meant to run before any work, so nothing is
    computed for an output that would fail.

    Raises:
        ValueError: the output cannot be written there (the message says why and what to choose).
    """
    import tempfile

    from ...data.feature_files import FEATURE_SUFFIXES
    from ...data.file_checks import describe_path

    out = Path(out)
    kind = describe_path(out)
    if kind == "a folder":
        raise InputError(f"{{out}} {out} is a folder; give the CSV file to write, e.g. {{out}} "
                         f"{out / 'predictions.csv'}", out=SETTING)
    if kind not in ("missing", "a regular file"):
        raise InputError(f"{{out}} {out} is {kind}; give the name of a file to write", out=SETTING)
    inputs: list[tuple[Path, str]] = []
    if labels is not None:
        inputs.append((Path(labels), "the {labels} CSV"))
    if Path(features).is_dir():
        inputs += [(p, "a feature file") for p in Path(features).rglob("*") if p.suffix in FEATURE_SUFFIXES]
    for ckpt in checkpoints:
        inputs += [(p, f"a file of the checkpoint {ckpt}") for p in Path(ckpt).iterdir()]
    if kind == "a regular file":
        for path, what in inputs:
            try:
                same = os.path.samefile(out, path)
            except OSError:
                same = False
            if same:
                raise InputError(f"{{out}} {out} is {what}; predict would overwrite its own input: choose another "
                                 "{out}", out=SETTING, labels=SETTING)
    elif out.suffix in FEATURE_SUFFIXES and Path(features).is_dir() and \
            out.resolve().parent == Path(features).resolve():
        raise InputError(f"{{out}} {out} would put a file that looks like a slide's features into the feature "
                         f"folder {features}; write the predictions as .csv elsewhere", out=SETTING)
    parent = out.parent
    while describe_path(parent) == "missing" and parent != parent.parent:
        parent = parent.parent
    if describe_path(parent) != "a folder":
        raise InputError(f"{{out}} {out}: {parent} is {describe_path(parent)}, not a folder", out=SETTING)
    try:  # a probe: permissions, read-only or immutable folders, a full disk
        fd, probe = tempfile.mkstemp(prefix=".medmoe-write-test-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"cannot write {{out}} {out}: {parent} is not writable ({err.strerror or err}); "
                         "choose another {out}", out=SETTING) from None


def write_frame_csv(frame: Any, out: str | Path) -> Path:
    """Write a pandas DataFrame as the CSV ``out`` atomically (a temp file beside it, then a rename): a failure
    leaves no torn file."""
    from ..checkpoint import atomic_write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, frame.to_csv(index=False))
    return out


def evaluate_checkpoint(checkpoint: str | Path, *, dataset: str | None = None, features: str | Path | None = None,
                        labels: str | Path | None = None, time_col: str | None = None, event_col: str = "event",
                        metrics_level: str = "bag") -> dict[str, float]:
    """Metrics of a saved checkpoint (medmoe's or a reference's, :func:`~medmoe.interop.load_any_checkpoint`) on a
    benchmark or a labelled feature folder, read as the checkpoint was trained, at its decision thresholds
    (``*_tuned``).

    Args:
        checkpoint: the checkpoint folder.
        dataset: a benchmark name; or features, labels: a feature folder and its labels CSV.
        time_col, event_col: survival CSVs' columns.
        metrics_level: ``bag`` or ``group`` (per patient: a patient's slides averaged).

    Returns:
        ``metric -> value``.
    """
    from ...interop import load_any_checkpoint
    from .inputs import check_benchmark_classes, inference_dataset, load_dataset
    from .prediction import check_feature_dim
    from .tasks import get_task
    from .thresholds import checkpoint_thresholds
    from .trainer import evaluate

    if metrics_level not in ("bag", "group"):
        raise InputError(f"{{metrics_level}} must be 'bag' or 'group', got {metrics_level!r}", metrics_level=SETTING)
    if (dataset is None) == (features is None):
        raise InputError("give either {dataset} NAME or {features} DIR (with {labels} CSV)", dataset=SETTING,
                         features=SETTING, labels=SETTING)
    if features is not None and labels is None:
        raise InputError("{features} needs {labels} CSV to evaluate against (`medmoe mil predict` scores slides "
                         "without labels)", features=SETTING, labels=SETTING)
    model, info = load_any_checkpoint(checkpoint)
    task = info.get("task", "classification")
    if dataset is not None:
        _, ds = load_dataset(dataset, None, None, task=task,
                             label_cols=get_task(task).checkpoint_columns(info).get("label_cols"))
        check_benchmark_classes(ds, info, dataset)
    else:
        ds, _ = inference_dataset(features, labels, info, time_col=time_col, event_col=event_col)  # type: ignore[arg-type]
    check_feature_dim(model.config.in_dim, ds.feature_dim,
                      f"the slides in {features}" if features is not None else f"the benchmark {dataset}",
                      checkpoint)
    result = evaluate(model, ds, feature_stats=info.get("feature_stats"), task=task, task_state=info,
                      metrics_level=metrics_level,
                      thresholds=checkpoint_thresholds(info))  # *_tuned: at the checkpoint's thresholds
    return dict(result.metrics)


def predict_slide_files(checkpoint: str | Path, features: str | Path, out: str | Path, labels: str | Path | None = None,
                        *, time_col: str | None = None, event_col: str = "event") -> tuple[int, int]:
    """Write a CSV of predictions per slide (class probabilities; survival: risk and survival per time bin) of a
    checkpoint, or of the ensemble of every checkpoint of a ``mil train`` run folder (mean probabilities or
    risks); without ``labels`` the outcome columns stay empty.

    Args:
        checkpoint: a checkpoint folder or a run folder (:func:`~medmoe.engine.run_checkpoints`).
        features: a folder of feature files, or a benchmark name (``musk1``).
        out: the CSV to write (checked before any work: :func:`check_output_file`).
        labels: an optional labels CSV; time_col, event_col: survival CSVs' columns.

    Returns:
        ``(rows written, checkpoints used)``.
    """
    from ...interop import read_any_checkpoint_info
    from .inputs import inference_dataset
    from .prediction import predict, predict_ensemble, run_checkpoints

    checkpoints = run_checkpoints(checkpoint)
    check_output_file(out, features, labels, checkpoints)
    info = read_any_checkpoint_info(checkpoints[0])
    ds, labelled = inference_dataset(features, labels, info, time_col=time_col, event_col=event_col)
    if len(checkpoints) == 1:
        frame = predict(checkpoints[0], ds, as_frame=True)
    else:
        frame = predict_ensemble(checkpoints, ds, as_frame=True)
    if not labelled:  # no labels CSV: the outcome is unknown, not the placeholder class
        for col in ("label", "label_name"):
            if col in frame:
                frame[col] = None
    write_frame_csv(frame, out)
    return len(frame), len(checkpoints)


def embed_slide_files(checkpoint: str | Path, features: str | Path, out: str | Path, labels: str | Path | None = None,
                      *, plot: str | Path | None = None, method: str = "pca", batch_size: int = 1,
                      time_col: str | None = None, event_col: str = "event") -> Any:
    """Slide embeddings of one checkpoint (the vector its classifier reads, one row per slide) written to
    ``out`` (``.h5``, ``.csv``, ``.npz`` or ``.pt``), with an optional 2-D map of the slides (PNG, coloured by
    class when labelled).

    Args:
        checkpoint: one checkpoint folder (a run folder with several is refused: every fold has its own space).
        features: a folder of feature files, or a benchmark name; labels: an optional labels CSV.
        out: the embeddings file; plot: the map to draw, or ``None``; method: ``pca`` or ``tsne``.
        batch_size: bags per forward pass; time_col, event_col: survival CSVs' columns.

    Returns:
        The :class:`~medmoe.engine.SlideEmbeddings` written.
    """
    from ..checkpoint import read_checkpoint_info
    from .inputs import inference_dataset
    from .prediction import run_checkpoints
    from .slide_embedding import check_embedding_path, embed_slides, save_slide_embeddings
    from .tasks import get_task

    check_embedding_path(out)
    checkpoints = run_checkpoints(checkpoint)
    check_output_file(out, features, labels, checkpoints)
    if len(checkpoints) > 1:
        raise ValueError(
            f"{checkpoint} holds {len(checkpoints)} checkpoints; every fold learns its own vector space, so "
            f"embed with one of them, e.g. {checkpoints[0]}"
        )
    if method not in ("pca", "tsne"):
        raise ValueError(f"unknown projection {method!r}; choose pca or tsne")
    info = read_checkpoint_info(checkpoints[0])
    ds, labelled = inference_dataset(features, labels, info, time_col=time_col, event_col=event_col)
    emb = embed_slides(checkpoints[0], ds, batch_size=batch_size)
    if not labelled or not get_task(info.get("task", "classification")).labels_colour_embeddings:
        emb.labels = None
    save_slide_embeddings(emb, out)
    if plot is not None:
        from ...viz.slide_embedding_map import plot_slide_embeddings

        plot_slide_embeddings(emb.features, emb.labels, emb.class_names, plot, method=method,
                              title=f"{emb.meta['model']}: {len(emb.bag_ids)} slides, {emb.dim}-d")
    return emb
