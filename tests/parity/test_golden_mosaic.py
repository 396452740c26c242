"""medmoe's MOSAIC model against golden fixtures written by the reference code (shixingm3-oss/mosaic-medical @ 912df1e).

The fixtures come from ``tests/parity/golden/make_mosaic_fixtures.py`` (the reference's ``UnifiedModel`` at a
small size, every parameter perturbed, saved as its ``best_model.pth``). They are loaded here through
:func:`medmoe.interop.mosaic.load_mosaic_reference`, the path a user's reference checkpoint takes, and compared
on 2-D and 3-D inputs for each specialist, for the student and the EMA teacher, and over one training step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medmoe.engine.mosaic.training import ExpertAwareEMA
from medmoe.engine.optim import make_adamw
from medmoe.interop.mosaic import (
    REFERENCE_ALL,
    load_mosaic_reference,
    mosaic_key_from_reference,
    read_mosaic_reference,
)
from medmoe.interop.report import CheckpointMismatchError
from medmoe.models.vit import task_loss

GOLDEN = Path(__file__).parent / "golden" / "mosaic"
CKPT = GOLDEN / "mosaic_best_model.pth"
TOL = {"rtol": 1e-5, "atol": 1e-5}
CASE_DATASET = {"path": "pathmnist", "oct": "octmnist", "chest": "chestmnist", "organ3d": "organmnist3d"}


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(GOLDEN / "mosaic_io.safetensors"))


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((GOLDEN / "mosaic_config.json").read_text())


@pytest.fixture(scope="module")
def student(ref):  # type: ignore[no-untyped-def]
    return load_mosaic_reference(CKPT, num_heads=ref["reference_kwargs"]["num_heads"])


def test_config_and_report(student, ref) -> None:  # type: ignore[no-untyped-def]
    model, report = student
    k, c = ref["reference_kwargs"], model.config
    assert (c.vit.embed_dim, c.vit.depth, c.vit.num_heads) == (k["embed_dim"], k["depth"], k["num_heads"])
    assert (c.vit.img_size, c.vit.patch_size, c.vol_size_3d, c.patch_size_3d) == (32, 16, 16, 8)
    assert c.routing == "mosaic" and c.patch_norm_2d and not c.train_tokenizer_3d and c.use_adapters
    assert [t.name for t in c.tasks] == list(REFERENCE_ALL) == [n.lower() for n in ref["datasets"]]
    state, fmt, _ = read_mosaic_reference(CKPT)
    assert fmt == "torch" and report.loaded == len(state) == len(model.state_dict())
    assert report.renamed["encoder.blocks.1.adapter.expert_c.down_proj.weight"] == (
        "vit.blocks.1.adapter.specialists.C.down.weight")
    assert report.renamed["heads.12.bias"] == "heads.organmnist3d.bias"
    text = report.summary()
    assert "student_state_dict" in text and "ALL_DATASETS" in text and "4 attention heads (given)" in text


@pytest.mark.parametrize("case", list(CASE_DATASET))
def test_forward_matches_the_reference(student, io, case: str) -> None:  # type: ignore[no-untyped-def]
    model, _ = student
    with torch.no_grad():
        out = model(io[f"{case}_x"], CASE_DATASET[case])
    torch.testing.assert_close(out.features, io[f"{case}_feat"], **TOL)
    torch.testing.assert_close(out.logits, io[f"{case}_logits"], **TOL)


def test_grayscale_input_matches_the_reference_rgb_copy(student, io) -> None:  # type: ignore[no-untyped-def]
    model, _ = student
    with torch.no_grad():
        out = model(io["oct_x"][:, :1], "octmnist")  # medmoe repeats grayscale itself
    torch.testing.assert_close(out.logits, io["oct_logits"], **TOL)


def test_teacher_loads_and_matches(ref, io) -> None:  # type: ignore[no-untyped-def]
    teacher, report = load_mosaic_reference(CKPT, teacher=True, num_heads=ref["reference_kwargs"]["num_heads"])
    assert "teacher_state_dict" in report.summary()
    for case, flag in CASE_DATASET.items():
        with torch.no_grad():
            torch.testing.assert_close(teacher(io[f"{case}_x"], flag).features, io[f"{case}_teacher_feat"], **TOL)


def test_one_training_step_matches_the_reference(ref, io) -> None:  # type: ignore[no-untyped-def]
    """Loss (CE + 0.1 x feature MSE), clip 1.0, AdamW, expert-aware EMA: as ``Trainer.train_one_epoch``."""
    heads, step = ref["reference_kwargs"]["num_heads"], ref["step"]
    student, _ = load_mosaic_reference(CKPT, num_heads=heads)
    teacher, _ = load_mosaic_reference(CKPT, teacher=True, num_heads=heads)
    teacher.requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(
        p.numel() for n, p in student.named_parameters() if ".adapter." in n or n.startswith("heads."))
    optimizer = make_adamw(trainable, lr=step["lr"], weight_decay=step["weight_decay"])
    ema = ExpertAwareEMA(student, teacher, {"A": step["ema"], "B": step["ema"], "C": 0.95})
    student.train()
    out = student(io["step_xs"], "pathmnist")
    with torch.no_grad():
        target = teacher(io["step_xt"], "pathmnist").features
    loss_cls = task_loss(out.logits, io["step_y"], student.task("pathmnist"))
    loss_con = F.mse_loss(out.features, target)
    loss = loss_cls + step["consist_weight"] * loss_con
    torch.testing.assert_close(loss_cls.detach(), io["step_loss_cls"], **TOL)
    torch.testing.assert_close(loss_con.detach(), io["step_loss_con"], **TOL)
    torch.testing.assert_close(loss.detach(), io["step_loss"], **TOL)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, step["max_grad_norm"])
    optimizer.step()
    ema.update(student.specialist_for("pathmnist"))
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(student(io["step_xt"], "pathmnist").logits, io["step_after_logits"], **TOL)
        torch.testing.assert_close(teacher(io["step_xt"], "pathmnist").features, io["step_after_teacher_feat"], **TOL)


def test_head_order_and_strictness(ref) -> None:  # type: ignore[no-untyped-def]
    state, _, _ = read_mosaic_reference(CKPT)
    heads = ref["reference_kwargs"]["num_heads"]
    with pytest.raises(CheckpointMismatchError, match="classes"):
        load_mosaic_reference(state, datasets=list(reversed(REFERENCE_ALL)), num_heads=heads)
    with pytest.raises(CheckpointMismatchError, match="no place"):
        load_mosaic_reference({**state, "encoder.blocks.0.extra.weight": torch.zeros(1)}, num_heads=heads)
    partial = {k: v for k, v in state.items() if k != "encoder.norm.bias"}
    with pytest.raises(CheckpointMismatchError, match="missing from the file"):
        load_mosaic_reference(partial, num_heads=heads)
    few = {k: v for k, v in state.items() if not k.startswith("heads.") or int(k.split(".")[1]) < 3}
    with pytest.raises(CheckpointMismatchError, match="cannot tell which datasets"):
        load_mosaic_reference(few, num_heads=heads)
    model, _ = load_mosaic_reference(few, datasets=["pathmnist", "dermamnist", "octmnist"], num_heads=heads)
    assert sorted(model.heads) == ["dermamnist", "octmnist", "pathmnist"]
    assert mosaic_key_from_reference("encoder.blocks.0.adapter.adapter_3d.up_proj.bias") == (
        "vit.blocks.0.adapter.specialists.3d.up.bias")


def test_args_json_gives_the_head_order(tmp_path, ref) -> None:  # type: ignore[no-untyped-def]
    """The reference writes args.json next to best_model.pth; --use_interleaved changes the head order."""
    (tmp_path / "best_model.pth").write_bytes(CKPT.read_bytes())
    (tmp_path / "args.json").write_text(json.dumps({"dataset_list": None, "use_interleaved": False}))
    _, report = load_mosaic_reference(tmp_path / "best_model.pth", num_heads=ref["reference_kwargs"]["num_heads"])
    assert "args.json -> ALL_DATASETS" in report.summary()
    (tmp_path / "args.json").write_text(json.dumps({"use_interleaved": True}))
    with pytest.raises(CheckpointMismatchError, match="do not match the heads"):
        load_mosaic_reference(tmp_path / "best_model.pth", num_heads=ref["reference_kwargs"]["num_heads"])


def test_pickle_code_is_not_run(tmp_path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    torch.save({"student_state_dict": {"x": torch.zeros(1)}, "obj": Evil()}, tmp_path / "best_model.pth")
    with pytest.raises(ValueError, match="without running pickle code"):
        load_mosaic_reference(tmp_path / "best_model.pth")


def test_reference_names_round_trip(student) -> None:  # type: ignore[no-untyped-def]
    """medmoe -> reference names (used in error messages and for export) invert the loader's mapping exactly."""
    from medmoe.interop.mosaic import mosaic_key_to_reference, mosaic_state_to_reference

    state, _, _ = read_mosaic_reference(CKPT)
    names = list(REFERENCE_ALL)
    assert all(mosaic_key_to_reference(mosaic_key_from_reference(k, names), names) == k for k in state)
    exported = mosaic_state_to_reference(student[0])
    assert set(exported) == set(state) and all(torch.equal(exported[k], state[k]) for k in state)
