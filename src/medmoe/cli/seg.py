"""3-D segmentation: train, infer (sliding window, NIfTI in the original space), resample, demo."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import typer

from .common import fail, parse_overrides

app = typer.Typer(help=__doc__, no_args_is_help=True)

DATA_HELP = "An MSD/nnU-Net folder (imagesTr, labelsTr[, dataset.json]) or a .csv/.json list of image/label pairs."
SAMPLE_HELP = "A real sample fetched on first use instead of --data: nuclei (microscopy) or mni152 (brain MRI)."
SET_HELP = "Model override KEY=VALUE (YAML value), repeatable, e.g. --set depths=[1,1,1,1]."


def _load_source(data: Path | None, dataset: str | None):  # type: ignore[no-untyped-def]
    from ..data.seg_samples import fetch_seg_sample
    from ..data.volumes import load_volume_cases

    if (data is None) == (dataset is None):
        raise typer.BadParameter("give either --data PATH or --dataset NAME")
    return load_volume_cases(fetch_seg_sample(dataset) if dataset else data)


def _infer_num_classes(info, num_classes: int | None) -> int:  # type: ignore[no-untyped-def]
    if num_classes is not None:
        return num_classes
    if info.num_classes is not None:
        return int(info.num_classes)
    import nibabel as nib
    import numpy as np

    top = max(int(np.asarray(nib.load(str(c.label)).dataobj).max()) for c in info.cases)
    typer.echo(f"num_classes not given and no dataset.json labels: using max label + 1 = {top + 1}")
    return top + 1


def _split(cases: list, val_fraction: float, seed: int) -> tuple[list, list]:
    if len(cases) < 2 or val_fraction <= 0:
        return list(cases), []
    order = list(cases)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction))
    return order[n_val:], order[:n_val]


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
    devices: int = typer.Option(1, min=1),
) -> None:
    """Train a segmentation network; keeps the best validation-Dice checkpoint in OUT/checkpoint."""
    from ..data.seg_transforms import AUGMENTATIONS, MRI_STATS, modality_from_names, with_dataset_stats
    from ..engine.seg.inference import SLIDING_WINDOW_MODES
    from ..engine.seg.presets import list_seg_presets, resolve_seg_preset
    from ..engine.seg.training import DICE_AVERAGES, train_segmentation
    from ..registry import create_model

    try:
        _check_choices({"--preset": (preset.lower().replace("_", "-"), list_seg_presets()),
                        "--augmentation": (augmentation, AUGMENTATIONS), "--mri-stats": (mri_stats, MRI_STATS),
                        "--blend": (blend, SLIDING_WINDOW_MODES), "--dice-average": (dice_average, DICE_AVERAGES)})
        info = _load_source(data, dataset)
        k = _infer_num_classes(info, num_classes)
        in_channels = info.in_channels or _channels(info.cases[0])
        train_cases, val_cases = _split(info.cases, val_fraction, seed)
        chosen, tcfg, cfg = resolve_seg_preset(
            preset, len(train_cases), modality_from_names(info.modality),
            {"modality": modality, "ct_window": ct_window, "spacing": spacing, "roi_size": roi, "num_samples": samples,
             "mri_stats": mri_stats, "augmentation": augmentation, "crop_foreground": crop_foreground},
            {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size, "lr": lr,
             "weight_decay": weight_decay, "eps": eps, "warmup_steps": warmup_steps, "precision": precision,
             "val_every": val_every, "sw_overlap": overlap, "sw_mode": blend, "dice_average": dice_average,
             "seed": seed, "accelerator": accelerator, "devices": devices},
        )
        model = model or chosen.model
        tcfg = with_dataset_stats(tcfg, train_cases)  # mri_stats=dataset: statistics of the training volumes
        mod = tcfg.modality
        if modality is None and mod != modality_from_names(info.modality):
            typer.echo(f"note: preset {chosen.name} uses modality {mod} (the data says "
                       f"{modality_from_names(info.modality)}); pass --modality to change it")
        net = create_model(model, k, family="seg", in_channels=in_channels, **parse_overrides(set_))
        names = [info.label_names.get(i, str(i)) for i in range(k)]
        typer.echo(f"preset {chosen.name}: {cfg.epochs} epochs x {cfg.steps_per_epoch} steps, batch {cfg.batch_size} "
                   f"x {tcfg.num_samples} crop(s) of {tcfg.roi_size}, augmentation {tcfg.augmentation}"
                   + (" (the authors' protocol; --preset medmoe-cpu for small CPU-friendly settings)"
                      if chosen.name == "mamba-home-paper" else ""))
        typer.echo(f"{model}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
                   f"{len(train_cases)} training / {len(val_cases)} validation cases, modality {mod}")
        result = train_segmentation(net, train_cases, val_cases, tcfg, cfg, out, class_names=names, resume=resume,
                                    overwrite=overwrite)
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


def _channels(case) -> int:  # type: ignore[no-untyped-def]
    from ..data.volumes import validate_case

    return validate_case(case).channels


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if not math.isnan(v) else v for k, v in d.items()}


def _inputs(source: Path) -> list:
    """Cases to segment: an MSD folder (imagesTs, else imagesTr), a folder of NIfTI files, a file, a list."""
    from ..data.volumes import VolumeCase, _group_images, _nifti_files, load_volume_cases

    if source.is_file() and source.suffix.lower() in (".csv", ".json"):
        return load_volume_cases(source).cases
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ValueError(f"{source} does not exist")
    for sub in ("imagesTs", "imagesTr"):
        if (source / sub).is_dir():
            source = source / sub
            break
    grouped = _group_images(_nifti_files(source), set())
    if not grouped:
        raise ValueError(f"no .nii/.nii.gz images in {source}")
    return [VolumeCase(c, grouped[c]) for c in sorted(grouped)]


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
    import torch

    from ..data.seg_transforms import SegTransformConfig
    from ..engine.checkpoint import load_checkpoint
    from ..engine.seg.inference import SLIDING_WINDOW_MODES, predict_volumes
    from ..engine.seg.presets import get_seg_preset, inference_protocol
    from ..engine.seg.training import transform_config_from_info

    try:
        _check_choices({"--mode": (mode, SLIDING_WINDOW_MODES)})
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if checkpoint.is_file():  # a reference checkpoint: its keys, the paper's preprocessing and inference
            from ..interop.mamba_home import load_mamba_home_reference

            model, report = load_mamba_home_reference(checkpoint, group_sizes=group_sizes, map_location=dev)
            typer.echo(report.summary())
            paper = get_seg_preset("mamba-home-paper")
            tcfg = SegTransformConfig(**{**paper.transform, "extra": {"preset": paper.name}})
        else:
            if group_sizes is not None:
                raise typer.BadParameter("--group-sizes applies to reference checkpoint files only")
            model, info = load_checkpoint(checkpoint, map_location=dev, family="seg")
            tcfg = transform_config_from_info(info)
        protocol = inference_protocol(tcfg.extra)
        paths = predict_volumes(model, _inputs(source), out, tcfg, roi or protocol["roi"],
                                protocol["overlap"] if overlap is None else overlap, mode or protocol["mode"],
                                sw_batch_size or protocol["sw_batch_size"], save_probabilities=probabilities)
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
    from ..data.seg_transforms import resample_volume
    from ..data.volumes import _nifti_files

    jobs: list[tuple[Path, Path, bool]] = []
    try:
        if source is not None:
            if images or labels:
                raise typer.BadParameter("give SOURCE or --images/--labels, not both")
            pairs = [(source / d, out / d, d == "labelsTr") for d in ("imagesTr", "labelsTr", "imagesTs")]
            if not (source / "imagesTr").is_dir() and not (source / "imagesTs").is_dir():
                raise ValueError(f"{source} has no imagesTr/ or imagesTs/; use --images/--labels for plain folders")
        else:
            if images is None and labels is None:
                raise typer.BadParameter("give SOURCE or --images and/or --labels")
            pairs = [(d, out / name, name == "labels") for d, name in ((images, "images"), (labels, "labels")) if d]
        for src_dir, dst_dir, is_label in pairs:
            if src_dir.is_dir():
                jobs += [(p, dst_dir / p.name, is_label) for p in _nifti_files(src_dir).values()]
        if not jobs:
            raise ValueError("no NIfTI files found to resample")
        orient = None if orientation.lower() == "none" else orientation
        for i, (src, dst, is_label) in enumerate(jobs, 1):
            resample_volume(src, dst, spacing, is_label=is_label, orientation=orient)
            typer.echo(f"[{i}/{len(jobs)}] {'label' if is_label else 'image'} {src.name} -> {dst}")
        if source is not None and (source / "dataset.json").is_file():
            (out / "dataset.json").write_text((source / "dataset.json").read_text())
    except (ValueError, RuntimeError) as err:
        fail(err)


# ----------------------------------------------------------------------------------------------
# demo

#: dataset -> (modality, spacing, roi, quick roi, held-out axis, class names)
_DEMO = {
    "nuclei": {"modality": "other", "spacing": None, "roi": (64, 64, 32), "quick_roi": (32, 32, 32), "axis": 0},
    "mni152": {"modality": "mri", "spacing": (2.0, 2.0, 2.0), "roi": (64, 64, 64), "quick_roi": (32, 32, 32), "axis": 2},
}


def run_seg_demo(
    dataset: str = "nuclei",
    out: Path = Path("runs/seg_demo"),
    steps: int = 120,
    quick: bool = False,
    models_: tuple[str, ...] = ("mamba_home.tiny", "unet.small"),
    lr: float = 1e-3,
    seed: int = 0,
    mri_stats: str = "foreground",
) -> list[dict[str, Any]]:
    """Train each model for the same number of steps on the first 75 % of a real volume (along one axis)
    and report Dice/HD95 on the held-out last 25 % (Gaussian sliding window, overlap 0.25), with a last
    row for the nearest-class-mean intensity baseline fitted on the same training part (the floor: a
    network below it has learnt nothing useful). Writes ``results.md``, ``results.json`` and ``demo.png``."""
    import torch

    from ..data.seg_samples import fetch_seg_sample
    from ..data.seg_transforms import SegTransformConfig, with_dataset_stats
    from ..data.volumes import crop_case, load_volume_cases, validate_case
    from ..engine.seg.inference import predict_volumes
    from ..engine.seg.training import SegTrainConfig, evaluate_segmentation, train_segmentation
    from ..registry import create_model

    if dataset not in _DEMO:
        raise ValueError(f"--dataset must be one of {sorted(_DEMO)}")
    spec = _DEMO[dataset]
    info = load_volume_cases(fetch_seg_sample(dataset))
    case = info.cases[0]
    shape = validate_case(case).shape
    axis = spec["axis"]
    cut = int(shape[axis] * 0.75)
    train_box = [(0, s) for s in shape]
    test_box = [(0, s) for s in shape]
    train_box[axis], test_box[axis] = (0, cut), (cut, shape[axis])
    out = Path(out)
    train_case = crop_case(case, train_box, out / "data" / "train", f"{dataset}_train")
    test_case = crop_case(case, test_box, out / "data" / "test", f"{dataset}_test")
    k = int(info.num_classes or 2)
    names = [info.label_names.get(i, str(i)) for i in range(k)]
    roi = spec["quick_roi"] if quick else spec["roi"]
    steps = max(5, steps // 5) if quick else steps
    tcfg = SegTransformConfig(modality=spec["modality"], spacing=spec["spacing"], roi_size=roi, num_samples=2,
                              pos=2.0, neg=1.0, mri_stats=mri_stats)
    tcfg = with_dataset_stats(tcfg, [train_case])
    typer.echo(f"demo on {dataset}: volume {shape}, train {train_box[axis]} / test {test_box[axis]} along axis "
               f"{axis}; ROI {roi}, {steps} steps x 2 crops per model, lr {lr}")
    rows: list[dict[str, Any]] = []
    preds: dict[str, Path] = {}
    for name in models_:
        torch.manual_seed(seed)
        net = create_model(name, k, family="seg", in_channels=1)
        cfg = SegTrainConfig(epochs=1, steps_per_epoch=steps, lr=lr, warmup_steps=max(1, steps // 10), val_every=0,
                             seed=seed, accelerator="cpu" if quick else "auto")
        t0 = time.perf_counter()
        # the demo's own folder: a second demo run replaces the first
        result = train_segmentation(net, [train_case], [], tcfg, cfg, out / name, class_names=names, overwrite=True)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = evaluate_segmentation(net.eval(), [test_case], tcfg, roi, 0.25, "gaussian", 2, True, names)
        eval_s = time.perf_counter() - t0
        preds[name] = predict_volumes(net, [test_case], out / name / "pred", tcfg, roi, 0.25, "gaussian", 2,
                                      progress=False)[0]
        row = {"model": name, "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
               "steps": result.steps, "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
               "mean_dice": round(ev.mean_dice, 4), "mean_hd95": round(ev.mean_hd95, 2),
               **{f"dice_{c}": round(v, 4) for c, v in ev.dice.items()}}
        rows.append(row)
        typer.echo(json.dumps(row))
    rows.append(_baseline_row(train_case, test_case, tcfg, k, roi, names))
    typer.echo(json.dumps(rows[-1]))
    table = _markdown(rows, dataset, steps, roi)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    png = _plot(test_case, preds, out / "demo.png", names)
    typer.echo(table)
    typer.echo(f"figure: {png}")
    return rows


def _baseline_row(train_case, test_case, tcfg, k: int, roi: tuple[int, ...],  # type: ignore[no-untyped-def]
                  names: list[str]) -> dict[str, Any]:
    """The nearest-class-mean intensity floor, fitted on the training part, scored like the networks."""
    from ..engine.seg.baseline import fit_nearest_class_mean
    from ..engine.seg.training import evaluate_segmentation

    t0 = time.perf_counter()
    base = fit_nearest_class_mean([train_case], tcfg, k)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluate_segmentation(base, [test_case], tcfg, roi, 0.25, "gaussian", 2, True, names)
    return {"model": "baseline: nearest class mean", "params_M": round(base.means.numel() / 1e6, 6), "steps": 0,
            "train_s": round(fit_s, 1), "eval_s": round(time.perf_counter() - t0, 1),
            "mean_dice": round(ev.mean_dice, 4), "mean_hd95": round(ev.mean_hd95, 2),
            **{f"dice_{c}": round(v, 4) for c, v in ev.dice.items()}}


def _markdown(rows: list[dict[str, Any]], dataset: str, steps: int, roi: tuple[int, ...]) -> str:
    keys = list(rows[0])
    lines = [f"Held-out region of `{dataset}` (last 25 % along one axis), {steps} training steps each, ROI {roi}.",
             "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(case, preds: dict[str, Path], path: Path, names: list[str]) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    image = np.asarray(nib.load(str(case.images[0])).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(case.label)).dataobj)
    z = int(np.argmax((label > 0).sum(axis=(0, 1))))  # the slice with the most foreground
    panels = [("image", image[..., z], "gray"), ("ground truth", label[..., z], "viridis")]
    panels += [(name, np.asarray(nib.load(str(p)).dataobj)[..., z], "viridis") for name, p in preds.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    vmax = max(1, len(names) - 1)
    for ax, (title, arr, cmap) in zip(axes, panels):
        kwargs = {} if cmap == "gray" else {"vmin": 0, "vmax": vmax, "interpolation": "nearest"}
        ax.imshow(np.rot90(arr), cmap=cmap, **kwargs)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"held-out region, axial slice {z}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    try:
        _check_choices({"--mri-stats": (mri_stats, ("foreground", "dataset", "volume"))})
        run_seg_demo(dataset, out, steps, quick, tuple(model), lr, seed, mri_stats)
    except (ValueError, RuntimeError) as err:
        fail(err)
