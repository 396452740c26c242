"""Multiple-instance learning: list models, train (k-fold), evaluate, predict, embed slides, compare linear vs MoE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..engine.mil.tasks import get_task, task_names
from ..engine.mil.tasks.classification import checkpoint_classes
from ..engine.mil.tasks.survival import TIME_COLUMNS
from .common import config_keys, fail, parse_overrides, read_config_file, unknown_config_keys_text
from .run_configs import resolve_run_config

app = typer.Typer(help=__doc__, no_args_is_help=True)

DATASET_HELP = "A real benchmark fetched on first use: musk1, musk2, elephant, ucsb_breast, protein, birds_brown_creeper."
SET_HELP = "Model config override KEY=VALUE (YAML value), repeatable, e.g. --set embed_dim=128 --set dropout=0.1."


SURVIVAL_HELP = "Survival CSVs: follow-up time column (default: the first of " + ", ".join(TIME_COLUMNS) + ")."


def load_dataset(dataset: str | None, features: Path | None, labels: Path | None, patient_mode: str = "separate",
                 *, task: str = "classification", time_col: str | None = None, event_col: str = "event",
                 label_cols: list[str] | None = None, class_names: list[str] | None = None):
    """``(name, bag dataset)`` from a benchmark name or a TRIDENT feature folder + labels CSV, read with the
    columns of ``task`` (survival: time and event columns; multilabel: the 0/1 ``label_cols``; see
    :meth:`~medmoe.engine.mil.tasks.Task.read_bags` and :class:`~medmoe.data.FeatureFolderBags`)."""
    if (dataset is None) == (features is None):
        raise typer.BadParameter("give either --dataset NAME or --features DIR (with --labels CSV)")
    the_task = get_task(task)
    if dataset is not None:
        if not the_task.uses_class_labels or label_cols:
            raise ValueError(f"the benchmark {dataset!r} has one class label per bag; use --features and --labels "
                             "with time and event columns (survival) or 0/1 label columns (multilabel)")
        from ..data import load_mil_benchmark

        return dataset, load_mil_benchmark(dataset)
    if labels is None:
        raise typer.BadParameter("--features needs --labels CSV (columns slide_id, label[, case_id, split])")
    return Path(features).name, the_task.read_bags(features, labels, patient_mode=patient_mode, time_col=time_col,
                                                   event_col=event_col, label_cols=label_cols, class_names=class_names)


def resolve_task(task: str, label_cols: str | None) -> tuple[str, list[str] | None]:
    """``(task, label columns)`` from ``--task`` and ``--label-cols "tumor,necrosis"`` (which implies
    ``multilabel``); inconsistent combinations raise ``ValueError``."""
    cols = [c.strip() for c in label_cols.split(",") if c.strip()] if label_cols else None
    if label_cols and not cols:
        raise ValueError(f"--label-cols needs comma-separated column names, got {label_cols!r}")
    if cols and task == "classification":  # the flag's default: --label-cols alone means multilabel
        task = "multilabel"
    if task not in task_names():
        raise ValueError(f"--task must be one of {', '.join(repr(t) for t in task_names())}, got {task!r}")
    if get_task(task).uses_label_columns and not cols:
        raise ValueError(f"--task {task} needs --label-cols naming the 0/1 label columns of the CSV")
    if cols and not get_task(task).uses_label_columns:
        raise ValueError(f"--label-cols is for --task multilabel, not {task!r}")
    return task, cols


def check_benchmark_classes(ds: Any, info: dict[str, Any], name: str) -> None:
    """A benchmark scored by a classification checkpoint must have the checkpoint's classes (``ValueError``)."""
    if not get_task(info.get("task", "classification")).uses_class_labels:
        raise ValueError(f"the benchmark {name!r} has one class label per bag, but the checkpoint is a "
                         f"{info.get('task')} model; give --features and --labels with its columns")
    ours, theirs = checkpoint_classes(info), [str(c) for c in ds.class_names]
    if info.get("class_names") and ours != theirs:
        raise ValueError(f"the benchmark {name!r} has classes {theirs} but the checkpoint predicts {ours}; it was "
                         "trained on other data: give --features and --labels of a cohort with its classes")


def inference_dataset(features: Path, labels: Path | None, info: dict[str, Any], *, time_col: str | None = None,
                      event_col: str = "event"):
    """``(bags, labelled)``: the bags of a feature folder for a checkpoint (its ``info``) to score: with a
    labels CSV as in training (survival columns for a survival checkpoint, 0/1 columns for a multi-label one;
    a classification CSV's labels mapped through the checkpoint's classes, so a cohort holding only some of
    them keeps the model's numbering), without one every feature file as one bag of unknown outcome
    (placeholder label: the checkpoint's first class). A benchmark name (``musk1``) instead of a folder gives
    that benchmark with its labels (its classes must be the checkpoint's)."""
    import csv
    import tempfile

    from ..data import FeatureFolderBags, list_mil_benchmarks, load_mil_benchmark
    from ..data.feature_files import feature_files, trident_features_dir
    from ..data.file_checks import describe_path, require_file, require_folder

    task = get_task(info.get("task", "classification"))
    columns = task.checkpoint_columns(info)  # the checkpoint's classes, label columns, ...
    folder = Path(features)
    if labels is None and describe_path(folder) == "missing" and str(features).lower() in list_mil_benchmarks():
        ds = load_mil_benchmark(str(features).lower())
        check_benchmark_classes(ds, info, str(features).lower())
        return ds, True
    if describe_path(folder) == "missing":
        raise ValueError(f"feature folder {features} does not exist (nor is it a benchmark: "
                         f"{', '.join(list_mil_benchmarks())})")
    require_folder(folder, "feature folder")
    if labels is not None:
        require_file(labels, "--labels")
        return task.read_bags(folder, labels, time_col=time_col, event_col=event_col, **columns), True
    stems = sorted(feature_files(trident_features_dir(folder)))  # refuses slide.h5 + slide.pt
    if not stems:
        raise ValueError(f"no .h5 or .pt feature files in {features}")
    with tempfile.TemporaryDirectory(prefix="medmoe-labels-") as tmp:
        placeholder = Path(tmp) / "labels.csv"
        classes = columns.get("class_names")
        with placeholder.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["slide_id", "label"])
            writer.writerows([s, classes[0] if classes else "0"] for s in stems)
        return FeatureFolderBags(folder, placeholder, class_names=classes), False


