"""MOSAIC on MedMNIST: list the datasets, train the mixture-of-specialists ViT, evaluate a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import fail

app = typer.Typer(help=__doc__, no_args_is_help=True)

WEIGHTS_HELP = (
    "ViT-B/16 ImageNet weights: the JAX 'ViT-B_16.npz' or a timm .safetensors/.pth file; 'none' = random "
    "backbone (a warning is printed)."
)


@app.command("info")
def info(
    data: Path = typer.Option(None, help="Folder with MedMNIST .npz files: show which are present."),
    size: int = typer.Option(28, help="Image size to check the files for (28, 64, 128, 224)."),
) -> None:
    """The 18 MedMNIST datasets: task, classes, channels, split sizes, licence, MOSAIC specialist."""
    from ..engine.mosaic.report import medmnist_table

    typer.echo(medmnist_table(data, size))


# Over 100 lines only through its signature (one Typer option per flag); the body is parsing and printing.
@app.command("train")
def train(
    data: Path = typer.Option(None, help="Folder with the official MedMNIST .npz files."),
    datasets: str = typer.Option("all", help="all | 2d | 3d | comma-separated flags (pathmnist,organmnist3d,...)."),
    preset: str = typer.Option(None, help="Protocol every unset flag comes from: mosaic-paper (the default: the "
                               "authors' protocol, 224^2 / 64^3, sized for a GPU) | medmoe-cpu (small and CPU-friendly; "
                               "the default with --demo); docs/mosaic-presets.md."),
    size: int = typer.Option(None, help="2-D image size (28/64/128/224); 3-D datasets use min(size, 64) "
                             "(default: the preset's, 28 or 224)."),
    weights: str = typer.Option(None, help=WEIGHTS_HELP),
    vit: str = typer.Option("base", help="base (ViT-B/16) | tiny (dim 32, depth 2: tests and demos)."),
    routing: str = typer.Option("mosaic", help="mosaic (A/B/C specialists) | v1 (2-D/3-D) | shared (one adapter)."),
    image_size_2d: int = typer.Option(None, help="Resize 2-D inputs to this side first (e.g. 224)."),
    normalize: str = typer.Option("imagenet", help="2-D normalisation: imagenet | inception | none."),
    dataset_order: str = typer.Option(None, help="medmnist | reference (config/datasets.py) | given (as --datasets "
                                      "lists them): the round-robin order."),
    train_tokenizer_3d: bool = typer.Option(None, "--train-tokenizer-3d/--frozen-tokenizer-3d",
                                            help="Train the 3-D tokenizer (medmoe-cpu) or keep it random and frozen "
                                            "(mosaic-paper, the reference)."),
    tokenizer_norm: bool = typer.Option(True, "--tokenizer-norm/--no-tokenizer-norm",
                                        help="LayerNorm after the 2-D patch convolution (the reference's tokenizer)."),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="The reference's --no_adapter baseline: frozen ViT, "
                                    "heads only."),
    rounds: int = typer.Option(None, min=1),
    batch_size: int = typer.Option(None, min=1),
    lr: float = typer.Option(None),
    weight_decay: float = typer.Option(None),
    warmup_rounds: int = typer.Option(None, min=0),
    sampler: str = typer.Option(None, help="round_robin | interleaved (the reference's: whole datasets in its "
                                "interleaved order) | alternating (2-D/3-D batch by batch) | balanced."),
    max_steps: int = typer.Option(None, help="Cap on batches per dataset and round (quick runs)."),
    patience: int = typer.Option(None, min=1),
    early_stopping: str = typer.Option(None, help="medmoe (only gains > min_delta count) | reference (any gain "
                                       "saves, a round within min_delta resets patience)."),
    selection_metric: str = typer.Option(None, help="acc (official MedMNIST ACC) | acc_pm1 (the reference's mean: "
                                         "RetinaMNIST within +-1)."),
    augmentation: str = typer.Option(None, help="2-D student view: medmoe (rotate before normalising, bilinear, "
                                     "black corners) | reference (nearest, mean-colour corners) | none."),
    consistency: float = typer.Option(None, help="Weight of the student/teacher feature MSE."),
    seed: int = typer.Option(None),
    accelerator: str = typer.Option("auto"),
    precision: str = typer.Option(None, help="auto (bf16 on CUDA) | 32-true (fp32, the reference) | bf16-mixed ..."),
    out: Path = typer.Option(Path("runs/mosaic"), help="Run folder (a new or empty folder unless --resume or "
                             "--overwrite)."),
    resume: bool = typer.Option(False, help="Continue the interrupted run in --out (same model, data and settings: "
                                "checked against its manifest.json before anything is written)."),
    overwrite: bool = typer.Option(False, help="--out holds an earlier run: delete it first and start over."),
    demo: bool = typer.Option(False, help="Write SYNTHETIC fixtures for the datasets into OUT/synthetic_data and train on them."),
    n_per_split: int = typer.Option(48, help="--demo: samples per split."),
) -> None:
    """Train MOSAIC (frozen ViT + specialist adapters + per-dataset heads) on MedMNIST datasets."""
    from ..data.medmnist import MedMNISTFileError
    from ..engine.mosaic.report import format_metrics_table, format_parameter_report
    from ..engine.mosaic.setup import (
        DEMO_DATA_DIR,
        SYNTHETIC_NOTE,
        prepare_mosaic_training,
        write_mosaic_demo_data,
    )
    from ..engine.mosaic.training import load_medmnist_data, train_mosaic
    from ..models.vit import ViTWeightsError

    demo_data = (DEMO_DATA_DIR,) if demo else ()
    try:
        chosen, flags = _check_train_flags(preset, demo, datasets, dataset_order, data, weights, vit,
                                           {"--sampler": sampler, "--early-stopping": early_stopping,
                                            "--selection-metric": selection_metric, "--augmentation": augmentation})
        note = ""
        setup = prepare_mosaic_training(
            chosen, flags, size=size, vit=vit,
            model_overrides={"routing": routing, "image_size_2d": image_size_2d, "normalize_2d": normalize,
                             "patch_norm_2d": tokenizer_norm, "train_tokenizer_3d": train_tokenizer_3d,
                             "use_adapters": False if no_adapter else None},
            train_overrides={"rounds": rounds, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                             "warmup_rounds": warmup_rounds, "sampler": sampler, "patience": patience,
                             "early_stopping": early_stopping, "selection_metric": selection_metric,
                             "consistency_weight": consistency, "seed": seed, "precision": precision},
            augmentation=augmentation, max_steps_per_dataset=max_steps, accelerator=accelerator,
        )
        model_cfg = setup.model_config
        if demo:  # every argument is checked first: a refused demo writes nothing
            data = write_mosaic_demo_data(out, setup.flags, setup.size, n_per_split, seed=setup.train_config.seed,
                                          overwrite=overwrite, resume=resume)
            note = SYNTHETIC_NOTE
            typer.secho(f"DEMO: {note}", fg="yellow")
        split_data = load_medmnist_data(data, setup.flags, setup.size)
        typer.echo(f"preset {chosen.name}, size {setup.size}" + (
            " (the authors' protocol; --preset medmoe-cpu for small CPU-friendly settings)"
            if chosen.name == "mosaic-paper" else ""))
        typer.echo(format_parameter_report(setup.parameter_report()))
        if str(weights).lower() == "none":
            typer.secho("warning: --weights none: the frozen ViT backbone is random", fg="yellow", err=True)
        result = train_mosaic(model_cfg, setup.train_config, split_data, out, weights=weights, data_note=note,
                              overwrite=overwrite, allow=demo_data, resume=resume)
    except (ValueError, RuntimeError, MedMNISTFileError, ViTWeightsError) as err:
        fail(err)
    dims = {t.name: t.spatial_dims for t in model_cfg.tasks}
    if note:
        typer.secho(note, fg="yellow")
    typer.echo(format_metrics_table(result.test_metrics, dims, title="Test (official MedMNIST metrics), student"))
    typer.echo(f"best round {result.best_round}/{result.rounds_run}; checkpoint: {result.checkpoint_dir}; "
               f"report: {out / 'report.md'}")


def _check_train_flags(preset: str | None, demo: bool, datasets: str, dataset_order: str | None, data: Path | None,
                       weights: str | None, vit: str, choices: dict[str, str | None]) -> tuple[Any, list[str]]:
    """``(preset, ordered dataset flags)`` once every ``mosaic train`` flag that can be checked before any work
    is valid; ``typer.BadParameter`` naming the flag otherwise (a missing weight file: ``ValueError``)."""
    from ..data.medmnist import order_medmnist_flags, resolve_medmnist_flags
    from ..engine.mosaic.presets import get_mosaic_preset
    from ..engine.mosaic.setup import VIT_SIZES, check_vit_weights
    from ..engine.mosaic.training import AUGMENTATIONS, EARLY_STOPPING, SAMPLERS, SELECTION_METRICS

    try:
        chosen = get_mosaic_preset(preset or ("medmoe-cpu" if demo else "mosaic-paper"))
    except ValueError as err:
        raise typer.BadParameter(f"--preset: {err}") from err
    try:
        flags = order_medmnist_flags(resolve_medmnist_flags(datasets), dataset_order or chosen.dataset_order)
    except ValueError as err:
        raise typer.BadParameter(f"--datasets / --dataset-order: {err}") from err
    if data is None and not demo:
        raise typer.BadParameter("give --data DIR with the MedMNIST .npz files (or --demo for synthetic data)")
    if weights is None:
        raise typer.BadParameter(
            "give --weights PATH (ViT-B/16 ImageNet weights: JAX ViT-B_16.npz or timm .safetensors/.pth) "
            "or --weights none for a random backbone"
        )
    check_vit_weights(weights)
    if vit not in VIT_SIZES:
        raise typer.BadParameter(f"--vit must be base or tiny, got {vit!r}")
    allowed_values = {"--sampler": SAMPLERS, "--early-stopping": EARLY_STOPPING,
                      "--selection-metric": SELECTION_METRICS, "--augmentation": (*AUGMENTATIONS, "none")}
    for flag, value in choices.items():
        allowed = allowed_values[flag]
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{flag} must be one of {' | '.join(allowed)}, got {value!r}")
    return chosen, flags


CHECKPOINT_HELP = ("Checkpoint folder written by 'medmoe mosaic train', or a checkpoint file of the reference MOSAIC "
                   "code (best_model.pth: read without running pickle code; a load report is printed).")
REFERENCE_DATASETS_HELP = ("Reference checkpoint files only: their datasets in head order, comma-separated (default: "
                           "args.json beside the file, else the reference's list whose class counts match the heads).")


def _reference_datasets(checkpoint: Path, reference_datasets: str | None) -> list[str] | None:
    """``--reference-datasets`` as a list of MedMNIST flags (``None`` when not given); refused with a medmoe
    checkpoint folder, whose config names the datasets."""
    from ..data.medmnist import resolve_medmnist_flags
    from ..engine.mosaic.evaluation import is_mosaic_reference_file

    if not reference_datasets:
        return None
    if not is_mosaic_reference_file(checkpoint):
        raise typer.BadParameter("--reference-datasets applies to reference checkpoint files only, not to a medmoe "
                                 "checkpoint folder (its config names the datasets)")
    try:
        return resolve_medmnist_flags(reference_datasets)
    except ValueError as err:
        raise typer.BadParameter(f"--reference-datasets: {err}") from err


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help=CHECKPOINT_HELP),
    data: Path = typer.Option(..., help="Folder with the MedMNIST .npz files."),
    split: str = typer.Option("test", help="train | val | test."),
    teacher: bool = typer.Option(False, help="Evaluate the EMA teacher instead of the student."),
    batch_size: int = typer.Option(64, min=1),
    json_out: Path = typer.Option(None, "--json", help="Also write the metrics as JSON."),
    reference_datasets: str = typer.Option(None, help=REFERENCE_DATASETS_HELP),
) -> None:
    """Official MedMNIST ACC/AUC of a MOSAIC checkpoint on every dataset it has a head for."""
    from ..data.medmnist import MedMNISTFileError
    from ..engine.checkpoint import CheckpointError
    from ..engine.mosaic.evaluation import evaluate_mosaic_files, load_mosaic_model, metrics_json
    from ..engine.mosaic.report import format_metrics_table

    try:
        model, ckpt_info = load_mosaic_model(checkpoint, teacher=teacher,
                                             datasets=_reference_datasets(checkpoint, reference_datasets),
                                             echo=_echo_err)
        metrics = evaluate_mosaic_files(model, data, split, batch_size=batch_size)
    except (ValueError, MedMNISTFileError, CheckpointError) as err:
        fail(err)
    dims = {t.name: t.spatial_dims for t in model.config.tasks}
    note = ckpt_info.get("data_note") or ""
    if note:
        typer.secho(f"checkpoint trained on: {note}", fg="yellow")
    typer.echo(format_metrics_table(metrics, dims, title=f"{split} ({'teacher' if teacher else 'student'})"))
    if json_out is not None:
        json_out.write_text(metrics_json(metrics, dims))


@app.command("predict")
def predict(
    checkpoint: Path = typer.Argument(..., help=CHECKPOINT_HELP),
    inputs: list[Path] = typer.Argument(..., help="Image files (2-D: PNG, JPEG, TIFF, BMP; 3-D: .npy volumes) "
                                        "or folders of them."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="The MedMNIST dataset whose head to use, e.g. "
                                "pathmnist (the images are prepared as its arrays: channels, size)."),
    out: Path = typer.Option(Path("mosaic_predictions.csv"), help="Output CSV, one row per file."),
    teacher: bool = typer.Option(False, help="Use the EMA teacher instead of the student."),
    batch_size: int = typer.Option(32, min=1),
    device: str = typer.Option("cpu"),
    reference_datasets: str = typer.Option(None, help=REFERENCE_DATASETS_HELP),
) -> None:
    """Predict the classes of your own images with one dataset's head of a MOSAIC checkpoint."""
    from ..engine.checkpoint import CheckpointError
    from ..engine.mosaic.evaluation import load_mosaic_model
    from ..engine.mosaic.predict import predict_images, write_predictions_csv

    try:
        model, _ = load_mosaic_model(checkpoint, teacher=teacher,
                                     datasets=_reference_datasets(checkpoint, reference_datasets), echo=_echo_err)
        rows = predict_images(model, dataset, inputs, batch_size=batch_size, device=device)
    except (ValueError, CheckpointError) as err:
        fail(err)
    write_predictions_csv(rows, out)
    typer.echo(f"wrote {len(rows)} predictions to {out}")
