"""Write the MOSAIC golden fixtures from a local checkout of the reference code (shixingm3-oss/mosaic-medical @ 912df1e).

Usage (from the medmoe repository root)::

    python tests/parity/golden/make_mosaic_fixtures.py /path/to/mosaic-medical [--out tests/parity/golden/mosaic]

What it builds, with fixed seeds, from the reference's own classes (``model/unified_model.py``:
``UnifiedModel``, ``TeacherModel``; ``engine/trainer.py``: ``create_optimizer``; nothing is stubbed or patched,
the reference runs on CPU as released):

* The whole ``UnifiedModel`` at a small size (:data:`SMALL`): the frozen ViT is shrunk to width 48, depth 2,
  4 heads (MLP ratio 4), 2-D inputs 32^2 with 16^2 patches (4 tokens), 3-D inputs 16^3 with 8^3 patches
  (8 tokens); the specialist bottlenecks keep the paper's 64 / 96 / 192 and the adapter scale 0.1; 18 heads
  in the reference's ``ALL_DATASETS`` order (so the loader must find the head order itself). Every parameter
  is perturbed with seeded noise (std 0.05; the up-projections of the adapters, zero at initialisation, too),
  so the adapters and LayerNorms all take part.
* ``mosaic_best_model.pth``: ``{"round", "student_state_dict", "teacher_state_dict", "best_acc"}`` as the
  reference's ``Trainer.save_checkpoint`` writes ``best_model.pth`` (no optimizer state: it is not needed).
  The teacher is ``TeacherModel(student)`` with its adapter and head tensors moved by further noise.
* ``mosaic_io.safetensors``: for each case (``path`` = specialist A, RGB; ``oct`` = B, grayscale as RGB;
  ``chest`` = B, multi-label; ``organ3d`` = C, 3-D): ``<case>_x`` (inputs in [0, 1], what medmoe takes),
  ``<case>_feat`` and ``<case>_logits`` (the reference student on ImageNet-normalised 2-D inputs, as its
  data transform feeds it; 3-D inputs in [0, 1] as its ``Normalize3D``), ``<case>_teacher_feat``.
  One training step on the ``path`` batch (``step_xs`` student view, ``step_xt`` teacher view, ``step_y``):
  ``step_loss``, ``step_loss_cls``, ``step_loss_con`` (``Trainer.train_one_epoch``'s loss: CE + 0.1 x MSE of
  the cls features, student vs teacher), then backward, ``clip_grad_norm_(1.0)``, the reference's AdamW
  (lr 1e-3 to make the step visible, weight decay 0.01) and the expert-aware EMA (momentum 0.9, expert A);
  ``step_after_logits`` (student) and ``step_after_teacher_feat`` on ``step_xt``.
* ``mosaic_config.json``: the sizes above.

The script runs with the reference's ``freeze_backbone()`` applied (adapters and heads train; the 2-D and 3-D
tokenizers, cls token, position embeddings and the ViT are frozen), as ``main.py --freeze_backbone``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SMALL = {
    "embed_dim": 48, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0, "img_size_2d": 32, "patch_size_2d": 16,
    "img_size_3d": 16, "patch_size_3d": 8, "adapter_bottleneck_a": 64, "adapter_bottleneck_b": 96,
    "adapter_bottleneck_c": 192, "adapter_scalar": 0.1,
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# case -> (reference dataset name, expert, 2 or 3 dims)
CASES = {
    "path": ("PathMNIST", "A", 2),
    "oct": ("OCTMNIST", "B", 2),
    "chest": ("ChestMNIST", "B", 2),
    "organ3d": ("OrganMNIST3D", "C", 3),
}
STEP = {"lr": 1e-3, "weight_decay": 0.01, "consist_weight": 0.1, "max_grad_norm": 1.0, "ema": 0.9}


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    return (x - mean) / std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path, help="checkout of shixingm3-oss/mosaic-medical")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "mosaic")
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference.resolve()))
    from config.datasets import ALL_DATASETS, get_num_classes_list  # type: ignore[import-not-found]
    from engine.trainer import create_optimizer  # type: ignore[import-not-found]
    from model.unified_model import TeacherModel, UnifiedModel  # type: ignore[import-not-found]

    torch.manual_seed(0)
    student = UnifiedModel(get_num_classes_list(ALL_DATASETS), in_chans_2d=3, in_chans_3d=1, **SMALL)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    student.freeze_backbone()
    teacher = TeacherModel(student)
    with torch.no_grad():
        for name, p in teacher.model.named_parameters():
            if "expert" in name or "heads" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    student.eval()
    teacher.eval()

    io: dict[str, torch.Tensor] = {}
    for case, (name, expert, dims) in CASES.items():
        shape = (3, 3, SMALL["img_size_2d"], SMALL["img_size_2d"]) if dims == 2 else (3, 1, *(SMALL["img_size_3d"],) * 3)
        x = torch.rand(shape, generator=gen)
        if case == "oct":  # grayscale, fed as RGB (as_rgb=True) by the reference's loader
            x = x[:, :1].expand(-1, 3, -1, -1).contiguous()
        ref_in = _normalise(x) if dims == 2 else x
        tid = ALL_DATASETS.index(name)
        with torch.no_grad():
            feat, logits = student(ref_in, task_id=tid, expert_id=expert)
            tfeat = teacher(ref_in, task_id=tid, return_features=True, expert_id=expert)
        io[f"{case}_x"], io[f"{case}_feat"], io[f"{case}_logits"] = x, feat, logits
        io[f"{case}_teacher_feat"] = tfeat

    checkpoint = _snapshot(student, teacher)  # the weights the training step starts from

    # one training step, as Trainer.train_one_epoch (PathMNIST: task 0, expert A)
    xs = torch.rand(4, 3, SMALL["img_size_2d"], SMALL["img_size_2d"], generator=gen)
    xt = torch.rand(4, 3, SMALL["img_size_2d"], SMALL["img_size_2d"], generator=gen)
    y = torch.randint(0, 9, (4,), generator=gen)
    optimizer = create_optimizer(student, lr=STEP["lr"], weight_decay=STEP["weight_decay"])
    student.train()
    feat_s, logits_s = student(_normalise(xs), task_id=0, expert_id="A")
    with torch.no_grad():
        feat_t = teacher(_normalise(xt), task_id=0, return_features=True, expert_id="A")
    loss_cls = F.cross_entropy(logits_s, y)
    loss_con = F.mse_loss(feat_s, feat_t.detach())
    loss = loss_cls + STEP["consist_weight"] * loss_con
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), STEP["max_grad_norm"])
    optimizer.step()
    teacher.ema_update(student, momentum=STEP["ema"], expert_id="A")
    student.eval()
    with torch.no_grad():
        _, after_logits = student(_normalise(xt), task_id=0, expert_id="A")
        after_tfeat = teacher(_normalise(xt), task_id=0, return_features=True, expert_id="A")
    io.update(step_xs=xs, step_xt=xt, step_y=y, step_loss=loss.detach(), step_loss_cls=loss_cls.detach(),
              step_loss_con=loss_con.detach(), step_after_logits=after_logits, step_after_teacher_feat=after_tfeat)

    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    torch.save(checkpoint, args.out / "mosaic_best_model.pth")

    save_file({k: v.contiguous() for k, v in io.items()}, str(args.out / "mosaic_io.safetensors"))
    (args.out / "mosaic_config.json").write_text(json.dumps(
        {"reference": "shixingm3-oss/mosaic-medical@912df1e", "reference_kwargs": SMALL,
         "datasets": ALL_DATASETS, "cases": CASES, "step": STEP}, indent=1) + "\n")
    print(f"wrote {args.out}")


def _snapshot(student: torch.nn.Module, teacher: torch.nn.Module) -> dict:
    return {"round": 3, "best_acc": 0.5, "student_state_dict": copy.deepcopy(student.state_dict()),
            "teacher_state_dict": copy.deepcopy(teacher.model.state_dict())}


if __name__ == "__main__":
    main()
