"""MOSAIC on MedMNIST: list the datasets, train the mixture-of-specialists ViT, evaluate a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import fail

app = typer.Typer(help=__doc__, no_args_is_help=True)

SYNTHETIC_NOTE = "SYNTHETIC data written by write_fake_medmnist (not MedMNIST images): numbers mean nothing clinically"
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
    from ..data.medmnist import MEDMNIST_FLAGS, medmnist_filename, medmnist_info
    from ..nn.adapters import ROUTING_TABLES

    table = ROUTING_TABLES["mosaic"]
    header = "| dataset | task | classes | ch | train / val / test | licence | specialist |"
    if data is not None:
        header += " file |"
    typer.echo(header)
    typer.echo("|---" * (header.count("|") - 1) + "|")
    for flag in MEDMNIST_FLAGS:
        i = medmnist_info(flag)
        n = i.n_samples
        spec = table.route(flag)
        row = (f"| {flag} | {i.task} | {i.num_classes} | {i.n_channels} | {n['train']:,} / {n['val']:,} / "
               f"{n['test']:,} | {i.license} | {spec} (r={table.specialists[spec].bottleneck}) |")
        if data is not None:
            s = min(size, 64) if i.spatial_dims == 3 else size
            name = medmnist_filename(flag, s)
            row += f" {name} {'present' if (data / name).is_file() else 'MISSING'} |"
        typer.echo(row)


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
    from ..data.medmnist import (
        MedMNISTFileError,
        order_medmnist_flags,
        resolve_medmnist_flags,
        write_fake_medmnist,
    )
    from ..engine.mosaic.presets import get_mosaic_preset
    from ..engine.mosaic.report import format_metrics_table, format_parameter_report, parameter_report
    from ..engine.mosaic.training import (
        AUGMENTATIONS,
        EARLY_STOPPING,
        SAMPLERS,
        SELECTION_METRICS,
        MosaicTrainConfig,
        build_mosaic_config,
        load_medmnist_data,
        train_mosaic,
    )
    from ..engine.runs import check_run_folder
    from ..models.vit import MosaicModel, VisionTransformerConfig, ViTWeightsError

    demo_data = ("synthetic_data",) if demo else ()
    try:
        try:
            chosen = get_mosaic_preset(preset or ("medmoe-cpu" if demo else "mosaic-paper"))
        except ValueError as err:
            raise typer.BadParameter(f"--preset: {err}") from err
        size = chosen.size if size is None else size
        try:
            flags = order_medmnist_flags(resolve_medmnist_flags(datasets), dataset_order or chosen.dataset_order)
        except ValueError as err:
            raise typer.BadParameter(f"--datasets / --dataset-order: {err}") from err
        note = ""
        if data is None and not demo:
            raise typer.BadParameter("give --data DIR with the MedMNIST .npz files (or --demo for synthetic data)")
        if weights is None:
            raise typer.BadParameter(
                "give --weights PATH (ViT-B/16 ImageNet weights: JAX ViT-B_16.npz or timm .safetensors/.pth) "
                "or --weights none for a random backbone"
            )
        if str(weights).lower() != "none" and not Path(weights).is_file():
            from ..models.vit.weights import WEIGHTS_HELP as VIT_WEIGHTS_HELP

            raise ValueError(f"ViT weight file {weights!r} does not exist. {VIT_WEIGHTS_HELP}")
        if vit not in ("base", "tiny"):
            raise typer.BadParameter(f"--vit must be base or tiny, got {vit!r}")
        vit_cfg = (VisionTransformerConfig.base_patch16 if vit == "base" else VisionTransformerConfig.tiny_test)(
            norm_eps=chosen.norm_eps)
        model_kwargs = {**chosen.model, "routing": routing, "image_size_2d": image_size_2d, "normalize_2d": normalize,
                        "patch_norm_2d": tokenizer_norm}
        if train_tokenizer_3d is not None:
            model_kwargs["train_tokenizer_3d"] = train_tokenizer_3d
        if no_adapter:
            model_kwargs["use_adapters"] = False
        model_cfg = build_mosaic_config(flags, size, vit=vit_cfg, **model_kwargs)
        given = {"rounds": rounds, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                 "warmup_rounds": warmup_rounds, "sampler": sampler, "patience": patience,
                 "early_stopping": early_stopping, "selection_metric": selection_metric,
                 "consistency_weight": consistency, "seed": seed, "precision": precision}
        choices = {"--sampler": (sampler, SAMPLERS), "--early-stopping": (early_stopping, EARLY_STOPPING),
                   "--selection-metric": (selection_metric, SELECTION_METRICS),
                   "--augmentation": (augmentation, (*AUGMENTATIONS, "none"))}
        for flag, (value, allowed) in choices.items():
            if value is not None and value not in allowed:
                raise typer.BadParameter(f"{flag} must be one of {' | '.join(allowed)}, got {value!r}")
        train_kwargs = {**chosen.train, **{k: v for k, v in given.items() if v is not None}}
        if augmentation is not None:
            if augmentation == "none":
                train_kwargs["augment"] = False
            else:
                train_kwargs["augment"], train_kwargs["augmentation"] = True, augmentation
        train_cfg = MosaicTrainConfig(**train_kwargs, max_steps_per_dataset=max_steps, accelerator=accelerator)
        seed = train_cfg.seed
        if demo:  # every argument is checked first: a refused demo writes nothing
            check_run_folder(out, resume=resume, overwrite=overwrite, allow=demo_data)
            data = out / "synthetic_data"
            write_fake_medmnist(data, flags, size, n_per_split, seed=seed)
            note = SYNTHETIC_NOTE
            typer.secho(f"DEMO: {note}", fg="yellow")
        split_data = load_medmnist_data(data, flags, size)
        typer.echo(f"preset {chosen.name}, size {size}" + (
            " (the authors' protocol; --preset medmoe-cpu for small CPU-friendly settings)"
            if chosen.name == "mosaic-paper" else ""))
        typer.echo(format_parameter_report(parameter_report(MosaicModel(model_cfg, device="meta"))))
        if str(weights).lower() == "none":
            typer.secho("warning: --weights none: the frozen ViT backbone is random", fg="yellow", err=True)
        result = train_mosaic(model_cfg, train_cfg, split_data, out, weights=weights, data_note=note,
                              overwrite=overwrite, allow=demo_data, resume=resume)
    except (ValueError, RuntimeError, MedMNISTFileError, ViTWeightsError) as err:
        fail(err)
    dims = {t.name: t.spatial_dims for t in model_cfg.tasks}
    if note:
        typer.secho(note, fg="yellow")
    typer.echo(format_metrics_table(result.test_metrics, dims, title="Test (official MedMNIST metrics), student"))
    typer.echo(f"best round {result.best_round}/{result.rounds_run}; checkpoint: {result.checkpoint_dir}; "
               f"report: {out / 'report.md'}")


CHECKPOINT_HELP = ("Checkpoint folder written by 'medmoe mosaic train', or a checkpoint file of the reference MOSAIC "
                   "code (best_model.pth: read without running pickle code; a load report is printed).")
REFERENCE_DATASETS_HELP = ("Reference checkpoint files only: their datasets in head order, comma-separated (default: "
                           "args.json beside the file, else the reference's list whose class counts match the heads).")


def _is_reference_file(checkpoint: Path) -> bool:
    """A file that is not part of a medmoe checkpoint folder (model.safetensors / config.json beside each other)."""
    if not checkpoint.is_file():
        return False
    medmoe_file = checkpoint.name in ("model.safetensors", "config.json", "teacher.safetensors")
    return not (medmoe_file and (checkpoint.parent / "config.json").is_file())


def _load_mosaic(checkpoint: Path, *, teacher: bool, reference_datasets: str | None) -> tuple:
    """``(model, checkpoint info)`` from a medmoe checkpoint folder or a reference checkpoint file."""
    from ..engine.checkpoint import load_checkpoint

    if _is_reference_file(checkpoint):
        from ..interop.mosaic import load_mosaic_reference

        names = None
        if reference_datasets:
            from ..data.medmnist import resolve_medmnist_flags

            try:
                names = resolve_medmnist_flags(reference_datasets)
            except ValueError as err:
                raise typer.BadParameter(f"--reference-datasets: {err}") from err
        model, report = load_mosaic_reference(checkpoint, names, teacher=teacher)
        typer.echo(report.summary(), err=True)
        return model, {"data_note": "a checkpoint of the reference MOSAIC code"}
    if reference_datasets:
        raise typer.BadParameter("--reference-datasets applies to reference checkpoint files only, not to a medmoe "
                                 "checkpoint folder (its config names the datasets)")
    return load_checkpoint(checkpoint, teacher=teacher, family="vit")


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
    from ..engine.mosaic.report import format_metrics_table, mean_accuracies
    from ..engine.mosaic.training import evaluate_mosaic, load_medmnist_data

    try:
        model, ckpt_info = _load_mosaic(checkpoint, teacher=teacher, reference_datasets=reference_datasets)
        tasks = model.config.tasks
        sizes = {t.image_size for t in tasks if t.spatial_dims == 2} or {t.image_size for t in tasks}
        size = max(s or 28 for s in sizes)
        splits = load_medmnist_data(data, [t.name for t in tasks], size, splits=(split,))[split]
        metrics = evaluate_mosaic(model, splits, batch_size=batch_size)
    except (ValueError, MedMNISTFileError, CheckpointError) as err:
        fail(err)
    dims = {t.name: t.spatial_dims for t in tasks}
    note = ckpt_info.get("data_note") or ""
    if note:
        typer.secho(f"checkpoint trained on: {note}", fg="yellow")
    typer.echo(format_metrics_table(metrics, dims, title=f"{split} ({'teacher' if teacher else 'student'})"))
    if json_out is not None:
        payload = {k: m.to_dict() for k, m in metrics.items()}
        payload["means"] = mean_accuracies(metrics, dims)  # type: ignore[assignment]
        json_out.write_text(json.dumps(payload, indent=2).replace("NaN", "null"))


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
    import csv

    from ..engine.checkpoint import CheckpointError
    from ..engine.mosaic.predict import predict_images

    try:
        model, _ = _load_mosaic(checkpoint, teacher=teacher, reference_datasets=reference_datasets)
        rows = predict_images(model, dataset, inputs, batch_size=batch_size, device=device)
    except (ValueError, CheckpointError) as err:
        fail(err)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    typer.echo(f"wrote {len(rows)} predictions to {out}")
