"""Does the segmentation pipeline learn the MNI152 demo task? In-sample vs held-out Dice against the floor.

    python benchmarks/seg/mni152_fit_check.py --axis 1 --steps 120 --mri-stats dataset --out runs/mni152-check

Trains ``unet.small`` as ``medmoe seg demo --dataset mni152`` does (the first 75 % of the volume along
``--axis``, 64³ ROI at 2 mm, 2 crops per step, AdamW 1e-3, one thread) and prints the Dice on the part it
trained on ("train", in-sample) and on the held-out last 25 % ("test"), with the nearest-class-mean intensity
floor fitted on the training part and scored on both parts, and how many voxels of each class each part
holds. A network far above the floor in-sample but below it held out has learnt the task on its volume and
failed to generalise from one volume (docs/segmentation.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medmoe.data.seg_samples import fetch_seg_sample
from medmoe.data.seg_transforms import SegTransformConfig, with_dataset_stats
from medmoe.data.volumes import crop_case, load_volume_cases, validate_case
from medmoe.engine.seg.demo import baseline_row
from medmoe.engine.seg.training import SegTrainConfig, evaluate_segmentation, train_segmentation
from medmoe.registry import create_model

NAMES = ["background", "grey_matter", "white_matter"]
ROI = (64, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="split axis (the demo's: 2)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--mri-stats", default="foreground", choices=("foreground", "dataset", "volume"))
    parser.add_argument("--model", default="unet.small")
    parser.add_argument("--out", type=Path, default=Path("runs/mni152-check"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    case = load_volume_cases(fetch_seg_sample("mni152")).cases[0]
    shape = validate_case(case).shape
    cut = int(shape[args.axis] * 0.75)
    train_box, test_box = [(0, s) for s in shape], [(0, s) for s in shape]
    train_box[args.axis], test_box[args.axis] = (0, cut), (cut, shape[args.axis])
    parts = {"train": crop_case(case, train_box, args.out / "data" / "train", "train"),
             "test": crop_case(case, test_box, args.out / "data" / "test", "test")}
    for name, part in parts.items():
        labels = np.asarray(nib.load(str(part.label)).dataobj)
        print(name, "voxels per class:", {c: int((labels == i).sum()) for i, c in enumerate(NAMES)})
    tcfg = with_dataset_stats(SegTransformConfig(modality="mri", spacing=(2.0, 2.0, 2.0), roi_size=ROI, num_samples=2,
                                                 pos=2.0, neg=1.0, mri_stats=args.mri_stats), [parts["train"]])
    torch.manual_seed(0)
    net = create_model(args.model, 3, family="seg", in_channels=1)
    cfg = SegTrainConfig(epochs=1, steps_per_epoch=args.steps, lr=1e-3, warmup_steps=max(1, args.steps // 10),
                         val_every=0, seed=0, accelerator="cpu")
    train_segmentation(net, [parts["train"]], [], tcfg, cfg, args.out / "run", class_names=NAMES, overwrite=True)
    for name, part in parts.items():
        ev = evaluate_segmentation(net.eval(), [part], tcfg, ROI, 0.25, "gaussian", 2, True, NAMES)
        floor = baseline_row(parts["train"], part, tcfg, 3, ROI, NAMES)
        print(json.dumps({"part": name, "model": args.model, "steps": args.steps, "mean_dice": round(ev.mean_dice, 3),
                          **{c: round(v, 3) for c, v in ev.dice.items()}, "floor_mean_dice": floor["mean_dice"],
                          "floor_grey_matter": floor["dice_grey_matter"],
                          "floor_white_matter": floor["dice_white_matter"]}))


if __name__ == "__main__":
    main()