def _check_predictions_out(out: Path, features: Path, labels: Path | None, checkpoints: list[Path]) -> None:
    """Refuse a ``predict --out`` that is a folder, not a file, or one of the command's own inputs (the
    ``--labels`` CSV, a feature file, a checkpoint's file), or that cannot be written; checked before any
    work, so nothing is computed for an output that would fail."""
    import os
    import tempfile

    from ..data.feature_files import FEATURE_SUFFIXES
    from ..data.file_checks import describe_path

    kind = describe_path(out)
    if kind == "a folder":
        raise ValueError(f"--out {out} is a folder; give the CSV file to write, e.g. --out {out / 'predictions.csv'}")
    if kind not in ("missing", "a regular file"):
        raise ValueError(f"--out {out} is {kind}; give the name of a file to write")
    inputs: list[tuple[Path, str]] = []
    if labels is not None:
        inputs.append((Path(labels), "the --labels CSV"))
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
                raise ValueError(f"--out {out} is {what}; predict would overwrite its own input: choose another --out")
    elif out.suffix in FEATURE_SUFFIXES and Path(features).is_dir() and \
            out.resolve().parent == Path(features).resolve():
        raise ValueError(f"--out {out} would put a file that looks like a slide's features into the feature "
                         f"folder {features}; write the predictions as .csv elsewhere")
    parent = out.parent
    while describe_path(parent) == "missing" and parent != parent.parent:
        parent = parent.parent
    if describe_path(parent) != "a folder":
        raise ValueError(f"--out {out}: {parent} is {describe_path(parent)}, not a folder")
    try:  # a probe: permissions, read-only or immutable folders, a full disk
        fd, probe = tempfile.mkstemp(prefix=".medmoe-write-test-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write --out {out}: {parent} is not writable ({err.strerror or err}); "
                         "choose another --out") from None


def _write_predictions(frame: Any, out: Path) -> None:
    """Write the CSV atomically (a temp file beside it, then a rename): a failure leaves no torn file."""
    import os
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_config_file(ctx: typer.Context, param: Any, value: Path | None) -> Path | None:
    """``--config FILE``: a YAML mapping of this command's options (``epochs: 30``, ``seed: [0, 1]``,
    ``time-col: months``, ``set: [embed_dim=128]``) used as defaults; options on the command line win."""
    if not value:
        return value
    value = resolve_run_config(value)  # a packaged name (e.g. ilse2018) or a file
    data = read_config_file(value)
    names = config_keys(ctx.command)
    unknown = [str(k) for k in data if str(k).replace("-", "_") not in names]
    if unknown:
        raise typer.BadParameter(unknown_config_keys_text(value, unknown, ctx.command), param_hint="'--config'")
    defaults = {names[str(k).replace("-", "_")]: v for k, v in data.items()}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


CONFIG_HELP = ("YAML file of this command's options (e.g. 'epochs: 30', 'seed: [0, 1]', 'set: [embed_dim=128]'), "
               "or the name of a packaged run configuration (ilse2018: the attention-MIL protocol of Ilse et al. "
               "2018); options given on the command line override it.")


def _train_config(**kwargs: Any):
    from ..engine import TrainConfig

    return TrainConfig(**{k: v for k, v in kwargs.items() if v is not None})


@app.command("models")
def models(pattern: str = typer.Argument("*", help="Glob over 'model.config' names.")) -> None:
    """List the registered MIL models and configs."""
    from ..registry import list_models

    for name in list_models(pattern):
        typer.echo(name)


