import json

import pytest
from engine_synthetic import TINY_ABMIL, synthetic_bags

from medmoe.engine import TrainConfig, compare, read_checkpoint_info, resolve_variant, run_cross_validation

CFG = TrainConfig(epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")
TINY_MAMMOTH = {"num_experts": 2, "num_slots": 2, "num_heads": 2, "slot_dim": 8}


def test_cross_validation_folds_seeds_and_files(tmp_path):
    data = synthetic_bags(30, groups=True)
    cv = run_cross_validation(
        "abmil.base", data, k=3, seeds=[0, 1], cfg=CFG, out_dir=tmp_path, model_overrides=TINY_ABMIL
    )
    assert [(r["seed"], r["fold"]) for r in cv.runs] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert set(cv.summary) >= {"auroc", "balanced_accuracy", "kappa", "loss"}
    mean, std = cv.summary["auroc"]
    assert 0.0 <= mean <= 1.0 and std >= 0.0
    assert cv.split_hashes[0] != cv.split_hashes[1]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 6 and saved["summary"]["auroc"][0] == pytest.approx(mean)
    md = (tmp_path / "summary.md").read_text()
    assert "| auroc |" in md and "±" in md and "6 runs" in md
    for seed in (0, 1):
        assert (tmp_path / f"seed{seed}" / "splits.json").is_file()
        info = read_checkpoint_info(tmp_path / f"seed{seed}" / "fold1" / "checkpoint")
        assert info["split_hash"] == cv.split_hashes[seed] and info["seed"] == seed


def test_resolve_variant():
    assert resolve_variant("abmil", "mammoth") == ("abmil.base_mammoth", {})
    assert resolve_variant("abmil.base_mammoth.uni", "linear") == ("abmil.base", {})
    assert resolve_variant("abmil.base", "linear") == ("abmil.base", {})
    assert resolve_variant("abmil", "mammoth", {"num_experts": 4}) == (
        "abmil.base_mammoth",
        {"patch_embed_args": {"num_experts": 4}},
    )
    assert resolve_variant("ilra", "linear") == ("ilra.base", {"patch_embed": "linear"})
    assert resolve_variant("abmil", "soft_moe") == ("abmil.base", {"patch_embed": "soft_moe"})
    with pytest.raises(ValueError, match="unknown model"):
        resolve_variant("nomodel", "linear")


def test_compare_linear_vs_mammoth(tmp_path):
    datasets = {"toy": synthetic_bags(18)}
    table = compare(
        ["abmil"],
        datasets,
        ("linear", "mammoth"),
        k=3,
        seeds=[0],
        cfg=CFG.replace(epochs=1),
        out_dir=tmp_path,
        model_overrides=TINY_ABMIL,
        patch_embed_args={"mammoth": TINY_MAMMOTH},
        metrics=["auroc", "balanced_accuracy"],
    )
    assert [(r["model_name"], r["runs"]) for r in table.rows] == [
        ("abmil.base", 3),
        ("abmil.base_mammoth", 3),
    ]
    info = read_checkpoint_info(tmp_path / "toy" / "abmil" / "mammoth" / "seed0" / "fold0" / "checkpoint")
    assert info["model_config"]["patch_embed"] == "mammoth"
    assert info["model_config"]["patch_embed_args"]["num_experts"] == 2
    assert info["model_config"]["embed_dim"] == 16
    md = table.to_markdown()
    assert md.splitlines()[0] == "| dataset | model | patch_embed | auroc | balanced_accuracy |"
    assert "| toy | abmil | mammoth |" in md
    assert (tmp_path / "comparison.md").read_text() == md
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"][1]["patch_embed"] == "mammoth"


def test_empty_splits_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no splits"):
        run_cross_validation("abmil.base", synthetic_bags(12), splits=[], cfg=CFG, out_dir=tmp_path,
                             model_overrides=TINY_ABMIL)
