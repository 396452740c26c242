"""Multiple-instance learning: list models, train (k-fold), evaluate, predict, embed slides, compare linear vs MoE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..data.label_table import TIME_COLUMNS
from ..engine.mil.tasks import get_task
from ..engine.optim import OPTIMIZERS
from .common import config_keys, fail, parse_overrides, read_config_file, unknown_config_keys_text
from .run_configs import resolve_run_config

app = typer.Typer(help=__doc__, no_args_is_help=True)

DATASET_HELP = "A real benchmark fetched on first use: musk1, musk2, elephant, ucsb_breast, protein, birds_brown_creeper."
SET_HELP = "Model config override KEY=VALUE (YAML value), repeatable, e.g. --set embed_dim=128 --set dropout=0.1."


SURVIVAL_HELP = "Survival CSVs: follow-up time column (default: the first of " + ", ".join(TIME_COLUMNS) + ")."


def _check_source(dataset: str | None, features: Path | None, labels: Path | None) -> None:
    """``--dataset`` or ``--features`` (with ``--labels``): one of them, checked before any work."""
    if (dataset is None) == (features is None):
        raise typer.BadParameter("give either --dataset NAME or --features DIR (with --labels CSV)")
    if labels is None and features is not None:
        raise typer.BadParameter("--features needs --labels CSV (columns slide_id, label[, case_id, split])")


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
                                  "gradient, as ilse2018) | sgd (momentum 0.9, L2 weight decay, as MI-Net)."),
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
    from ..engine.mil.inputs import load_dataset, resolve_task

    try:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        task, cols = resolve_task(task, label_cols)
        _check_source(dataset, features, labels)
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
    from ..engine.mil.scoring import evaluate_checkpoint as evaluate_on

    try:
        metrics = evaluate_on(checkpoint, dataset=dataset, features=features, labels=labels, time_col=time_col,
                              event_col=event_col, metrics_level=metrics_level)
    except (ValueError, RuntimeError) as err:
        fail(err)
    typer.echo(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2))


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
    from ..engine.mil.scoring import predict_slide_files

    try:
        rows, used = predict_slide_files(checkpoint, features, out, labels, time_col=time_col, event_col=event_col)
    except (ValueError, RuntimeError) as err:
        fail(err)
    except OSError as err:
        fail(ValueError(f"cannot write --out {out}: {err.strerror or err}"))
    models = "" if used == 1 else f" (ensemble of {used} checkpoints)"
    typer.echo(f"wrote {rows} predictions to {out}{models}")


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
    from ..engine.mil.scoring import embed_slide_files

    try:
        emb = embed_slide_files(checkpoint, features, out, labels, plot=plot, method=method, batch_size=batch_size,
                                time_col=time_col, event_col=event_col)
    except (ValueError, RuntimeError) as err:
        fail(err)
    except OSError as err:
        fail(ValueError(f"cannot write --out {out}: {err.strerror or err}"))
    extra = f" and the map {plot}" if plot is not None else ""
    typer.echo(f"wrote {len(emb.bag_ids)} slide embeddings ({emb.dim}-d) to {out}{extra}")


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
    from ..engine.mil.compare_grid import compare_grid, compare_grid_tuned
    from ..engine.mil.inputs import load_dataset, resolve_task

    try:
        task, cols = resolve_task(task, label_cols)
        the_task = get_task(task)
        metric = metric or the_task.summary_metrics[0]  # auroc; c_index for survival
        folders = {}
        if features is not None:
            _check_source(None, features, labels)
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
            done = compare_grid_tuned(
                models, datasets, patch_embeds, folders, out, metric, k=k, seeds=seeds, trials=trials,
                inner_k=inner_k, space=space, storage=storage, study_name=study_name, search_only=search_only,
                overrides=parse_overrides(set_), moe_args=parse_overrides(moe, "--moe"), resume=resume,
                overwrite=overwrite, cfg=_train_config(epochs=epochs, lr=lr, min_epochs=min(epochs, 5),
                                                       standardize_features=True, progress=False, task=task,
                                                       metrics_level=metrics_level, max_instances=max_instances))
            _print_tuned_grid(done, out)
            return
        table, png = compare_grid(models, datasets, patch_embeds, k, seeds, epochs, out, metric,
                                  parse_overrides(set_), moe_args=parse_overrides(moe, "--moe"), lr=lr, resume=resume,
                                  overwrite=overwrite, jobs=jobs, folders=folders, task=task,
                                  metrics_level=metrics_level, max_instances=max_instances)
    except (ValueError, RuntimeError) as err:
        fail(err)
    typer.echo(table)
    typer.echo(f"table: {out / 'comparison.md'}\nplot:  {png}")


def _print_tuned_grid(done: tuple[str, Path] | None, out: Path) -> None:
    """What ``compare --tune`` prints: the table and where the files are, or that trials were added."""
    if done is None:
        typer.echo(f"trials added to the studies of {out}; run again without --search-only (with --resume) to "
                   "train the outer folds")
        return
    table, png = done
    typer.echo(table)
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
    from ..engine.mil.inputs import load_dataset, resolve_task
    from ..engine.mil.search_space import load_space
    from ..engine.mil.tuning import run_nested_cv

    try:
        the_space = load_space(space)
        task, cols = resolve_task(task, label_cols)
        _check_source(dataset, features, labels)
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
    from ..engine.mil.compare_grid import summarize_grid

    try:
        table, md, png = summarize_grid(run_dir, datasets=datasets or None, models=models or None,
                                        metrics=metric or None, min_runs=min_runs, out=out, paired=paired,
                                        baseline=baseline, variant=variant)
    except ValueError as err:
        fail(err)
    typer.echo(table)
    typer.echo(f"table: {md}\nplot:  {png}")


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
    from ..interop.convert import convert_checkpoint

    try:
        net, names, report = convert_checkpoint(source, out, model, num_classes=num_classes, in_dim=in_dim,
                                                 class_names=class_names, reinit_head=reinit_head,
                                                 patch_embed_only=patch_embed_only, overwrite=overwrite,
                                                 overrides=parse_overrides(set_))
    except (ValueError, RuntimeError, OSError) as err:
        fail(err)
    typer.echo(report.summary())
    typer.echo(f"checkpoint: {out} ({net.model_name}, {net.config.num_classes} classes: {', '.join(names)})")
