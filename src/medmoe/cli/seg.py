"""3-D segmentation: train, infer (sliding window, NIfTI in the original space), resample, demo."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from .common import fail, parse_overrides

app = typer.Typer(help=__doc__, no_args_is_help=True)

DATA_HELP = "An MSD/nnU-Net folder (imagesTr, labelsTr[, dataset.json]) or a .csv/.json list of image/label pairs."
SAMPLE_HELP = "A real sample fetched on first use instead of --data: nuclei (microscopy) or mni152 (brain MRI)."
SET_HELP = "Model override KEY=VALUE (YAML value), repeatable, e.g. --set depths=[1,1,1,1]."


def _source(data: Path | None, dataset: str | None) -> Path:
    """The data path ``--data`` or ``--dataset`` names (a sample is fetched on first use)."""
    from ..data.seg_samples import fetch_seg_sample

    if (data is None) == (dataset is None):
        raise typer.BadParameter("give either --data PATH or --dataset NAME")
    return fetch_seg_sample(dataset) if dataset else data  # type: ignore[return-value]


@app.command("models")
def models() -> None:
    """List the segmentation networks."""
    from ..registry import list_models

    for name in list_models(family="seg"):
        typer.echo(name)


@app.command("train")
def train(
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help=SAMPLE_HELP),
    preset: str = typer.Option("mamba-home-paper", help="Protocol every unset flag comes from: mamba-home-paper (the "
                               "default: the authors' model and protocol, sized for a GPU) | medmoe-cpu (small and "
                               "CPU-friendly); docs/segmentation-presets.md."),
    model: str | None = typer.Option(None, "--model", "-m", help="mamba_home.tiny|paper, unet[.small], "
                                     "segresnet[.small], swinunetr (default: the preset's)."),
    num_classes: int | None = typer.Option(None, min=2, help="Classes incl. background (default: dataset.json)."),
    modality: str | None = typer.Option(None, help="ct | mri | other (default: the preset's, else dataset.json, "
                                        "else mri)."),
    ct_window: tuple[float, float] | None = typer.Option(None, help="CT window in HU (CT only; default -175 250)."),
    spacing: tuple[float, float, float] | None = typer.Option(None, help="Resample to this voxel size."),
    roi: tuple[int, int, int] | None = typer.Option(None, help="Crop / sliding-window size, 3 ints (96^3; paper 128^3)."),
    samples: int | None = typer.Option(None, min=1, help="Crops per volume per step (2; paper 1)."),
    mri_stats: str | None = typer.Option(None, help="MRI statistics: foreground (each volume's, default) | dataset "
                                         "(the training volumes') | volume (background included)."),
    augmentation: str | None = typer.Option(None, help="medmoe | reference | none."),
    crop_foreground: bool | None = typer.Option(None, "--crop-foreground/--no-crop-foreground",
                                                help="Crop to the non-zero box (paper: yes)."),
    val_fraction: float = typer.Option(0.2, min=0.0, max=0.9, help="Fraction of cases held out for validation."),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (10; paper 800)."),
    steps_per_epoch: int | None = typer.Option(None, min=1, help="Steps per epoch (50; paper: one pass over the cases)."),
    batch_size: int | None = typer.Option(None, min=1, help="Volumes per step (1; paper 2)."),
    lr: float | None = typer.Option(None, help="AdamW learning rate (1e-4)."),
    weight_decay: float | None = typer.Option(None, help="AdamW weight decay (1e-4)."),
    eps: float | None = typer.Option(None, help="AdamW eps (1e-4, as the reference)."),
    warmup_steps: int | None = typer.Option(None, min=0),
    precision: str | None = typer.Option(None, help="32-true (default) | bf16-mixed | 16-mixed."),
    val_every: int | None = typer.Option(None, min=0, help="Validate every N epochs (0: never, keep the last)."),
    overlap: float | None = typer.Option(None, min=0.0, max=0.95, help="Validation sliding-window overlap "
                                         "(0.5; paper 0.25)."),
    blend: str | None = typer.Option(None, help="Validation window blending: gaussian (default) | constant (paper)."),
    dice_average: str | None = typer.Option(None, help="classes-over-cases (default) | cases-over-classes (paper)."),
    seed: int = typer.Option(0),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(Path("runs/seg"), help="Run folder (checkpoint/, metrics.csv); a new or empty folder "
                             "unless --resume or --overwrite."),
    resume: bool = typer.Option(False, help="Continue the interrupted run in --out (same model, data and settings: "
                                "checked against its manifest.json before anything is written)."),
    overwrite: bool = typer.Option(False, help="--out holds an earlier run: delete it first and start over."),
    accelerator: str = typer.Option("auto"),
    devices: int = typer.Option(1, min=1, help="Devices per machine (DDP when devices x --num-nodes > 1)."),
    num_nodes: int = typer.Option(1, min=1, help="Machines under torchrun or SLURM (docs/scaling.md)."),
) -> None:
    """Train a segmentation network; keeps the best validation-Dice checkpoint in OUT/checkpoint."""
    from ..data.seg_transforms import AUGMENTATIONS, MRI_STATS
    from ..data.volumes import load_volume_cases
    from ..engine.seg.inference import SLIDING_WINDOW_MODES
    from ..engine.seg.presets import list_seg_presets
    from ..engine.seg.setup import prepare_seg_training
    from ..engine.seg.training import DICE_AVERAGES, train_segmentation

    try:
        _check_choices({"--preset": (preset.lower().replace("_", "-"), list_seg_presets()),
                        "--augmentation": (augmentation, AUGMENTATIONS), "--mri-stats": (mri_stats, MRI_STATS),
                        "--blend": (blend, SLIDING_WINDOW_MODES), "--dice-average": (dice_average, DICE_AVERAGES)})
        setup = prepare_seg_training(
            load_volume_cases(_source(data, dataset)), preset=preset, model=model, num_classes=num_classes,
            val_fraction=val_fraction, seed=seed,
            transform_overrides={"modality": modality, "ct_window": ct_window, "spacing": spacing, "roi_size": roi,
                                 "num_samples": samples, "mri_stats": mri_stats, "augmentation": augmentation,
                                 "crop_foreground": crop_foreground},
            train_overrides={"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size, "lr": lr,
                             "weight_decay": weight_decay, "eps": eps, "warmup_steps": warmup_steps,
                             "precision": precision, "val_every": val_every, "sw_overlap": overlap, "sw_mode": blend,
                             "dice_average": dice_average, "accelerator": accelerator, "devices": devices,
                             "num_nodes": num_nodes},
            echo=typer.echo,
        )
        tcfg, cfg = setup.transform_config, setup.train_config
        if modality is None and tcfg.modality != setup.data_modality:
            typer.echo(f"note: preset {setup.preset.name} uses modality {tcfg.modality} (the data says "
                       f"{setup.data_modality}); pass --modality to change it")
        net = setup.create_model(**parse_overrides(set_))
        typer.echo(f"preset {setup.preset.name}: {cfg.epochs} epochs x {cfg.steps_per_epoch} steps, batch "
                   f"{cfg.batch_size} x {tcfg.num_samples} crop(s) of {tcfg.roi_size}, augmentation {tcfg.augmentation}"
                   + (" (the authors' protocol; --preset medmoe-cpu for small CPU-friendly settings)"
                      if setup.preset.name == "mamba-home-paper" else ""))
        typer.echo(f"{setup.model_name}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
                   f"{len(setup.train_cases)} training / {len(setup.val_cases)} validation cases, modality "
                   f"{tcfg.modality}")
        result = train_segmentation(net, setup.train_cases, setup.val_cases, tcfg, cfg, out,
                                    class_names=setup.class_names, resume=resume, overwrite=overwrite)
    except (ValueError, RuntimeError) as err:
        fail(err)
    if result.val is not None:
        typer.echo(f"best epoch {result.best_epoch}: mean Dice {result.val.mean_dice:.4f}, "
                   f"HD95 {result.val.mean_hd95:.2f}; per class {json.dumps(_round(result.val.dice))}")
    typer.echo(f"checkpoint: {result.checkpoint_dir}\nmetrics:    {out / 'metrics.csv'}")


def _check_choices(flags: dict[str, tuple[str | None, Any]]) -> None:
    """``ValueError`` naming the flag when a given value is not one of its choices (``None``: not given)."""
    for flag, (value, choices) in flags.items():
        if value is not None and str(value) not in {str(c) for c in choices}:
            raise ValueError(f"{flag} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if not math.isnan(v) else v for k, v in d.items()}


@app.command("infer")
def infer(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder (or the run folder holding checkpoint/), or a "
                                      "checkpoint file of the reference Mamba-HoME code (.pth / .safetensors)."),
    source: Path = typer.Argument(..., help="A NIfTI file, a folder of them, an MSD folder (imagesTs) or a list."),
    out: Path = typer.Option(Path("predictions"), help="Output folder for <case>_seg.nii.gz."),
    overlap: float | None = typer.Option(None, min=0.0, max=0.95, help="Sliding-window overlap (default: the "
                                         "checkpoint's preset: 0.5)."),
    mode: str | None = typer.Option(None, help="Window blending: gaussian | constant (default: the preset's: "
                                    "gaussian for medmoe-cpu, constant for mamba-home-paper)."),
    sw_batch_size: int | None = typer.Option(None, min=1),
    roi: tuple[int, int, int] | None = typer.Option(None, help="Window size (default: the preset's; medmoe-cpu: "
                                                    "the training ROI, mamba-home-paper: 192 192 48)."),
    group_sizes: tuple[int, int, int, int] | None = typer.Option(
        None, help="Reference Mamba-HoME checkpoints only: the 4 token group sizes it was trained with "
        "(default the paper's 2048 1024 512 256)."),
    probabilities: bool = typer.Option(False, help="Also write <case>_prob.nii.gz (softmax, channels last)."),
    device: str = typer.Option("auto", help="cpu | cuda | auto."),
) -> None:
    """Sliding-window segmentation; label maps are written in each input's original voxel space."""
    from ..engine.seg.inference import SLIDING_WINDOW_MODES
    from ..engine.seg.predict import segment_files

    try:
        _check_choices({"--mode": (mode, SLIDING_WINDOW_MODES)})
        if group_sizes is not None and not checkpoint.is_file():
            raise typer.BadParameter("--group-sizes applies to reference checkpoint files only")
        paths = segment_files(checkpoint, source, out, overlap=overlap, mode=mode, sw_batch_size=sw_batch_size,
                              roi=roi, group_sizes=group_sizes, save_probabilities=probabilities, device=device,
                              echo=typer.echo)
    except (ValueError, RuntimeError) as err:
        fail(err)
    typer.echo(f"wrote {len(paths)} segmentation(s) to {out}")


