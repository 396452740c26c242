"""Bad-input cases where a checkpoint meets data: labels through the checkpoint's classes, outputs that
would overwrite inputs, feature widths, checkpoints of another family, heatmap coordinates (issue 23).

Each case builds a tiny world in ``tmp_path`` (a checkpoint whose classes are ``normal``/``tumor``, a
feature folder with a labels CSV), breaks one thing, runs the command and checks the one-line error and
that nothing on disk changed.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from bad_input_harness import assert_clear_error, run_cli, tree_digest
from inference_inputs import DIM, constant_checkpoint, feature_folder

from medmoe.data import write_trident_h5

SLIDES = {"s0": "tumor", "s1": "normal", "s2": "tumor", "s3": "normal"}


def world(tmp: Path) -> dict[str, Path]:
    """A checkpoint (normal/tumor), a numbered one (classes '0'/'1'), a feature folder and its labels CSV."""
    feats, labels = feature_folder(tmp / "cohort", SLIDES)
    return {
        "ckpt": constant_checkpoint(tmp / "ckpt"),
        "num_ckpt": constant_checkpoint(tmp / "num_ckpt", class_names=("0", "1")),
        "feats": feats,
        "labels": labels,
        "tmp": tmp,
    }


def set_label(w: dict[str, Path], slide: str, value: str) -> None:
    rows = list(csv.reader(w["labels"].open()))
    for r in rows[1:]:
        if r[0] == slide:
            r[1] = value
    with w["labels"].open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def numbered_labels(w: dict[str, Path]) -> None:
    for sid, name in SLIDES.items():
        set_label(w, sid, "1" if name == "tumor" else "0")


def wide_features(w: dict[str, Path]) -> None:
    feature_folder(w["tmp"] / "wide", SLIDES, dim=DIM * 2)
    w["feats"] = w["tmp"] / "wide" / "features"
    w["labels"] = w["tmp"] / "wide" / "labels.csv"


def seg_checkpoint(w: dict[str, Path]) -> None:
    from medmoe.engine.checkpoint import save_checkpoint
    from medmoe.models.seg import create_seg_model

    model = create_seg_model("mamba_home.tiny", in_channels=1, num_classes=2)
    save_checkpoint(w["tmp"] / "seg_ckpt", model, {"transform_config": {"roi_size": [32, 32, 32]},
                                                   "class_names": ["background", "organ"]})
    w["ckpt"] = w["tmp"] / "seg_ckpt"


def far_coordinate(w: dict[str, Path]) -> None:
    n = 6
    coords = np.stack([np.arange(n) % 3, np.arange(n) // 3], 1).astype(np.int64) * 256
    coords[-1] = (10**9, 256)
    write_trident_h5(w["feats"] / "s0.h5", np.ones((n, DIM), np.float32), coords=coords)


def pt_beside_h5(w: dict[str, Path]) -> None:
    import torch

    torch.save({"features": torch.zeros(3, DIM)}, w["feats"] / "s1.pt")


def nothing(w: dict[str, Path]) -> None:
    pass


EVAL = ["mil", "eval", "{ckpt}", "--features", "{feats}", "--labels", "{labels}"]
PREDICT = ["mil", "predict", "{ckpt}", "{feats}", "--labels", "{labels}", "--out", "{tmp}/pred.csv"]
EMBED = ["mil", "embed", "{ckpt}", "{feats}", "--labels", "{labels}", "--out", "{tmp}/emb.h5"]
HEATMAP = ["mil", "heatmap", "{ckpt}", "--features", "{feats}/s0.h5", "--out", "{tmp}/maps"]
COHORT = ["mil", "heatmap", "{ckpt}", "--cohort", "{feats}", "--labels", "{labels}", "--out", "{tmp}/maps"]

CASES = [
    # labels meet the checkpoint's classes
    pytest.param(lambda w: set_label(w, "s2", "banana"), EVAL, ["'banana'", "line 4", "'normal', 'tumor'"],
                 id="eval-label-the-checkpoint-does-not-know"),
    pytest.param(lambda w: set_label(w, "s2", "banana"), PREDICT, ["'banana'", "s2"],
                 id="predict-label-the-checkpoint-does-not-know"),
    pytest.param(lambda w: set_label(w, "s2", "banana"), EMBED, ["'banana'"],
                 id="embed-label-the-checkpoint-does-not-know"),
    pytest.param(lambda w: set_label(w, "s2", "banana"), COHORT, ["'banana'"],
                 id="heatmap-cohort-label-the-checkpoint-does-not-know"),
    pytest.param(numbered_labels, EVAL, ["numbers", "class names"], id="eval-numbers-against-named-classes"),
    pytest.param(numbered_labels, PREDICT, ["numbers", "class names"], id="predict-numbers-against-named-classes"),
    pytest.param(nothing, ["mil", "eval", "{num_ckpt}", "--features", "{feats}", "--labels", "{labels}"],
                 ["names", "class numbers"], id="eval-names-against-numbered-classes"),
    pytest.param(nothing, ["mil", "eval", "{ckpt}", "--features", "{feats}"], ["--labels"],
                 id="eval-features-without-labels"),
    pytest.param(nothing, ["mil", "eval", "{ckpt}", "-d", "musk1"], ["musk1", "'negative', 'positive'", "'normal'"],
                 id="eval-benchmark-with-other-classes"),
    pytest.param(nothing, ["mil", "predict", "{ckpt}", "musk1", "--out", "{tmp}/pred.csv"],
                 ["musk1", "'normal'", "give FEATURES and --labels"], id="predict-benchmark-with-other-classes"),
    pytest.param(nothing, [*EVAL, "-d", "musk1"], ["either --dataset", "--features"],
                 id="eval-benchmark-and-features"),
    # the same feature-width message everywhere
    pytest.param(wide_features, EVAL, ["expects 8-d features", "16-d"], id="eval-features-of-another-width"),
    pytest.param(wide_features, PREDICT, ["expects 8-d features", "16-d"], id="predict-features-of-another-width"),
    pytest.param(wide_features, EMBED, ["expects 8-d features", "16-d"], id="embed-features-of-another-width"),
    pytest.param(wide_features, HEATMAP, ["expects 8-d features", "16-d"], id="heatmap-features-of-another-width"),
    # a checkpoint of another family
    pytest.param(seg_checkpoint, EVAL, ["segmentation checkpoint", "medmoe seg infer"],
                 id="eval-segmentation-checkpoint"),
    pytest.param(seg_checkpoint, HEATMAP, ["segmentation checkpoint", "medmoe seg infer"],
                 id="heatmap-segmentation-checkpoint"),
    # outputs that would destroy inputs or cannot be written
    pytest.param(nothing, [*PREDICT[:-1], "{labels}"], ["--labels", "overwrite its own input"],
                 id="predict-out-is-the-labels-csv"),
    pytest.param(nothing, [*PREDICT[:-1], "{feats}/s1.h5"], ["feature file", "overwrite"],
                 id="predict-out-is-a-feature-file"),
    pytest.param(nothing, [*PREDICT[:-1], "{ckpt}/config.json"], ["checkpoint", "overwrite"],
                 id="predict-out-is-a-checkpoint-file"),
    pytest.param(nothing, [*PREDICT[:-1], "{feats}/new.h5"], ["feature folder"],
                 id="predict-out-adds-a-fake-slide"),
    pytest.param(nothing, [*PREDICT[:-1], "{tmp}"], ["is a folder", "predictions.csv"], id="predict-out-is-a-folder"),
    pytest.param(nothing, [*PREDICT[:-1], "{labels}/pred.csv"], ["not a folder"], id="predict-out-under-a-file"),
    pytest.param(nothing, [*EMBED[:-1], "{labels}"], ["--labels", "overwrite"], id="embed-out-is-the-labels-csv"),
    pytest.param(nothing, [*EMBED[:-1], "{tmp}/emb.txt"], ["--out", ".h5"], id="embed-out-of-unknown-format"),
    pytest.param(nothing, [*EMBED[:-1], "{feats}/s1.h5"], ["feature file", "overwrite"],
                 id="embed-out-is-a-feature-file"),
    # heatmaps
    pytest.param(far_coordinate, HEATMAP, ["far outside", "#5", "1e+09"], id="heatmap-coordinate-at-1e9"),
    pytest.param(pt_beside_h5, ["mil", "heatmap", "{ckpt}", "--features", "{feats}", "--out", "{tmp}/maps"],
                 ["s1.h5 and s1.pt"], id="heatmap-folder-with-h5-and-pt-of-one-slide"),
    pytest.param(pt_beside_h5, PREDICT, ["s1.h5 and s1.pt"], id="predict-folder-with-h5-and-pt-of-one-slide"),
    pytest.param(pt_beside_h5, ["mil", "predict", "{ckpt}", "{feats}", "--out", "{tmp}/pred.csv"],
                 ["s1.h5 and s1.pt"], id="predict-unlabelled-folder-with-h5-and-pt"),
]


@pytest.mark.parametrize(("setup", "args", "contains"), CASES)
def test_inference_inputs(setup, args, contains, tmp_path):
    w = world(tmp_path)
    setup(w)
    args = [a.format(**{k: str(v) for k, v in w.items()}) for a in args]
    assert_clear_error(args, contains, watch=[tmp_path])


def _read_only(folder: Path) -> bool:
    """Make ``folder`` unwritable even for root (chattr +i), else by mode bits; False when impossible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return True
    return subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True).returncode == 0