@app.command("train")
def train(
    config: Path = typer.Option(None, "--config", is_eager=True, callback=_load_config_file, help=CONFIG_HELP),
    model: str = typer.Option("abmil.base_mammoth", "--model", "-m", help="Registry name, e.g. abmil.base_mammoth."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    features: Path = typer.Option(None, help="Folder of TRIDENT/CLAM .h5 (or .pt) feature files."),
    labels: Path = typer.Option(None, help="Labels CSV: slide_id, label[, case_id, split] (survival: slide_id, "
                                "time, event[, case_id, split])."),
    patient_mode: str = typer.Option("separate", help="Several slides per case: 'separate' bags or 'concat'."),
    task: str = typer.Option("classification", help="classification | survival (discrete-time NLL loss, "
                             "c-index, Kaplan-Meier plot of the predicted risk groups) | multilabel (several "
                             "0/1 label columns, see --label-cols)."),
    label_cols: str = typer.Option(None, help="Multilabel CSVs: the 0/1 label columns, comma-separated "
                                   "(e.g. tumor,necrosis,inflammation); implies --task multilabel."),
    time_col: str = typer.Option(None, help=SURVIVAL_HELP),
    event_col: str = typer.Option("event", help="Survival CSVs: 1 = event observed, 0 = censored (a "
                                  "'censorship' column, 1 = censored, is used when this one is absent)."),
    bins: int = typer.Option(4, min=1, help="Survival time bins (quantiles of the uncensored training times)."),
    survival_alpha: float = typer.Option(0.0, min=0.0, max=1.0, help="Survival loss: weight moved onto the "
                                         "uncensored patients' term (0 = plain likelihood)."),
    metrics_level: str = typer.Option("bag", help="bag | group: validation/test metrics per patient (case_id), "
                                      "averaging a patient's slides, when slides are separate bags."),
    max_instances: int = typer.Option(None, min=1, help="Train on a random subset of at most N patches of each "
                                      "bag, new every epoch (evaluation uses all patches)."),
    k: int = typer.Option(5, min=3, help="Folds (patient-level, stratified): test, validation and training folds."),
    seeds: list[int] = typer.Option([0], "--seed", help="Repeat for several seeds (repeat the option)."),
    epochs: int = typer.Option(20, min=1),
    lr: float = typer.Option(1e-4),
    weight_decay: float = typer.Option(1e-5),
    optimizer: str = typer.Option("adamw", help="adamw (decoupled weight decay) | adam (L2 weight decay in the "
                                  "gradient, as Ilse et al. 2018)."),
    min_lr: float = typer.Option(1e-6, min=0.0, help="Final learning rate of the cosine schedule (= --lr for a "
                                 "constant learning rate)."),
    grad_clip: float = typer.Option(1.0, min=0.0, help="Maximum gradient norm (0 = no clipping)."),
    batch_size: int = typer.Option(1, min=1),
    patience: int = typer.Option(5, min=1),
    early_stopping: str = typer.Option("auto", help="auto | auroc | kappa | balanced_accuracy | accuracy | f1 | "
                                       "loss; survival: auto | c_index | loss; multilabel: also subset_accuracy"),
    standardize: bool = typer.Option(True, help="z-score features with train-fold statistics."),
    class_weights: str = typer.Option("none", help="none | balanced"),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(Path("runs/train"), help="Output folder (a new or empty folder, unless --resume or "
                             "--overwrite)."),
    resume: bool = typer.Option(False, help="Continue the interrupted run in --out (same model, data, --k, --seed "
                                "and settings: checked against its manifest.json before anything is written)."),
    overwrite: bool = typer.Option(False, help="--out holds an earlier run: delete it first and start over."),
    keep_last_state: bool = typer.Option(False, help="Keep the last epoch's weights and optimiser state in "
                                         "trainer_state.pt after a fold finishes (default: dropped; the best "
                                         "model is in checkpoint/)."),
    accelerator: str = typer.Option("auto"),
    devices: int = typer.Option(1, min=1, help="Devices (processes) per node; more than one trains with DDP."),
    num_nodes: int = typer.Option(1, min=1, help="Machines training together, each running this command with "
                                  "--devices processes under torchrun or SLURM srun (see the Scaling out docs)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Folds trained at a time in worker processes, each "
                             "with threads/jobs torch threads: small bags train fastest with one process per core."),
) -> None:
    """k-fold cross-validation of one model; writes checkpoints, metrics.csv per fold and summary.md
    (survival: also test_risks.csv and kaplan_meier.png)."""
    from ..engine import run_cross_validation

    try:
        if optimizer not in ("adamw", "adam"):
            raise ValueError(f"--optimizer must be 'adamw' or 'adam', got {optimizer!r}")
        task, cols = resolve_task(task, label_cols)
        _name, ds = load_dataset(dataset, features, labels, patient_mode, task=task, time_col=time_col,
                                 event_col=event_col, label_cols=cols)
        cfg = _train_config(
            epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, patience=patience,
            optimizer=optimizer, min_lr=min_lr, grad_clip=grad_clip,
            min_epochs=min(epochs, 10), early_stopping=early_stopping, standardize_features=standardize,
            class_weights=class_weights, accelerator=accelerator, devices=devices, keep_last_state=keep_last_state,
            num_nodes=num_nodes, strategy="ddp" if devices > 1 or num_nodes > 1 else "auto", task=task,
            survival_bins=bins, survival_alpha=survival_alpha,
            metrics_level=metrics_level,
            max_instances=max_instances,
        )
        result = run_cross_validation(model, ds, k=k, seeds=seeds, cfg=cfg, out_dir=out,
                                      model_overrides=parse_overrides(set_), resume=resume, overwrite=overwrite,
                                      jobs=jobs)
        plots = get_task(task).plot_test_predictions(out, model, seeds[0], ds)
    except (ValueError, RuntimeError) as err:
        fail(err)
    typer.echo((out / "summary.md").read_text() if (out / "summary.md").exists() else str(result.summary))
    drawn = [str(p) for p in plots if p is not None]
    if drawn:
        typer.echo("plots of the out-of-fold test predictions: " + ", ".join(drawn))
    typer.echo(f"results: {out}")


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder (model.safetensors + config.json)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    features: Path = typer.Option(None),
    labels: Path = typer.Option(None),
    time_col: str = typer.Option(None, help=SURVIVAL_HELP),
    event_col: str = typer.Option("event", help="Survival CSVs: the event column (or 'censorship')."),
    metrics_level: str = typer.Option("bag", help="bag | group (per patient: a patient's slides averaged)."),
) -> None:
    """Evaluate a saved checkpoint on a dataset (needs nothing but the checkpoint folder)."""
    from ..engine import evaluate
    from ..engine.mil.prediction import check_feature_dim
    from ..engine.mil.thresholds import checkpoint_thresholds
    from ..interop import load_any_checkpoint

    try:
        if metrics_level not in ("bag", "group"):
            raise ValueError(f"--metrics-level must be 'bag' or 'group', got {metrics_level!r}")
        if (dataset is None) == (features is None):
            raise ValueError("give either --dataset NAME or --features DIR (with --labels CSV)")
        if features is not None and labels is None:
            raise ValueError("--features needs --labels CSV to evaluate against (`medmoe mil predict` scores "
                             "slides without labels)")
        model, info = load_any_checkpoint(checkpoint)
        task = info.get("task", "classification")
        if dataset is not None:
            _, ds = load_dataset(dataset, None, None, task=task,
                                 label_cols=get_task(task).checkpoint_columns(info).get("label_cols"))
            check_benchmark_classes(ds, info, dataset)
        else:
            ds, _ = inference_dataset(features, labels, info, time_col=time_col, event_col=event_col)
        check_feature_dim(model.config.in_dim, ds.feature_dim,
                          f"the slides in {features}" if features is not None else f"the benchmark {dataset}",
                          checkpoint)
        result = evaluate(model, ds, feature_stats=info.get("feature_stats"), task=task, task_state=info,
                          metrics_level=metrics_level,
                          thresholds=checkpoint_thresholds(info))  # *_tuned: at the checkpoint's thresholds
    except (ValueError, RuntimeError) as err:
        fail(err)
    typer.echo(json.dumps({k: round(v, 4) for k, v in result.metrics.items()}, indent=2))


