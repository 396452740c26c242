"""The segmentation demo (``medmoe seg demo``): networks against the intensity floor on a real volume.

:func:`run_seg_demo` cuts one real volume (:mod:`medmoe.data.seg_samples`) into a training part (the first
75 % along one axis) and a held-out part, trains each network for the same number of steps on the first,
scores it on the second and adds the nearest-class-mean intensity baseline as the floor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "HELD_OUT_START",
    "SEG_DEMO_DATASETS",
    "baseline_row",
    "demo_transform_config",
    "format_demo_table",
    "run_seg_demo",
    "split_along_axis",
    "train_demo_model",
]

#: Where the held-out part of a demo volume starts along its axis (the first 75 % trains).
HELD_OUT_START = 0.75

#: The demo's volumes: ``name -> {modality, spacing, roi, quick_roi, axis}`` (``axis``: the one cut 75 / 25).
SEG_DEMO_DATASETS: dict[str, dict[str, Any]] = {
    "nuclei": {
        "modality": "other",
        "spacing": None,
        "roi": (64, 64, 32),
        "quick_roi": (32, 32, 32),
        "axis": 0,
    },
    "mni152": {
        "modality": "mri",
        "spacing": (2.0, 2.0, 2.0),
        "roi": (64, 64, 64),
        "quick_roi": (32, 32, 32),
        "axis": 2,
    },
}


def run_seg_demo(
    dataset: str = "nuclei",
    out: str | Path = Path("runs/seg_demo"),
    steps: int = 120,
    quick: bool = False,
    models_: Sequence[str] = ("mamba_home.tiny", "unet.small"),
    lr: float = 1e-3,
    seed: int = 0,
    mri_stats: str = "foreground",
    echo: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train each model for the same number of steps on the first 75 % of a real volume (along one axis)
    and report Dice/HD95 on the held-out last 25 % (Gaussian sliding window, overlap 0.25), with a last
    row for the nearest-class-mean intensity baseline fitted on the same training part (the floor: a
    network below it has learnt nothing useful). Writes ``results.md``, ``results.json`` and ``demo.png``
    into ``out`` (each model's run in ``out/<model>``, replaced by a second demo).

    Args:
        dataset: a key of :data:`SEG_DEMO_DATASETS` (``nuclei``: 3-D microscopy, binary; ``mni152``: brain MRI,
            background / grey / white matter).
        out: the demo's folder.
        steps: training steps per model (one crop batch of 2 each).
        quick: a 32^3 ROI, a fifth of the steps (at least 5) and the CPU.
        models_: segmentation model names to compare.
        lr: learning rate of every model.
        seed: seeds the weights and the training.
        mri_stats: MRI intensity statistics (``foreground`` | ``dataset`` | ``volume``).
        echo: called with each progress line, each result row (JSON), the markdown table and the figure path.

    Returns:
        One dict per model and one for the baseline: ``model``, ``params_M``, ``steps``, ``train_s``, ``eval_s``,
        ``mean_dice``, ``mean_hd95`` and ``dice_<class>``.

    Raises:
        ValueError: an unknown ``dataset``.
    """
    from ...data.seg_samples import fetch_seg_sample
    from ...data.volumes import load_volume_cases, validate_case
    from ...errors import SETTING, InputError
    from ...viz.segmentation import plot_segmentation_slices

    say = echo or (lambda _line: None)
    if dataset not in SEG_DEMO_DATASETS:
        raise InputError(f"{{dataset}} must be one of {sorted(SEG_DEMO_DATASETS)}", dataset=SETTING)
    spec = SEG_DEMO_DATASETS[dataset]
    info = load_volume_cases(fetch_seg_sample(dataset))
    case = info.cases[0]
    shape = validate_case(case).shape
    axis = spec["axis"]
    out = Path(out)
    train_case, test_case = split_along_axis(case, axis, out / "data", dataset)
    cut = int(shape[axis] * HELD_OUT_START)
    k = int(info.num_classes or 2)
    names = [info.label_names.get(i, str(i)) for i in range(k)]
    roi = spec["quick_roi"] if quick else spec["roi"]
    steps = max(5, steps // 5) if quick else steps
    tcfg = demo_transform_config(dataset, train_case, roi, mri_stats)
    say(
        f"demo on {dataset}: volume {shape}, train {(0, cut)} / test {(cut, shape[axis])} along axis "
        f"{axis}; ROI {roi}, {steps} steps x 2 crops per model, lr {lr}"
    )
    rows: list[dict[str, Any]] = []
    preds: dict[str, Path] = {}
    for name in models_:
        row, preds[name] = _train_and_score(name, k, train_case, test_case, tcfg, roi, names, steps, lr, seed,
                                            quick, out)
        rows.append(row)
        say(json.dumps(row))
    rows.append(baseline_row(train_case, test_case, tcfg, k, roi, names))
    say(json.dumps(rows[-1]))
    table = format_demo_table(rows, dataset, steps, roi)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    png = plot_segmentation_slices(test_case, preds, out / "demo.png", names)
    say(table)
    say(f"figure: {png}")
    return rows


def _train_and_score(
    name: str, k: int, train_case: Any, test_case: Any, tcfg: Any, roi: Sequence[int], names: list[str],
    steps: int, lr: float, seed: int, quick: bool, out: Path,
) -> tuple[dict[str, Any], Path]:
    """Train one demo model on the training part, score it on the test part and write its prediction:
    ``(its result row, the prediction file)``."""
    from .inference import predict_volumes
    from .training import evaluate_segmentation

    t0 = time.perf_counter()
    net, result = train_demo_model(name, k, train_case, tcfg, steps, lr, seed, out / name, names,
                                   accelerator="cpu" if quick else "auto")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluate_segmentation(net.eval(), [test_case], tcfg, roi, 0.25, "gaussian", 2, True, names)
    eval_s = time.perf_counter() - t0
    pred = predict_volumes(
        net, [test_case], out / name / "pred", tcfg, roi, 0.25, "gaussian", 2, progress=False
    )[0]
    row = {
        "model": name,
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "steps": result.steps,
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "mean_dice": round(ev.mean_dice, 4),
        "mean_hd95": round(ev.mean_hd95, 2),
        **{f"dice_{c}": round(v, 4) for c, v in ev.dice.items()},
    }
    return row, pred


def split_along_axis(case: Any, axis: int, folder: Path, name: str) -> tuple[Any, Any]:
    """``(training part, held-out part)`` of a volume case: its first :data:`HELD_OUT_START` along ``axis`` and
    the rest, written under ``folder/train`` and ``folder/test`` as ``<name>_train`` / ``<name>_test``."""
    from ...data.volumes import crop_case, validate_case

    shape = validate_case(case).shape
    if axis not in range(len(shape)):
        raise ValueError(f"axis must be one of {list(range(len(shape)))} for a volume of shape {shape}, got {axis!r}")
    cut = int(shape[axis] * HELD_OUT_START)
    train_box, test_box = [(0, s) for s in shape], [(0, s) for s in shape]
    train_box[axis], test_box[axis] = (0, cut), (cut, shape[axis])
    return (crop_case(case, train_box, folder / "train", f"{name}_train"),
            crop_case(case, test_box, folder / "test", f"{name}_test"))


def demo_transform_config(dataset: str, train_case: Any, roi: Sequence[int], mri_stats: str) -> Any:
    """The demo's transforms for a :data:`SEG_DEMO_DATASETS` volume: its modality and spacing, ``roi`` crops (2 per
    step, positive:negative 2:1), MRI statistics ``mri_stats`` (``dataset``: fitted on ``train_case``)."""
    from ...data.seg_transforms import SegTransformConfig, with_dataset_stats

    if dataset not in SEG_DEMO_DATASETS:
        raise ValueError(f"dataset must be one of {sorted(SEG_DEMO_DATASETS)}, got {dataset!r}")
    spec = SEG_DEMO_DATASETS[dataset]
    tcfg = SegTransformConfig(modality=spec["modality"], spacing=spec["spacing"], roi_size=tuple(roi), num_samples=2,
                              pos=2.0, neg=1.0, mri_stats=mri_stats)
    return with_dataset_stats(tcfg, [train_case])


def train_demo_model(
    name: str, num_classes: int, train_case: Any, tcfg: Any, steps: int, lr: float, seed: int, out: Path,
    class_names: Sequence[str], accelerator: str = "auto",
) -> tuple[Any, Any]:
    """``(network, training result)``: segmentation model ``name`` (seeded with ``seed``) trained as the demo
    trains it: ``steps`` steps of one crop batch on ``train_case``, AdamW ``lr`` with a tenth of the steps of
    warm-up, no validation, into ``out`` (replaced if it holds an earlier run)."""
    import torch

    from ...registry import create_model
    from .training import SegTrainConfig, train_segmentation

    torch.manual_seed(seed)
    net = create_model(name, num_classes, family="seg", in_channels=1)
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=steps, lr=lr, warmup_steps=max(1, steps // 10), val_every=0,
                         seed=seed, accelerator=accelerator)
    result = train_segmentation(net, [train_case], [], tcfg, cfg, out, class_names=list(class_names),
                                overwrite=True)
    return net, result


def baseline_row(
    train_case: Any,
    test_case: Any,
    transform_config: Any,
    num_classes: int,
    roi: Sequence[int],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The nearest-class-mean intensity floor (:func:`~medmoe.engine.seg.baseline.fit_nearest_class_mean`),
    fitted on ``train_case`` and scored on ``test_case`` like the demo's networks; a row of
    :func:`run_seg_demo`'s table."""
    from .baseline import fit_nearest_class_mean
    from .training import evaluate_segmentation

    names = list(class_names)
    t0 = time.perf_counter()
    base = fit_nearest_class_mean([train_case], transform_config, num_classes)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluate_segmentation(base, [test_case], transform_config, roi, 0.25, "gaussian", 2, True, names)
    return {
        "model": "baseline: nearest class mean",
        "params_M": round(base.means.numel() / 1e6, 6),
        "steps": 0,
        "train_s": round(fit_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
        "mean_dice": round(ev.mean_dice, 4),
        "mean_hd95": round(ev.mean_hd95, 2),
        **{f"dice_{c}": round(v, 4) for c, v in ev.dice.items()},
    }


def format_demo_table(rows: Sequence[dict[str, Any]], dataset: str, steps: int, roi: Sequence[int]) -> str:
    """The demo's markdown table (``results.md``): one line naming the protocol, then one row per model, the
    columns of the first row."""
    keys = list(rows[0])
    lines = [
        f"Held-out region of `{dataset}` (last 25 % along one axis), {steps} training steps each, ROI {roi}.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