def _writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)


@pytest.mark.parametrize("command", [PREDICT, EMBED], ids=["predict", "embed"])
def test_read_only_output_folder(command, tmp_path):
    w = world(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _read_only(locked):
        pytest.skip("cannot make a read-only folder here (no chattr for root)")
    try:
        args = [a.format(**{k: str(v) for k, v in w.items()}) for a in command[:-1]]
        out = str(locked / Path(command[-1]).name)
        assert_clear_error([*args, out], ["not writable", "--out"], watch=[tmp_path])
    finally:
        _writable(locked)


# --------------------------------------------------------------------------------------------------
# correct behaviour (issue 23, silent items 1 and 8)


def test_a_tumor_only_cohort_keeps_the_checkpoints_classes(tmp_path):
    """An external cohort holding only 'tumor' slides, scored by a model that calls everything 'tumor':
    accuracy 1.0 (before: the CSV alone numbered 'tumor' as class 0 = 'normal', accuracy 0.0)."""
    import json

    ckpt = constant_checkpoint(tmp_path / "ckpt", predict=1)
    feats, labels = feature_folder(tmp_path / "ext", {f"t{i}": "tumor" for i in range(4)})
    out = run_cli(["mil", "eval", ckpt, "--features", feats, "--labels", labels])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output[out.output.index("{"):])
    assert metrics["accuracy"] == 1.0 and metrics["balanced_accuracy"] == 1.0
    pred = tmp_path / "pred.csv"
    out = run_cli(["mil", "predict", ckpt, feats, "--labels", labels, "--out", pred])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(pred.open()))
    assert len(rows) == 4
    for row in rows:
        assert (row["label"], row["label_name"], row["pred"], row["pred_name"]) == ("1", "tumor", "1", "tumor")