@app.command("predict")
def predict_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder, or a `mil train` run folder: the ensemble "
                                      "of all its seed*/fold*/checkpoint models (mean probabilities or risks)."),
    features: Path = typer.Argument(..., help="Folder of .h5/.pt feature files, or a benchmark name (musk1)."),
    labels: Path = typer.Option(None, help="Optional labels CSV; without it every feature file is predicted."),
    out: Path = typer.Option(Path("predictions.csv"), help="Output CSV (one row per slide)."),
    time_col: str = typer.Option(None, help=SURVIVAL_HELP),
    event_col: str = typer.Option("event", help="Survival CSVs: the event column (or 'censorship')."),
) -> None:
    """Write a CSV of class probabilities per slide (survival checkpoints: risk and survival per time bin)."""
    from ..engine import predict, predict_ensemble, run_checkpoints
    from ..interop import read_any_checkpoint_info

    try:
        checkpoints = run_checkpoints(checkpoint)
        _check_predictions_out(out, features, labels, checkpoints)
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
        _write_predictions(frame, out)
    except (ValueError, RuntimeError) as err:
        fail(err)
    except OSError as err:
        fail(ValueError(f"cannot write --out {out}: {err.strerror or err}"))
    models = "" if len(checkpoints) == 1 else f" (ensemble of {len(checkpoints)} checkpoints)"
    typer.echo(f"wrote {len(frame)} predictions to {out}{models}")


@app.command("embed")
def embed_checkpoint(
    checkpoint: Path = typer.Argument(..., help="One checkpoint folder (e.g. RUN/seed0/fold0/checkpoint)."),
    features: Path = typer.Argument(..., help="Folder of .h5/.pt feature files, or a benchmark name (musk1)."),
    labels: Path = typer.Option(None, help="Optional labels CSV (kept with the vectors and colours the plot); "
                                "without it every feature file is embedded."),
    out: Path = typer.Option(Path("slide_embeddings.h5"), help="Output file: .h5, .csv, .npz or .pt."),
    plot: Path = typer.Option(None, help="Also draw a 2-D map of the slides (PNG), coloured by class."),
    method: str = typer.Option("pca", help="Projection of the map: pca or tsne."),
    batch_size: int = typer.Option(1, help="Bags per forward pass."),
    time_col: str = typer.Option(None, help=SURVIVAL_HELP),
    event_col: str = typer.Option("event", help="Survival CSVs: the event column (or 'censorship')."),
) -> None:
    """Slide embeddings: the vector a trained model's classifier reads, one row per slide (for retrieval,
    clustering or a linear probe on another task)."""
    from ..engine import embed_slides, run_checkpoints, save_slide_embeddings
    from ..engine.checkpoint import read_checkpoint_info
    from ..engine.mil.slide_embedding import check_embedding_path

    try:
        check_embedding_path(out)
        checkpoints = run_checkpoints(checkpoint)
        _check_predictions_out(out, features, labels, checkpoints)
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
            from ..viz.slide_embedding_map import plot_slide_embeddings

            plot_slide_embeddings(emb.features, emb.labels, emb.class_names, plot, method=method,
                                  title=f"{emb.meta['model']}: {len(emb.bag_ids)} slides, {emb.dim}-d")
    except (ValueError, RuntimeError) as err:
        fail(err)
    except OSError as err:
        fail(ValueError(f"cannot write --out {out}: {err.strerror or err}"))
    extra = f" and the map {plot}" if plot is not None else ""
    typer.echo(f"wrote {len(emb.bag_ids)} slide embeddings ({emb.dim}-d) to {out}{extra}")


