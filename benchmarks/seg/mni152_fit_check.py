"""Does the segmentation pipeline learn the MNI152 demo task? In-sample vs held-out Dice against the floor.

    python benchmarks/seg/mni152_fit_check.py --axis 1 --steps 120 --mri-stats dataset --out runs/mni152-check

Trains ``unet.small`` with ``medmoe seg demo``'s own functions (:mod:`medmoe.engine.seg.demo`: the first
75 % of the volume along ``--axis``, 64³ ROI at 2 mm, 2 crops per step, AdamW 1e-3; here on one thread) and
prints the Dice on the part it trained on ("train", in-sample) and on the held-out last 25 % ("test"), with
the nearest-class-mean intensity floor fitted on the training part and scored on both parts, and how many
voxels of each class each part holds. A network far above the floor in-sample but below it held out has learnt the task on its volume and
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
from medmoe.data.volumes import load_volume_cases
from medmoe.engine.seg.demo import baseline_row, demo_transform_config, split_along_axis, train_demo_model
from medmoe.engine.seg.training import evaluate_segmentation

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
    train_case, test_case = split_along_axis(case, args.axis, args.out / "data", "mni152")
    parts = {"train": train_case, "test": test_case}
    for name, part in parts.items():
        labels = np.asarray(nib.load(str(part.label)).dataobj)
        print(name, "voxels per class:", {c: int((labels == i).sum()) for i, c in enumerate(NAMES)})
    tcfg = demo_transform_config("mni152", train_case, ROI, args.mri_stats)
    net, _ = train_demo_model(args.model, 3, train_case, tcfg, args.steps, 1e-3, 0, args.out / "run", NAMES,
                              accelerator="cpu")
    for name, part in parts.items():
        ev = evaluate_segmentation(net.eval(), [part], tcfg, ROI, 0.25, "gaussian", 2, True, NAMES)
        floor = baseline_row(train_case, part, tcfg, 3, ROI, NAMES)
        print(json.dumps({"part": name, "model": args.model, "steps": args.steps, "mean_dice": round(ev.mean_dice, 3),
                          **{c: round(v, 3) for c, v in ev.dice.items()}, "floor_mean_dice": floor["mean_dice"],
                          "floor_grey_matter": floor["dice_grey_matter"],
                          "floor_white_matter": floor["dice_white_matter"]}))


if __name__ == "__main__":
    main()
