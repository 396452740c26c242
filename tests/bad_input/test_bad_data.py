"""Bad-input cases of the data a user brings: labels CSVs, feature files that are not what they are
called, hostile HDF5 headers, two files for one slide (issue 23).

Training commands are refused while the dataset is read, before a run folder is touched; the same files
reach `mil predict` / `mil heatmap` through one reader, so one case per mistake is enough.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from bad_input_harness import assert_clear_error
from inference_inputs import DIM, constant_checkpoint, feature_folder

SLIDES = {f"s{i}": str(i % 2) for i in range(8)}


def world(tmp: Path) -> dict[str, Path]:
    feats, labels = feature_folder(tmp / "cohort", SLIDES)
    return {"feats": feats, "labels": labels, "tmp": tmp, "ckpt": tmp / "ckpt"}


def with_checkpoint(w: dict[str, Path]) -> None:
    constant_checkpoint(w["ckpt"], class_names=("0", "1"))


def set_label(slide: str, value: str):
    def edit(w: dict[str, Path]) -> None:
        rows = list(csv.reader(w["labels"].open()))
        for r in rows[1:]:
            if r[0] == slide:
                r[1] = value
        with w["labels"].open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)

    return edit


def names_with_one_stray(w: dict[str, Path]) -> None:
    """Names only (normal/tumor), one slide labelled 'banana': a class of one group, too rare for any k."""
    rows = [["slide_id", "label"]] + [[s, "tumor" if v == "1" else "normal"] for s, v in SLIDES.items()]
    rows[6][1] = "banana"  # slide s5
    with w["labels"].open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def header_only(w: dict[str, Path]) -> None:
    w["labels"].write_text("slide_id,label\n")


def empty_csv(w: dict[str, Path]) -> None:
    w["labels"].write_text("")


def labels_is_folder(w: dict[str, Path]) -> None:
    w["labels"] = w["tmp"] / "a_folder"
    w["labels"].mkdir()


def labels_is_fifo(w: dict[str, Path]) -> None:
    w["labels"] = w["tmp"] / "labels_pipe.csv"
    os.mkfifo(w["labels"])


def replace_h5(make):
    def edit(w: dict[str, Path]) -> None:
        target = w["feats"] / "s3.h5"
        target.unlink()
        make(target)

    return edit


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _folder(p: Path) -> None:
    p.mkdir()


def _loop(p: Path) -> None:
    p.symlink_to(p.name)


def _broken_link(p: Path) -> None:
    p.symlink_to("gone.h5")


def _features_group(p: Path) -> None:
    import h5py

    with h5py.File(p, "w") as f:
        f.create_group("features").create_dataset("x", data=np.zeros((3, DIM), np.float32))


def _forged_200m(p: Path) -> None:
    """1.7 kB on disk, 200M x 8 float32 declared: a chunked dataset whose chunks were never written."""
    import h5py

    with h5py.File(p, "w") as f:
        f.create_dataset("features", shape=(200_000_000, 8), dtype="f4", chunks=(1024, 8))


def _forged_contiguous(p: Path) -> None:
    """A contiguous dataset declared but never written (late allocation): 0 bytes stored."""
    import h5py

    with h5py.File(p, "w") as f:
        f.create_dataset("features", shape=(50_000_000, 8), dtype="f4")


def _coords_wrong(p: Path) -> None:
    import h5py

    with h5py.File(p, "w") as f:
        f.create_dataset("features", data=np.zeros((6, DIM), np.float32))
        f.create_dataset("coords", data=np.zeros((10**4, 2), np.int64))


def _text_features(p: Path) -> None:
    import h5py

    with h5py.File(p, "w") as f:
        f.create_dataset("features", data=np.array([[b"a"] * DIM] * 2))


def pt_beside(w: dict[str, Path]) -> None:
    import torch

    torch.save({"features": torch.zeros(4, DIM)}, w["feats"] / "s3.pt")


TRAIN = ["mil", "train", "-m", "meanmil.base", "--features", "{feats}", "--labels", "{labels}", "--k", "3",
         "--epochs", "1", "--out", "{tmp}/run"]
PREDICT = ["mil", "predict", "{ckpt}", "{feats}", "--labels", "{labels}", "--out", "{tmp}/pred.csv"]

CASES = [
    # stray label values (before: they became classes, then "lower k to at most 1")
    pytest.param(set_label("s5", "7"), TRAIN, ["'7'", "line 7", "s5", "never occur"], id="train-label-stray-number"),
    pytest.param(set_label("s5", "banana"), TRAIN, ["'banana'", "line 7", "s5", "mixes"],
                 id="train-label-stray-name-among-numbers"),
    pytest.param(names_with_one_stray, TRAIN, ["'banana'", "1 group(s) (s5)", "typos"],
                 id="train-label-stray-name-among-names"),
    pytest.param(set_label("s2", "-1"), TRAIN, ["'-1'", "line 4", ">= 0"], id="train-label-negative"),
    pytest.param(set_label("s2", "0.5"), TRAIN, ["'0.5'", "line 4"], id="train-label-fraction"),
    pytest.param(header_only, TRAIN, ["no rows", "labels.csv"], id="train-labels-csv-header-only"),
    pytest.param(empty_csv, TRAIN, ["is empty", "slide_id"], id="train-labels-csv-empty"),
    pytest.param(labels_is_folder, TRAIN, ["a_folder", "is a folder"], id="train-labels-is-a-folder"),
    pytest.param(labels_is_fifo, TRAIN, ["fifo"], id="train-labels-is-a-fifo"),
    pytest.param(lambda w: (with_checkpoint(w), labels_is_folder(w)), PREDICT, ["--labels", "is a folder"],
                 id="predict-labels-is-a-folder"),
    pytest.param(lambda w: (with_checkpoint(w), set_label("s5", "7")(w)), PREDICT, ["'7'", "s5", "'0', '1'"],
                 id="predict-stray-number-the-checkpoint-does-not-know"),
    # feature files that are not what they are called (before: "does not exist")
    pytest.param(replace_h5(_fifo), TRAIN, ["s3.h5", "fifo"], id="feature-file-is-a-fifo"),
    pytest.param(replace_h5(_folder), TRAIN, ["s3.h5", "is a folder"], id="feature-file-is-a-folder"),
    pytest.param(replace_h5(_loop), TRAIN, ["s3.h5", "symlink loop"], id="feature-file-is-a-symlink-loop"),
    pytest.param(replace_h5(_broken_link), TRAIN, ["s3.h5", "broken symlink"], id="feature-file-is-a-broken-link"),
    pytest.param(replace_h5(_features_group), TRAIN, ["s3.h5", "group", "re-extract"],
                 id="h5-features-is-a-group"),
    pytest.param(replace_h5(_text_features), TRAIN, ["s3.h5", "not numbers"], id="h5-features-are-strings"),
    pytest.param(replace_h5(_coords_wrong), ["mil", "heatmap", "{ckpt}", "--features", "{feats}/s3.h5", "--out",
                                             "{tmp}/maps"], ["coords", "(6, 2)"], id="h5-coords-of-another-length"),
    # hostile sizes: refused from the header, before reading
    pytest.param(replace_h5(_forged_200m), TRAIN, ["s3.h5", "200000000 x 8", "stores only"],
                 id="h5-declares-200m-x-8-in-2kb"),
    pytest.param(replace_h5(_forged_contiguous), TRAIN, ["s3.h5", "stores only"], id="h5-declared-never-written"),
    # two files for one slide (before: the .pt was ignored silently)
    pytest.param(pt_beside, TRAIN, ["s3.h5 and s3.pt", "move or delete"], id="feature-folder-h5-and-pt-of-one-slide"),
    # folders
    pytest.param(lambda w: w.update(feats=w["tmp"] / "nowhere"), TRAIN, ["nowhere", "does not exist"],
                 id="features-folder-missing"),
    pytest.param(lambda w: w.update(feats=w["labels"]), TRAIN, ["labels.csv", "not a folder"],
                 id="features-is-a-file"),
]


@pytest.mark.parametrize(("setup", "args", "contains"), CASES)
def test_data_inputs(setup, args, contains, tmp_path):
    w = world(tmp_path)
    if "{ckpt}" in " ".join(args) and not w["ckpt"].exists():
        with_checkpoint(w)
    setup(w)
    args = [a.format(**{k: str(v) for k, v in w.items()}) for a in args]
    assert_clear_error(args, contains, watch=[tmp_path])


def test_declared_size_over_the_memory_limit(tmp_path, monkeypatch):
    """A genuine file larger than the limit names the environment variable that raises it; raised, it reads."""
    w = world(tmp_path)
    args = [a.format(**{k: str(v) for k, v in w.items()}) for a in TRAIN]
    monkeypatch.setenv("MEDMOE_MAX_FEATURE_GB", "0.0000001")  # 100 bytes; a slide here is 6 x 8 x 4 = 192
    assert_clear_error(args, ["MEDMOE_MAX_FEATURE_GB", "GB limit"], watch=[tmp_path])
    monkeypatch.setenv("MEDMOE_MAX_FEATURE_GB", "banana")
    assert_clear_error(args, ["MEDMOE_MAX_FEATURE_GB", "positive number"], watch=[tmp_path])
    monkeypatch.setenv("MEDMOE_MAX_FEATURE_GB", "1")
    from medmoe.data import FeatureFolderBags

    assert len(FeatureFolderBags(w["feats"], w["labels"])) == len(SLIDES)