def run_compare(
    models: list[str], datasets: list[str], patch_embeds: list[str], k: int, seeds: list[int], epochs: int,
    out: Path, metric: str, overrides: dict[str, Any] | None = None, moe_args: dict[str, Any] | None = None,
    lr: float = 1e-4, patience: int = 5, resume: bool = False, jobs: int = 1, *,
    folders: dict[str, Any] | None = None, task: str = "classification", overwrite: bool = False,
    columns: list[str] | None = None, **train_settings: Any,
) -> Path:
    """Shared by ``compare`` and ``demo``: cross-validate the grid, write comparison.md and .png.
    ``folders`` adds already loaded datasets (feature folders) to the named benchmarks; ``train_settings``
    are further :class:`~medmoe.engine.TrainConfig` fields (``None`` = default); ``columns`` are the
    table's metrics (default: the task's)."""
    from ..engine import compare
    from ..viz.comparison import plot_comparison

    loaded = dict(load_dataset(d, None, None) for d in datasets)
    loaded.update(folders or {})
    cfg = _train_config(epochs=epochs, lr=lr, patience=patience, min_epochs=min(epochs, 5),
                        standardize_features=True, progress=False, task=task, **train_settings)
    result = compare(models, loaded, patch_embeds, k=k, seeds=seeds, cfg=cfg, out_dir=out,
                     model_overrides=overrides or {}, patch_embed_args={"mammoth": moe_args} if moe_args else None,
                     resume=resume, overwrite=overwrite, jobs=jobs, metrics=columns)
    table = result.to_markdown()  # compare() wrote it to comparison.md (atomically)
    png = plot_comparison(result.rows, metric, out / "comparison.png",
                          title=f"{k}-fold CV, seeds {list(seeds)}: test {metric}")
    typer.echo(table)
    typer.echo(f"table: {out / 'comparison.md'}\nplot:  {png}")
    return png


@app.command("compare")
def compare_cmd(
    config: Path = typer.Option(None, "--config", is_eager=True, callback=_load_config_file, help=CONFIG_HELP),
    models: list[str] = typer.Option(["abmil", "meanmil", "transmil"], "--model", "-m"),
    datasets: list[str] = typer.Option(None, "--dataset", "-d", help=DATASET_HELP + " Default: musk1 and "
                                       "ucsb_breast unless --features is given."),
    features: Path = typer.Option(None, help="Also compare on a TRIDENT/CLAM feature folder (with --labels)."),
    labels: Path = typer.Option(None, help="Labels CSV of --features (survival: time and event columns)."),
    patient_mode: str = typer.Option("separate", help="Several slides per case: 'separate' bags or 'concat'."),
    task: str = typer.Option("classification", help="classification | survival (--features only; c-index) | "
                             "multilabel (--features only; see --label-cols)."),
    label_cols: str = typer.Option(None, help="Multilabel CSVs: the 0/1 label columns, comma-separated; implies "
                                   "--task multilabel."),
    metrics_level: str = typer.Option("bag", help="bag | group: test metrics per patient (case_id)."),
    max_instances: int = typer.Option(None, min=1, help="Train on a random subset of at most N patches of each "
                                      "bag, new every epoch (evaluation uses all patches)."),
    time_col: str = typer.Option(None, help=SURVIVAL_HELP),
    event_col: str = typer.Option("event", help="Survival CSVs: the event column (or 'censorship')."),
    patch_embeds: list[str] = typer.Option(["linear", "mammoth"], "--patch-embed"),
    k: int = typer.Option(5, min=3),
    seeds: list[int] = typer.Option([0], "--seed"),
    epochs: int = typer.Option(20, min=1),
    lr: float = typer.Option(1e-4),
    metric: str = typer.Option(None, help="Metric drawn in the plot (default auroc; c_index for survival)."),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    moe: list[str] = typer.Option(None, "--moe", help="Mammoth argument KEY=VALUE for the mammoth variant only, "
                                  "e.g. --moe num_experts=8 (default: the paper's 30 experts x 10 slots)."),
    out: Path = typer.Option(Path("runs/compare")),
    resume: bool = typer.Option(False, "--resume", help="Keep finished folds under --out and continue "
                                "interrupted ones (same settings required): a long grid can be stopped and resumed."),
    overwrite: bool = typer.Option(False, help="--out holds an earlier grid: delete it first and start over."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Folds trained at a time in worker processes, each "
                             "with threads/jobs torch threads: small bags train fastest with one process per core."),
    tune: bool = typer.Option(False, "--tune", help="Tune every model x patch embedding inside the cross-validation "
                              "(nested CV with Optuna, the same --trials budget each); see `medmoe mil tune`."),
    trials: int = typer.Option(20, "--trials", min=1, help="With --tune: Optuna trials per outer fold and variant."),
    inner_k: int = typer.Option(3, "--inner-k", min=3, help="With --tune: inner folds of each outer training set."),
    space: Path = typer.Option(None, "--space", help="With --tune: search-space YAML (default: docs/tuning.md)."),
    storage: str = typer.Option(None, "--storage", help="With --tune: Optuna storage URL (default: SQLite files in "
                                "--out)."),
    study_name: str = typer.Option(None, "--study-name", help="With --tune: prefix of the Optuna study names."),
    search_only: bool = typer.Option(False, "--search-only", help="With --tune: only add trials (helper processes "
                                     "sharing --storage); train nothing."),
) -> None:
    """Grid of models x patch embeddings x datasets -> markdown table of mean ± std and a bar plot
    (with --tune: every variant tuned by nested cross-validation with the same budget)."""
    try:
        task, cols = resolve_task(task, label_cols)
        the_task = get_task(task)
        metric = metric or the_task.summary_metrics[0]  # auroc; c_index for survival
        folders = {}
        if features is not None:
            name, ds = load_dataset(None, features, labels, patient_mode, task=task, time_col=time_col,
                                    event_col=event_col, label_cols=cols)
            folders[name] = ds
        elif not the_task.uses_class_labels:
            raise ValueError(f"--task {task} compares on a feature folder: give --features and --labels")
        if not datasets:
            datasets = [] if features is not None else ["musk1", "ucsb_breast"]
        if not the_task.uses_class_labels and datasets:
            raise ValueError(f"--task {task} needs a feature folder; the benchmarks {datasets} have one class label "
                             "per bag")
        if tune and jobs > 1:
            raise ValueError("--jobs does not apply to --tune (trials run one after another); to search in "
                             "parallel, start helper processes with --search-only and a shared --storage "
                             "(docs/tuning.md)")
        if tune:
            _run_compare_tuned(models, datasets, patch_embeds, folders, out, metric, k=k, seeds=seeds, trials=trials, inner_k=inner_k, space=space,
                               storage=storage, study_name=study_name, search_only=search_only,
                               overrides=parse_overrides(set_), moe_args=parse_overrides(moe, "--moe"),
                               resume=resume, overwrite=overwrite,
                               cfg=_train_config(epochs=epochs, lr=lr, min_epochs=min(epochs, 5),
                                                 standardize_features=True, progress=False, task=task,
                                                 metrics_level=metrics_level, max_instances=max_instances))
            return
        run_compare(models, datasets, patch_embeds, k, seeds, epochs, out,
                    metric, parse_overrides(set_),
                    moe_args=parse_overrides(moe, "--moe"), lr=lr, resume=resume, overwrite=overwrite, jobs=jobs,
                    folders=folders, task=task,
                    metrics_level=metrics_level, max_instances=max_instances)
    except (ValueError, RuntimeError) as err:
        fail(err)


