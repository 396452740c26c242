"""MOSAIC training: samplers, lr schedule, expert-aware EMA, augmentation, an end-to-end tiny run."""

import csv
import json

import numpy as np
import pytest
import torch

from medmoe.data import write_fake_medmnist
from medmoe.engine.checkpoint import load_checkpoint
from medmoe.engine.mosaic.training import (
    ExpertAwareEMA,
    MosaicTrainConfig,
    augment_2d,
    augment_3d,
    build_mosaic_config,
    evaluate_mosaic,
    load_medmnist_data,
    round_lr_factor,
    round_schedule,
    train_mosaic,
)
from medmoe.models.vit import MosaicModel, VisionTransformerConfig

SIZES = {"pathmnist": 100, "chestmnist": 40, "organmnist3d": 64, "nodulemnist3d": 20}
DIMS = {"pathmnist": 2, "chestmnist": 2, "organmnist3d": 3, "nodulemnist3d": 3}


def test_round_robin_is_a_full_epoch_per_dataset_in_order():
    sched = round_schedule(SIZES, DIMS, MosaicTrainConfig(batch_size=16), 0)
    names = [n for n, _ in sched]
    assert names == ["pathmnist"] * 6 + ["chestmnist"] * 2 + ["organmnist3d"] * 4 + ["nodulemnist3d"]
    path = np.concatenate([i for n, i in sched if n == "pathmnist"])
    assert len(set(path)) == 96 and path.max() < 100  # drop_last, no repeats
    assert len(sched[-1][1]) == 16  # nodule (20 samples) still gives one full batch
    again = round_schedule(SIZES, DIMS, MosaicTrainConfig(batch_size=16), 0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(sched, again))
    other = round_schedule(SIZES, DIMS, MosaicTrainConfig(batch_size=16), 1)
    assert not np.array_equal(sched[0][1], other[0][1])


def test_alternating_alternates_2d_and_3d_batch_by_batch():
    sched = round_schedule(SIZES, DIMS, MosaicTrainConfig(batch_size=16, sampler="alternating"), 0)
    kinds = [DIMS[n] for n, _ in sched]
    assert kinds[:10] == [2, 3] * 5
    assert sorted(n for n, _ in sched) == sorted(n for n, _ in round_schedule(SIZES, DIMS, MosaicTrainConfig(batch_size=16), 0))


def test_interleaved_is_the_reference_one_whole_dataset_at_a_time():
    """The reference's --use_interleaved: whole epochs in INTERLEAVED_DATASETS order (Path, Organ3D, ..., Chest, ...)."""
    sched = round_schedule(SIZES, DIMS, MosaicTrainConfig(batch_size=16, sampler="interleaved"), 0)
    names = [n for n, _ in sched]
    assert names == ["pathmnist"] * 6 + ["organmnist3d"] * 4 + ["nodulemnist3d"] + ["chestmnist"] * 2


def test_early_stopping_rules():
    from medmoe.engine.mosaic.training import early_stopping_step

    ours, ref = MosaicTrainConfig(min_delta=0.01), MosaicTrainConfig(min_delta=0.01, early_stopping="reference")
    assert early_stopping_step(0.5, None, 0, ours) == (True, 0) == early_stopping_step(0.5, None, 0, ref)
    # a small gain: the reference saves it, medmoe counts a round without improvement
    assert early_stopping_step(0.505, 0.5, 2, ref) == (True, 0)
    assert early_stopping_step(0.505, 0.5, 2, ours) == (False, 3)
    # a small drop within min_delta resets the reference's patience
    assert early_stopping_step(0.495, 0.5, 2, ref) == (False, 0)
    assert early_stopping_step(0.48, 0.5, 2, ref) == (False, 3)
    assert early_stopping_step(0.52, 0.5, 2, ours) == (True, 0)
    with pytest.raises(ValueError, match="early_stopping"):
        MosaicTrainConfig(early_stopping="keras")


