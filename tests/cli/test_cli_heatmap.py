"""`medmoe mil heatmap` and `medmoe report` end to end on a small synthetic slide (and the real CMU-1 crop, slow)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.data import write_trident_h5
from medmoe.data.patch_features import BUILTIN_FEATURE_DIM, extract_slide_features
from medmoe.engine import save_checkpoint
from medmoe.registry import create_model

runner = CliRunner()
MOE = {"num_experts": 4, "num_slots": 2, "num_heads": 2, "slot_dim": 16}


def _ckpt(path, in_dim=BUILTIN_FEATURE_DIM):
    torch.manual_seed(0)
    model = create_model("abmil.base_mammoth", in_dim=in_dim, num_classes=2, embed_dim=32, attn_dim=16,
                         patch_embed_args=MOE)
    return save_checkpoint(path, model, {"class_names": ["normal", "tumour"], "seed": 0})


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    import tifffile

    root = tmp_path_factory.mktemp("heatmap")
    rng = np.random.default_rng(0)
    img = np.full((384, 512, 3), 240, np.uint8)
    img[64:320, 64:448] = (190, 80, 150)
    img = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    slide = root / "slide.tif"
    tifffile.imwrite(slide, img, tile=(128, 128), photometric="rgb")
    feats = extract_slide_features(slide, root / "slide.h5", patch_size=64, tissue_threshold=0.5)
    return {"root": root, "slide": slide, "h5": feats.path, "n": len(feats.grid), "ckpt": _ckpt(root / "ckpt")}


def test_heatmap_with_slide_and_features_then_report(case, tmp_path):
    out = tmp_path / "run" / "heatmaps"
    result = runner.invoke(app, ["mil", "heatmap", str(case["ckpt"]), "--features", str(case["h5"]), "--slide",
                                 str(case["slide"]), "--out", str(out), "--max-size", "256", "--top-k", "4",
                                 "--experts", "2", "--blur", "0.5"])
    assert result.exit_code == 0, result.output
    assert f"{case['n']} patches" in result.output and "4 experts" in result.output
    summary = json.loads((out / "heatmaps.json").read_text())
    assert summary["num_patches"] == case["n"] and set(summary["probs"]) == {"normal", "tumour"}
    assert abs(sum(summary["probs"].values()) - 1) < 1e-5
    assert summary["attention_kind"] == "post-softmax"  # Mammoth slot attention carried back to patches
    assert len(summary["files"]["experts"]) == 2 and (out / "routing" / "argmax_expert.png").is_file()
    assert len(summary["files"]["topk"]) == 3  # attention + 2 experts
    assert (out / "expert_stats" / "slot_outputs_pca.png").is_file()
    assert summary["expert_stats"]["num_experts"] == 4 and summary["expert_stats"]["num_patches"] == case["n"]

    result = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "run" / "report.html").read_text()
    inlined = html.count("data:image/png;base64,") + html.count("data:image/jpeg;base64,")
    assert inlined >= 8 and "argmax_expert.png" in html


def test_heatmap_from_coordinates_only_and_from_slide_only(case, tmp_path):
    result = runner.invoke(app, ["mil", "heatmap", str(case["ckpt"]), "--features", str(case["h5"]),
                                 "--out", str(tmp_path / "a"), "--max-size", "128"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "a" / "heatmaps.json").read_text())
    assert summary["slide"] is None and summary["files"]["topk"] == []  # no slide: no patch crops
    assert (tmp_path / "a" / "attention.png").is_file()
    result = runner.invoke(app, ["mil", "heatmap", str(case["ckpt"]), "--slide", str(case["slide"]), "--out",
                                 str(tmp_path / "b"), "--patch-size", "64", "--max-size", "128", "--top-k", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "features" / "slide.h5").is_file()


def test_heatmap_bad_input(case, tmp_path):
    feats = torch.randn(5, BUILTIN_FEATURE_DIM)
    far = write_trident_h5(tmp_path / "far.h5", feats, np.array([[0, 0], [64, 0], [9000, 0], [0, 64], [64, 64]]),
                           patch_size_level0=64)
    result = runner.invoke(app, ["mil", "heatmap", str(case["ckpt"]), "--features", str(far), "--slide",
                                 str(case["slide"]), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "outside the slide" in result.output
    other = _ckpt(tmp_path / "ckpt1024", in_dim=1024)
    result = runner.invoke(app, ["mil", "heatmap", str(other), "--slide", str(case["slide"]), "--out",
                                 str(tmp_path / "y")])
    assert result.exit_code == 2 and "built-in extractor" in result.output
    result = runner.invoke(app, ["mil", "heatmap", str(other), "--features", str(case["h5"]), "--out",
                                 str(tmp_path / "y")])
    assert result.exit_code == 2 and "1024-d" in result.output
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"\0" * 1000)
    result = runner.invoke(app, ["mil", "heatmap", str(case["ckpt"]), "--features", str(case["h5"]), "--slide",
                                 str(broken), "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "cannot open slide" in result.output
    result = runner.invoke(app, ["mil", "heatmap", str(case["ckpt"]), "--out", str(tmp_path / "z")])
    assert result.exit_code != 0 and "--features" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.slow
def test_demo_on_the_real_cmu1_slide(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["mil", "heatmap", "--demo", "--out", str(out), "--max-size", "1024"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "heatmaps.json").read_text())
    assert summary["num_patches"] == 45 and summary["patch_size_level0"] == 224
    assert summary["expert_stats"]["num_experts"] == 8
    assert len(summary["files"]["topk"]) == 9 and (out / "features" / "cmu_small_region.h5").is_file()


def test_cohort_expert_usage_per_class(tmp_path):
    from medmoe.data import make_synthetic_feature_folder

    folder = make_synthetic_feature_folder(tmp_path / "f", n_slides=6, n_patches=(5, 9), dim=12, seed=2,
                                           string_labels=True)
    ckpt = _ckpt(tmp_path / "ckpt", in_dim=12)
    result = runner.invoke(app, ["mil", "heatmap", str(ckpt), "--cohort", str(folder.features_dir), "--labels",
                                 str(folder.labels_csv), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "o" / "expert_stats" / "cohort_expert_stats.json").read_text())
    assert data["num_bags"] == 6 and len(data["usage_per_class"]) == 2
    assert all(abs(sum(row) - 1) < 1e-5 for row in data["usage_per_class"])
    assert (tmp_path / "o" / "expert_stats" / "cohort_usage_per_class.png").is_file()
    linear = create_model("abmil.base", in_dim=12, num_classes=2, embed_dim=16, attn_dim=8)
    lin_ckpt = save_checkpoint(tmp_path / "lin", linear, {})
    result = runner.invoke(app, ["mil", "heatmap", str(lin_ckpt), "--cohort", str(folder.features_dir), "--labels",
                                 str(folder.labels_csv), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "does not route" in result.output


def test_cohort_of_a_multilabel_checkpoint_reads_its_label_columns(tmp_path):
    from medmoe.data import make_synthetic_multilabel_folder

    folder = make_synthetic_multilabel_folder(tmp_path / "f", n_slides=8, n_patches=(5, 9), dim=12, seed=3,
                                              prevalence=0.5)
    torch.manual_seed(0)
    model = create_model("abmil.base_mammoth", in_dim=12, num_classes=3, embed_dim=32, attn_dim=16,
                         patch_embed_args=MOE)
    ckpt = save_checkpoint(tmp_path / "ckpt", model,
                           {"class_names": ["tumor", "necrosis", "inflammation"], "task": "multilabel"})
    result = runner.invoke(app, ["mil", "heatmap", str(ckpt), "--cohort", str(folder.features_dir), "--labels",
                                 str(folder.labels_csv), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "o" / "expert_stats" / "cohort_expert_stats.json").read_text())
    assert data["num_bags"] == 8
    # usage per label combination present in the cohort ("tumor+necrosis", "(none)", ...)
    combos = {"+".join(n for n, v in zip(["tumor", "necrosis", "inflammation"], row) if v) or "(none)"
              for row in folder.targets}
    assert len(data["usage_per_class"]) == len(combos)


@pytest.mark.parametrize("name", ["abmil.base", "meanmil.base", "clam.base_mammoth"])
def test_slide_heatmaps_for_other_models(case, tmp_path, name):
    from medmoe.data import read_feature_file
    from medmoe.engine.mil.heatmap_pipeline import slide_heatmaps

    feats, coords, _ = read_feature_file(case["h5"], with_attrs=True)
    extra = {"patch_embed_args": MOE} if "mammoth" in name else {}
    model = create_model(name, in_dim=BUILTIN_FEATURE_DIM, num_classes=2, embed_dim=32, **extra)
    s = slide_heatmaps(model, feats, coords, 64, tmp_path, max_size=128, top_k=0, num_expert_maps=1)
    assert (s["expert_stats"] is not None) == ("mammoth" in name)
    if name == "abmil.base":
        assert s["attention_kind"] == "pre-softmax" and len(s["files"]["attention"]) == 1
    if name.startswith("clam"):
        assert len(s["files"]["attention"]) >= 1 and s["files"]["argmax_expert"]


def test_heatmap_of_a_survival_checkpoint_reports_risk(case, tmp_path):
    torch.manual_seed(0)
    model = create_model("clam.base_mammoth", in_dim=BUILTIN_FEATURE_DIM, num_classes=4, embed_dim=32,
                         patch_embed_args=MOE)  # 4 hazard outputs, 2 event classes: must not be confused
    ckpt = save_checkpoint(tmp_path / "surv", model, {"class_names": ["censored", "event"], "task": "survival",
                                                      "survival_bin_edges": [1.0, 2.0, 3.0]})
    out = tmp_path / "maps"
    result = runner.invoke(app, ["mil", "heatmap", str(ckpt), "--features", str(case["h5"]), "--out", str(out),
                                 "--max-size", "128", "--experts", "0"])
    assert result.exit_code == 0, result.output
    assert "predicted risk" in result.output
    summary = json.loads((out / "heatmaps.json").read_text())
    assert "probs" not in summary and len(summary["survival"]) == 4
    assert summary["risk"] == pytest.approx(-sum(summary["survival"]), rel=1e-6)
    assert summary["files"]["instance"] == [] and summary["files"]["attention"]


def test_heatmaps_of_a_feature_folder(case, tmp_path):
    import csv
    import shutil

    feats = tmp_path / "feats"
    feats.mkdir()
    shutil.copy(case["h5"], feats / "slide.h5")  # matches slide.tif by stem: drawn over its thumbnail
    shutil.copy(case["h5"], feats / "other.h5")  # no slide of that name: coordinates only
    (feats / "broken.h5").write_bytes(b"not hdf5")
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(case["slide"], slides / "slide.tif")
    out = tmp_path / "maps"
    result = runner.invoke(app, ["mil", "heatmap", str(case["ckpt"]), "--features", str(feats), "--slide",
                                 str(slides), "--out", str(out), "--max-size", "128", "--top-k", "2",
                                 "--experts", "0"])
    assert result.exit_code == 0, result.output
    assert "heatmaps of 2 of 3 slides" in result.output and "skipped broken.h5" in result.output
    rows = list(csv.DictReader((out / "heatmaps.csv").open()))
    assert [r["slide"] for r in rows] == ["other", "slide"] and rows[0]["prob_tumour"]
    assert json.loads((out / "slide" / "heatmaps.json").read_text())["slide"] is not None
    assert json.loads((out / "other" / "heatmaps.json").read_text())["slide"] is None
    other = _ckpt(tmp_path / "ckpt1024", in_dim=1024)
    result = runner.invoke(app, ["mil", "heatmap", str(other), "--features", str(feats), "--out", str(out)])
    assert result.exit_code == 2 and "could be drawn; the first error" in result.output