def _run_compare_tuned(models: list[str], datasets: list[str], patch_embeds: list[str], folders: dict[str, Any],
                       out: Path, metric: str, *, space: Path | None, overrides: dict[str, Any],
                       moe_args: dict[str, Any], search_only: bool, **kwargs: Any) -> None:
    """``compare --tune``: :func:`~medmoe.engine.mil.tuning.compare_tuned`, then the table and the bar plot."""
    from ..engine.mil.search_space import load_space
    from ..engine.mil.tuning import compare_tuned
    from ..viz.comparison import plot_comparison

    the_space = load_space(space)  # a bad --space fails before any data is loaded
    loaded = dict(load_dataset(d, None, None) for d in datasets)
    loaded.update(folders)
    result = compare_tuned(models, loaded, patch_embeds, out_dir=out, model_overrides=overrides,
                           patch_embed_args={"mammoth": moe_args} if moe_args else None, space=the_space,
                           search_only=search_only, **kwargs)
    if search_only:
        typer.echo(f"trials added to the studies of {out}; run again without --search-only (with --resume) to "
                   "train the outer folds")
        return
    png = plot_comparison(result.rows, metric, out / "comparison.png",
                          title=f"nested CV, {kwargs['trials']} trials per outer fold: test {metric}")
    typer.echo((out / "comparison.md").read_text())
    typer.echo(f"table: {out / 'comparison.md'}\nplot:  {png}\nchosen settings: {out}/<dataset>/<model>/"
               "<patch_embed>/best_params.csv")


SPACE_HELP = ("Search-space YAML ({name: {type: float|int|categorical, low, high, log, choices, target: "
              "train|model|mammoth}}); default: lr, weight_decay, epochs, patience, dropout and Mammoth's "
              "num_experts and num_slots (docs/tuning.md).")