def test_reference_augmentation_rotates_nearest_with_mean_colour_corners():
    from medmoe.engine.mosaic.training import augment_2d_reference

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28).round()  # binary images: nearest interpolation keeps the values binary
    y = augment_2d_reference(x, g)
    assert y.shape == (16, 3, 28, 28)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1)
    values = y.permute(1, 0, 2, 3).reshape(3, -1)
    is_pixel = (values - values.round()).abs() < 1e-6
    is_fill = (values - mean).abs() < 1e-6
    assert bool((is_pixel | is_fill).all()) and bool(is_fill.any())  # no interpolated values, mean-colour corners


def test_balanced_gives_every_dataset_the_same_steps():
    cfg = MosaicTrainConfig(batch_size=16, sampler="balanced", steps_per_dataset=5)
    sched = round_schedule(SIZES, DIMS, cfg, 0)
    counts = {n: sum(1 for m, _ in sched if m == n) for n in SIZES}
    assert counts == {n: 5 for n in SIZES}
    assert [n for n, _ in sched] != sorted([n for n, _ in sched], key=list(SIZES).index)  # mixed order
    capped = round_schedule(SIZES, DIMS, MosaicTrainConfig(batch_size=16, max_steps_per_dataset=2), 0)
    assert len(capped) == 2 + 2 + 2 + 1


def test_lr_schedule_warmup_then_cosine():
    cfg = MosaicTrainConfig(rounds=25, lr=1e-4, min_lr=1e-6, warmup_rounds=5)
    f = [round_lr_factor(r, cfg) for r in range(26)]
    assert f[0] == pytest.approx(0.01) and f[5] == pytest.approx(1.0)
    assert f[1] == pytest.approx(0.01 + 0.99 / 5)
    assert f[15] == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-6)  # half-way down the cosine (floor 0.01)
    assert f[25] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(f[5:], f[6:], strict=False))  # noqa: RUF007


def test_expert_aware_ema_skips_inactive_specialists():
    cfg = build_mosaic_config(["pathmnist", "organmnist3d"], 28, vit=VisionTransformerConfig.tiny_test())
    student = MosaicModel(cfg)
    teacher = MosaicModel(cfg)
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(1.0)
    ema = ExpertAwareEMA(student, teacher, {"A": 0.9, "B": 0.9, "C": 0.95})
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema.update("A")
    after = teacher.state_dict()
    for name, p in student.named_parameters():
        group = student.parameter_group(name)
        delta = (after[name] - before[name]).abs().max().item()
        if group in ("adapter:B", "adapter:C", "backbone"):
            assert delta == 0, name
        else:  # A adapters, heads, 3-D tokenizer: moved by (1 - 0.9) * 1
            assert delta == pytest.approx(0.1, abs=1e-5), name
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema.update("C")
    c_name = next(n for n, _ in student.named_parameters() if student.parameter_group(n) == "adapter:C")
    a_name = next(n for n, _ in student.named_parameters() if student.parameter_group(n) == "adapter:A")
    torch.testing.assert_close(teacher.state_dict()[c_name] - before[c_name],
                               0.05 * (student.state_dict()[c_name] - before[c_name]))
    assert torch.equal(teacher.state_dict()[a_name], before[a_name])


def test_augmentations_keep_shape_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 28, 28)
    y = augment_2d(x, g)
    assert y.shape == x.shape and not torch.allclose(x, y) and y.min() >= 0 and y.max() <= 1
    v = torch.rand(8, 1, 8, 8, 8)
    w = augment_3d(v, g)
    assert w.shape == v.shape and w.min() >= 0 and w.max() <= 1 and not torch.equal(v, w)