def test_numbers_map_to_numbered_classes(tmp_path):
    """A checkpoint trained on labels 0/1 reads '1.0' as class '1' (unambiguous)."""
    ckpt = constant_checkpoint(tmp_path / "ckpt", class_names=("0", "1"), predict=1)
    feats, labels = feature_folder(tmp_path / "ext", {"a": "1.0", "b": "1"})
    pred = tmp_path / "pred.csv"
    out = run_cli(["mil", "predict", ckpt, feats, "--labels", labels, "--out", pred])
    assert out.exit_code == 0, out.output
    assert [r["label"] for r in csv.DictReader(pred.open())] == ["1", "1"]


def test_heatmap_slide_folder_equal_to_the_feature_folder(tmp_path):
    """`--features DIR --slide DIR`: slide.h5 is never taken for the slide image (before: it was, and
    opening it failed); a real image of the same stem is."""
    from PIL import Image

    ckpt = constant_checkpoint(tmp_path / "ckpt")
    feats, _ = feature_folder(tmp_path / "c", None, n_slides=2)
    Image.new("RGB", (1024, 1024), (200, 120, 160)).save(feats / "slide_001.png")
    out = run_cli(["mil", "heatmap", ckpt, "--features", feats, "--slide", feats, "--out", tmp_path / "maps",
                   "--top-k", "0", "--experts", "0"])
    assert out.exit_code == 0, out.output
    import json

    first = json.loads((tmp_path / "maps" / "slide_000" / "heatmaps.json").read_text())
    second = json.loads((tmp_path / "maps" / "slide_001" / "heatmaps.json").read_text())
    assert first["slide"] is None
    assert second["slide"].endswith("slide_001.png")


def test_predict_writes_nothing_when_refused(tmp_path):
    """The refusal comes before any work: the labels CSV is byte-identical afterwards."""
    w = world(tmp_path)
    before = tree_digest(w["labels"])
    run_cli(["mil", "predict", w["ckpt"], w["feats"], "--labels", w["labels"], "--out", w["labels"]])
    assert tree_digest(w["labels"]) == before