@app.command("tune")
def tune_cmd(
    config: Path = typer.Option(None, "--config", is_eager=True, callback=_load_config_file, help=CONFIG_HELP),
    model: str = typer.Option("abmil.base_mammoth", "--model", "-m", help="Registry name, e.g. abmil.base_mammoth."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    features: Path = typer.Option(None, help="Folder of TRIDENT/CLAM .h5 (or .pt) feature files."),
    labels: Path = typer.Option(None, help="Labels CSV: slide_id, label[, case_id]."),
    patient_mode: str = typer.Option("separate", help="Several slides per case: 'separate' bags or 'concat'."),
    task: str = typer.Option("classification", help="classification | survival | multilabel (--features only)."),
    label_cols: str = typer.Option(None, help="Multilabel CSVs: the 0/1 label columns, comma-separated."),
    time_col: str = typer.Option(None, help=SURVIVAL_HELP),
    event_col: str = typer.Option("event", help="Survival CSVs: the event column (or 'censorship')."),
    k: int = typer.Option(5, min=3, help="Outer folds (the same folds as `mil train` with the same --k and --seed)."),
    inner_k: int = typer.Option(3, "--inner-k", min=3, help="Inner folds of each outer training set (inner train, "
                                "validation for early stopping, test for the score)."),
    seeds: list[int] = typer.Option([0], "--seed", help="Repeat for several seeds (repeat the option)."),
    trials: int = typer.Option(20, "--trials", min=1, help="Optuna trials per outer fold (complete or pruned)."),
    space: Path = typer.Option(None, "--space", help=SPACE_HELP),
    metric: str = typer.Option("auto", "--metric", help="Inner score maximised: auto (the early-stopping metric: "
                               "auroc for two classes, kappa for more, c_index for survival) | auroc | "
                               "balanced_accuracy | ... | loss (minimised)."),
    pruner: str = typer.Option("median", "--pruner", help="median (stop trials that trail after an inner fold) | "
                               "none."),
    storage: str = typer.Option(None, "--storage", help="Optuna storage URL (default: sqlite:///OUT/optuna.db); a "
                                "shared database (postgresql://..., mysql://...) lets several processes or "
                                "machines add trials at once."),
    study_name: str = typer.Option(None, "--study-name", help="Prefix of the Optuna study names (default: the model "
                                   "and a fingerprint of the run, the same for the same command everywhere)."),
    search_only: bool = typer.Option(False, "--search-only", help="Only add trials to the studies (helper "
                                     "processes); train no outer fold. Then run once without it, with --resume."),
    timeout: float = typer.Option(None, "--timeout", min=1.0, help="Stop each outer fold's search after this many "
                                  "seconds."),
    epochs: int = typer.Option(20, min=1, help="Epochs when the space does not search them."),
    lr: float = typer.Option(1e-4, help="Learning rate when the space does not search it."),
    weight_decay: float = typer.Option(1e-5, help="Weight decay when the space does not search it."),
    patience: int = typer.Option(5, min=1, help="Early-stopping patience when the space does not search it."),
    batch_size: int = typer.Option(1, min=1),
    standardize: bool = typer.Option(True, help="z-score features with train-fold statistics."),
    class_weights: str = typer.Option("none", help="none | balanced"),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(Path("runs/tune"), help="Output folder (a new or empty folder, unless --resume or "
                             "--overwrite)."),
    resume: bool = typer.Option(False, help="Continue the run in --out: trials in the storage are kept, the budget "
                                "is filled up, finished outer folds are re-evaluated."),
    overwrite: bool = typer.Option(False, help="--out holds an earlier run: delete it first and start over (an "
                                   "external --storage keeps its studies: give another --study-name)."),
    accelerator: str = typer.Option("auto"),
) -> None:
    """Nested cross-validation with Optuna: for each outer fold, search settings on inner folds of its
    training data only (TPE sampler, median pruning), train the best once, test once on the outer fold.
    Writes summary.md, best_params.csv/.json, each study's trials.csv and plots (docs/tuning.md)."""
    from ..engine.mil.search_space import load_space
    from ..engine.mil.tuning import run_nested_cv

    try:
        the_space = load_space(space)
        task, cols = resolve_task(task, label_cols)
        _name, ds = load_dataset(dataset, features, labels, patient_mode, task=task,
                                 time_col=time_col, event_col=event_col, label_cols=cols)
        cfg = _train_config(epochs=epochs, lr=lr, weight_decay=weight_decay, patience=patience,
                            batch_size=batch_size, min_epochs=min(epochs, 10), standardize_features=standardize,
                            class_weights=class_weights, accelerator=accelerator, task=task, progress=False)
        result = run_nested_cv(model, ds, k=k, inner_k=inner_k, seeds=seeds, trials=trials, cfg=cfg,
                               space=the_space, out_dir=out, model_overrides=parse_overrides(set_), metric=metric,
                               storage=storage, study_name=study_name, pruner=pruner, search_only=search_only,
                               timeout=timeout, resume=resume, overwrite=overwrite)
    except (ValueError, RuntimeError) as err:
        fail(err)
    if search_only:
        typer.echo(result.chosen_markdown())
        typer.echo(f"trials added to the studies of {out}; run again without --search-only (with --resume) to "
                   "train the outer folds")
        return
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"results: {out} (chosen settings: {out / 'best_params.csv'}; plots: {out / 'studies'})")