def test_identity_augmentation_when_no_flip_and_no_rotation():
    x = torch.rand(16, 1, 12, 12)
    y = augment_2d(x, torch.Generator().manual_seed(3), max_degrees=0.0)
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(16)]
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(16)]
    assert all(s or f for s, f in zip(same, flipped)) and any(same) and any(flipped)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("medmnist")
    flags = ["pathmnist", "chestmnist", "retinamnist", "nodulemnist3d"]
    write_fake_medmnist(root, flags, 28, {"train": 32, "val": 16, "test": 16}, seed=1)
    data = load_medmnist_data(root, flags, 28)
    torch.manual_seed(0)
    model_cfg = build_mosaic_config(flags, 28, vit=VisionTransformerConfig.tiny_test())
    init = MosaicModel(model_cfg).state_dict()
    train_cfg = MosaicTrainConfig(rounds=2, batch_size=16, lr=3e-4, warmup_rounds=1, progress=False,
                                  accelerator="cpu", seed=0)
    out = tmp_path_factory.mktemp("run")
    result = train_mosaic(model_cfg, train_cfg, data, out, weights="none", data_note="SYNTHETIC test data")
    return result, data, init


def test_end_to_end_outputs(run):
    result, data, _ = run
    out = result.out_dir
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert {"loss", "task_loss", "consistency", "val_acc_mean", "teacher_val_acc_mean", "val_acc_pathmnist"} <= set(rows[0])
    assert float(rows[0]["lr"]) == pytest.approx(3e-6)  # warm-up starts at 0.01 * lr
    payload = json.loads((out / "results.json").read_text())
    assert payload["data_note"] == "SYNTHETIC test data" and set(payload["test"]) == set(data["test"])
    assert payload["test"]["retinamnist"]["acc_pm1"] is not None and payload["test"]["pathmnist"]["acc_pm1"] is None
    report = (out / "report.md").read_text()
    assert "SYNTHETIC" in report and "3-D mean" in report and "ACC±1" in report
    assert (result.checkpoint_dir / "model.safetensors").is_file() and (result.checkpoint_dir / "teacher.safetensors").is_file()


def test_checkpoint_reload_reproduces_metrics_and_frozen_backbone(run):
    result, data, init = run
    model, info = load_checkpoint(result.checkpoint_dir, family="vit")
    assert info["model_name"] == "mosaic" and info["round"] == result.best_round
    again = evaluate_mosaic(model, data["test"])
    for flag, m in result.test_metrics.items():
        assert again[flag].acc == m.acc and again[flag].auc == pytest.approx(m.auc, nan_ok=True)
    state = model.state_dict()
    changed = {model.parameter_group(k) for k in init if not torch.equal(init[k], state[k])}
    assert "backbone" not in changed and {"head", "tokenizer_3d"} <= changed
    assert {"adapter:A", "adapter:B", "adapter:C"} <= changed
    teacher, _ = load_checkpoint(result.checkpoint_dir, family="vit", teacher=True)
    name = "heads.pathmnist.weight"
    assert not torch.equal(teacher.state_dict()[name], state[name])


def test_missing_split_and_dataset_mismatch(run):
    _, data, _ = run
    cfg = build_mosaic_config(["pathmnist"], 28, vit=VisionTransformerConfig.tiny_test())
    with pytest.raises(ValueError, match="needs a 'val' split"):
        train_mosaic(cfg, MosaicTrainConfig(rounds=1), {"train": data["train"]}, "/tmp/unused")
    cfg = build_mosaic_config(["bloodmnist"], 28, vit=VisionTransformerConfig.tiny_test())
    with pytest.raises(ValueError, match=r"lacks datasets \['bloodmnist'\]"):
        train_mosaic(cfg, MosaicTrainConfig(rounds=1), data, "/tmp/unused")
    with pytest.raises(ValueError, match="sampler"):
        MosaicTrainConfig(sampler="random")