@app.command("resample")
def resample(
    source: Path | None = typer.Argument(None, help="An MSD folder (imagesTr/labelsTr[/imagesTs])."),
    spacing: tuple[float, float, float] = typer.Option(..., help="Target voxel size x y z."),
    out: Path = typer.Option(..., help="Output folder (gets imagesTr/, labelsTr/, imagesTs/ like the source)."),
    images: Path | None = typer.Option(None, help="Instead of SOURCE: a folder of images ..."),
    labels: Path | None = typer.Option(None, help="... and a folder of labels."),
    orientation: str = typer.Option("RAS", help="Axis codes of the output (RAS, like training); 'none' keeps it."),
) -> None:
    """Resample images (bilinear) and labels (nearest) to a spacing; each goes to its own folder."""
    from ..data.seg_transforms import resample_dataset

    try:
        if source is not None and (images or labels):
            raise typer.BadParameter("give SOURCE or --images/--labels, not both")
        if source is None and images is None and labels is None:
            raise typer.BadParameter("give SOURCE or --images and/or --labels")
        resample_dataset(spacing, out, source=source, images=images, labels=labels,
                         orientation=None if orientation.lower() == "none" else orientation, echo=typer.echo)
    except (ValueError, RuntimeError) as err:
        fail(err)


@app.command("demo")
def demo(
    dataset: str = typer.Option("nuclei", help="nuclei (3-D microscopy, binary) or mni152 (brain MRI, GM/WM)."),
    out: Path = typer.Option(Path("runs/seg_demo"), help="Output folder (results.md, demo.png, runs)."),
    steps: int = typer.Option(120, min=5, help="Training steps per model (same budget for every model)."),
    quick: bool = typer.Option(False, help="About 30 s: 32^3 ROI and a fifth of the steps."),
    model: list[str] = typer.Option(["mamba_home.tiny", "unet.small"], "--model", "-m",
                                    help="Models to compare (repeat)."),
    lr: float = typer.Option(1e-3, help="Learning rate (short CPU budget: higher than the paper's 1e-4)."),
    seed: int = typer.Option(0),
    mri_stats: str = typer.Option("foreground", help="MRI intensity statistics (mni152): foreground (each volume's) "
                                  "| dataset (the training part's) | volume."),
) -> None:
    """Tiny Mamba-HoME vs a MONAI baseline on a real volume, same step budget, Dice on a held-out region."""
    from ..engine.seg.demo import run_seg_demo

    try:
        _check_choices({"--mri-stats": (mri_stats, ("foreground", "dataset", "volume"))})
        run_seg_demo(dataset, out, steps, quick, tuple(model), lr, seed, mri_stats, echo=typer.echo)
    except (ValueError, RuntimeError) as err:
        fail(err)