@app.command("summarize")
def summarize_cmd(
    run_dir: Path = typer.Argument(..., help="The --out folder of `medmoe mil compare` (finished or not)."),
    datasets: list[str] = typer.Option(None, "--dataset", "-d", help="Only these datasets, in this order."),
    models: list[str] = typer.Option(None, "--model", "-m", help="Only these models, in this order."),
    metric: list[str] = typer.Option(None, "--metric", help="Table columns; the first is drawn in the plot "
                                     "(default: auroc, balanced_accuracy, f1; c_index for survival runs; "
                                     "auroc, f1, subset_accuracy for multi-label runs, also auroc_<label>)."),
    min_runs: int = typer.Option(1, min=1, help="Leave out variants with fewer finished folds."),
    out: Path = typer.Option(None, help="Write <out>.md and <out>.png (default: RUN_DIR/summary_table)."),
    paired: bool = typer.Option(True, help="Also pair the folds of --variant and --baseline per dataset and "
                                "model: mean difference, 95% CI and corrected resampled t-test, per metric."),
    baseline: str = typer.Option("linear", help="Patch embedding subtracted in the paired tables."),
    variant: str = typer.Option("mammoth", help="Patch embedding compared with --baseline."),
) -> None:
    """Table (mean ± std over the finished folds, with their count) and bar plot of a compare folder.

    Reads every seed*/fold*/fold_result.json under RUN_DIR/<dataset>/<model>/<patch_embed>; trains
    nothing, so it can report a long grid while it is still running. The paired tables compare two patch
    embeddings fold by fold (same splits), with the Nadeau-Bengio corrected t-test for repeated k-fold CV.
    """
    from ..engine import collect_comparison, paired_comparison
    from ..engine.mil.paired_comparison import paired_markdown
    from ..viz.comparison import plot_comparison

    try:
        result = collect_comparison(run_dir, datasets=datasets or None, models=models or None, min_runs=min_runs)
    except ValueError as err:
        fail(err)
    if not metric:
        metric = (["c_index"] if "c_index" in result.metrics
                  else ["auroc", "f1", "subset_accuracy"] if "subset_accuracy" in result.metrics
                  else ["auroc", "balanced_accuracy", "f1"])
    # a multi-label folder also has auroc_<label> per label
    available = list(dict.fromkeys([*result.metrics, *(m for r in result.rows for m in r["summary"])]))
    unknown = [m for m in metric if m not in available]
    if unknown:
        fail(ValueError(f"unknown metric(s) {unknown}; choose from {available}"))
    table = result.to_markdown(metric, show_runs=True)
    if paired:
        for name in metric:
            try:
                pairs = paired_comparison(run_dir, name, baseline=baseline, variant=variant,
                                          datasets=datasets or None, models=models or None)
            except ValueError as err:
                fail(err)
            if pairs:
                table += "\n" + paired_markdown(pairs)
    stem = out if out is not None else run_dir / "summary_table"
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text(table)
    png = plot_comparison(result.rows, metric[0], Path(f"{stem}.png"), title=f"test {metric[0]} (finished folds)")
    typer.echo(table)
    typer.echo(f"table: {stem}.md\nplot:  {png}")


# Registered here so the command lives under `medmoe mil`; its module imports this one's helpers lazily.
from .heatmap import heatmap as _heatmap

app.command("heatmap")(_heatmap)


@app.command("convert")
def convert_cmd(
    source: Path = typer.Argument(..., help="Weights to convert: a MIL-Lab / MAMMOTH-fork / FEATHER state dict "
                                  "(.safetensors, .bin, .pth or a Hugging Face folder), a CLAM-repository "
                                  "checkpoint, a bare Mammoth layer, or a medmoe checkpoint."),
    model: str = typer.Option(None, "--model", "-m", help="medmoe model name, e.g. abmil.base_mammoth.uni "
                              "(optional for a Hugging Face folder whose config.json names it)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the medmoe checkpoint (model.safetensors + "
                             "config.json)."),
    num_classes: int = typer.Option(None, "--num-classes", help="Classes (default: the checkpoint's head)."),
    in_dim: int = typer.Option(None, "--in-dim", help="Feature size (default: the encoder in --model)."),
    class_names: str = typer.Option(None, "--class-names", help="Comma-separated class names, in the order of "
                                    "the head's outputs (default: 0, 1, ...)."),
    reinit_head: bool = typer.Option(False, "--reinit-head", help="Do not load the checkpoint's classification "
                                     "head; start from a fresh one (fine-tuning on other classes)."),
    patch_embed_only: bool = typer.Option(False, "--patch-embed-only", help="Load only the patch embedding "
                                          "(a Mammoth layer inside another code base's checkpoint)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a checkpoint already in --out."),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Convert a reference checkpoint into a medmoe checkpoint folder, printing what was mapped.

    The result is what `medmoe mil train` writes: `eval`, `predict`, `heatmap` and `create_model(...,
    checkpoint_path=DIR)` take it without further options. Nothing is dropped silently: tensors the model
    does not have, or lacks, are listed in the error.
    """
    from ..engine.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_checkpoint
    from ..interop import load_model

    try:
        overrides = parse_overrides(set_)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"--num-classes must be a positive integer, got {num_classes}")
        if in_dim is not None and in_dim < 1:
            raise ValueError(f"--in-dim must be a positive integer, got {in_dim}")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a folder for the checkpoint")
        if out.is_dir() and any((out / n).exists() for n in (WEIGHTS_NAME, CONFIG_NAME)) and not overwrite:
            raise ValueError(f"--out {out} already holds a checkpoint; pass --overwrite to replace it")
        if out.resolve() == source.resolve():
            raise ValueError("--out must differ from the source checkpoint")
        net, info, report = load_model(source, model, num_classes=num_classes, in_dim=in_dim,
                                       reinit_head=reinit_head, patch_embed_only=patch_embed_only, **overrides)
        names = info.get("class_names") or [str(i) for i in range(net.config.num_classes)]
        if class_names is not None:
            names = [c.strip() for c in class_names.split(",")]
            if len(names) != net.config.num_classes or not all(names) or len(set(names)) != len(names):
                raise ValueError(f"--class-names needs {net.config.num_classes} distinct non-empty names "
                                 f"(the head's outputs), got {class_names!r}")
        reserved = {"format_version", "checkpoint_id", "model_name", "model_class", "model_config",
                    "medmoe_version", "source", "load_report", "class_names"}
        keep = {k: v for k, v in info.items() if k not in reserved}  # a medmoe source's task, stats, ...
        save_checkpoint(out, net, {**keep, "class_names": names, "converted_from": str(source),
                                   "conversion_report": report.summary()})
    except (ValueError, RuntimeError, OSError) as err:
        fail(err)
    typer.echo(report.summary())
    typer.echo(f"checkpoint: {out} ({net.model_name}, {net.config.num_classes} classes: {', '.join(names)})")