def test_checkpoint_saved_before_the_tokenizer_layernorm_loads_as_built(tmp_path):
    """config.json of a checkpoint written before patch_norm_2d existed lacks it: the model loads without the
    LayerNorm, strictly, and gives the outputs it gave when saved."""
    from medmoe.engine.mosaic.training import save_mosaic_checkpoint

    cfg = build_mosaic_config(["pathmnist", "organmnist3d"], 28, vit=VisionTransformerConfig.tiny_test(),
                              patch_norm_2d=False)
    torch.manual_seed(0)
    old = MosaicModel(cfg).eval()
    folder = save_mosaic_checkpoint(tmp_path / "ckpt", old)
    config_path = folder / "config.json"
    info = json.loads(config_path.read_text())
    del info["model_config"]["patch_norm_2d"]
    config_path.write_text(json.dumps(info))
    loaded, _ = load_checkpoint(folder, family="vit")
    assert not loaded.config.patch_norm_2d and isinstance(loaded.vit.patch_embed.norm, torch.nn.Identity)
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, "pathmnist").logits, old(x, "pathmnist").logits)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def _tiny_mosaic(root):
    flags = ["pathmnist", "nodulemnist3d"]
    write_fake_medmnist(root, flags, 28, {"train": 32, "val": 16, "test": 16}, seed=2)
    data = load_medmnist_data(root, flags, 28)
    model_cfg = build_mosaic_config(flags, 28, vit=VisionTransformerConfig.tiny_test())
    train_cfg = MosaicTrainConfig(rounds=3, batch_size=16, lr=3e-4, warmup_rounds=1, progress=False,
                                  accelerator="cpu", seed=5)
    return model_cfg, train_cfg, data


def test_interrupted_run_resumed_ends_like_an_uninterrupted_one(tmp_path, monkeypatch):
    """Killed after its first round and resumed, a run gives the history, checkpoint (student and teacher) and
    test metrics of a run that was never interrupted; resuming the finished run only evaluates it again."""
    from medmoe.engine import loop

    model_cfg, train_cfg, data = _tiny_mosaic(tmp_path / "data")
    straight = train_mosaic(model_cfg, train_cfg, data, tmp_path / "straight", weights="none")

    real, calls = loop.save_trainer_state, []

    def save_then_die(path, state):
        real(path, state)
        calls.append(state["epoch"])
        if len(calls) == 1:
            raise _Killed

    monkeypatch.setattr(loop, "save_trainer_state", save_then_die)
    with pytest.raises(_Killed):
        train_mosaic(model_cfg, train_cfg, data, tmp_path / "killed", weights="none")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="already holds a mosaic run"):  # no silent restart without --resume
        train_mosaic(model_cfg, train_cfg, data, tmp_path / "killed", weights="none")
    resumed = train_mosaic(model_cfg, train_cfg, data, tmp_path / "killed", weights="none", resume=True)

    def strip(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert strip(resumed.history) == strip(straight.history) and len(resumed.history) == 3
    assert resumed.best_round == straight.best_round and resumed.stopped_early == straight.stopped_early
    for which in ("test_metrics", "val_metrics", "test_metrics_teacher"):
        a, b = getattr(straight, which), getattr(resumed, which)
        assert {f: m.to_dict() for f, m in a.items()} == {f: m.to_dict() for f, m in b.items()}, which
    for teacher in (False, True):
        ma, _ = load_checkpoint(straight.checkpoint_dir, family="vit", teacher=teacher)
        mb, _ = load_checkpoint(resumed.checkpoint_dir, family="vit", teacher=teacher)
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(va, vb), k
    rows = list(csv.DictReader((tmp_path / "killed" / "metrics.csv").read_text().splitlines()))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]

    again = train_mosaic(model_cfg, train_cfg, data, tmp_path / "killed", weights="none", resume=True)
    assert strip(again.history) == strip(straight.history) and again.best_round == straight.best_round


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    model_cfg, train_cfg, data = _tiny_mosaic(tmp_path / "data")
    one_round = MosaicTrainConfig(**{**train_cfg.__dict__, "rounds": 1})
    train_mosaic(model_cfg, one_round, data, tmp_path / "run", weights="none")
    other = MosaicTrainConfig(**{**one_round.__dict__, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"lr: 0.0003 in the folder, 0.001 now"):
        train_mosaic(model_cfg, other, data, tmp_path / "run", weights="none", resume=True)
