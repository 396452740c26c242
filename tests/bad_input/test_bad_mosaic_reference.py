"""Bad-input cases: MOSAIC presets and protocol flags (``mosaic train``) and reference checkpoint files
(``mosaic eval`` / ``predict`` on a ``best_model.pth`` of the reference code)."""

from pathlib import Path

import pytest
import torch
from bad_input_harness import assert_clear_error

GOLDEN = Path(__file__).resolve().parents[1] / "parity" / "golden" / "mosaic" / "mosaic_best_model.pth"
TRAIN = ["mosaic", "train", "--demo", "--vit", "tiny", "--weights", "none", "--datasets", "pathmnist", "--rounds", "1",
         "--out", "{tmp}/run"]


@pytest.mark.parametrize(
    ("extra", "contains"),
    [
        pytest.param(["--preset", "paper"], ["--preset", "mosaic-paper"], id="mosaic-unknown-preset"),
        pytest.param(["--dataset-order", "alphabetical"], ["--dataset-order", "reference"], id="mosaic-unknown-order"),
        pytest.param(["--early-stopping", "keras"], ["--early-stopping", "reference"], id="mosaic-unknown-early-stopping"),
        pytest.param(["--selection-metric", "auc"], ["--selection-metric", "acc_pm1"], id="mosaic-unknown-selection"),
        pytest.param(["--augmentation", "strong"], ["--augmentation", "reference"], id="mosaic-unknown-augmentation"),
        pytest.param(["--sampler", "interleave"], ["--sampler", "alternating"], id="mosaic-unknown-sampler"),
    ],
)
def test_mosaic_protocol_flags(extra, contains, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in TRAIN] + extra
    assert_clear_error(args, contains, watch=[tmp_path])


def _write(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "ref" / "best_model.pth"
    path.parent.mkdir()
    golden = torch.load(GOLDEN, weights_only=True)
    if kind == "mil-state":
        torch.save({"fc.weight": torch.zeros(2, 4), "classifier.bias": torch.zeros(2)}, path)
    elif kind == "pickled-object":
        torch.save({"student_state_dict": golden["student_state_dict"], "args": Path("x")}, path)
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "no-teacher":
        torch.save({"student_state_dict": golden["student_state_dict"]}, path)
    elif kind == "bad-args-json":
        torch.save(golden, path)
        (path.parent / "args.json").write_text("{dataset_list: [")
    elif kind == "missing-tensor":
        state = dict(golden["student_state_dict"])
        state.pop("encoder.norm.weight")
        torch.save({"student_state_dict": state}, path)
    else:
        torch.save(golden, path)
    return path


@pytest.mark.parametrize(
    ("kind", "extra", "contains"),
    [
        pytest.param("mil-state", [], ["not a mosaic reference checkpoint"], id="mosaic-eval-not-a-mosaic-file"),
        pytest.param("pickled-object", [], ["without running pickle code"], id="mosaic-eval-pickled-object"),
        pytest.param("text", [], ["without running pickle code"], id="mosaic-eval-text-file"),
        pytest.param("no-teacher", ["--teacher"], ["teacher_state_dict", "--teacher"], id="mosaic-eval-no-teacher"),
        pytest.param("bad-args-json", [], ["args.json", "not valid json", "--reference-datasets"],
                     id="mosaic-eval-bad-args-json"),
        pytest.param("missing-tensor", [], ["missing from the file", "encoder.norm.weight"],
                     id="mosaic-eval-missing-tensor"),
        pytest.param("golden", ["--reference-datasets", "pathmnist,dermamnist"], ["--reference-datasets", "classes"],
                     id="mosaic-eval-reference-datasets-do-not-match"),
        pytest.param("golden", ["--reference-datasets", "nosuchmnist"], ["--reference-datasets", "nosuchmnist"],
                     id="mosaic-eval-reference-datasets-unknown"),
    ],
)
def test_mosaic_reference_checkpoint_files(kind, extra, contains, tmp_path):
    path = _write(tmp_path, kind)
    args = ["mosaic", "eval", str(path), "--data", str(tmp_path / "data"), *extra]
    assert_clear_error(args, contains, watch=[path.parent])


def test_reference_datasets_on_a_medmoe_folder(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert_clear_error(["mosaic", "predict", str(folder), str(tmp_path), "-d", "pathmnist", "--reference-datasets",
                        "pathmnist"], ["--reference-datasets", "reference checkpoint files only"], watch=[folder])
