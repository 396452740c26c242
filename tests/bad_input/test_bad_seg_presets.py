"""Bad-input cases: segmentation presets and protocol switches (``seg train --preset ...``), reference checkpoints
given to ``seg infer``."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_harness import assert_clear_error

from medmoe.data.volumes import make_synthetic_volumes

GOLDEN = Path(__file__).parents[1] / "parity" / "golden" / "mamba_home"
TRAIN = ["seg", "train", "--preset", "medmoe-cpu", "-m", "unet.small", "--roi", "16", "16", "16", "--epochs", "1", "--steps-per-epoch", "1",
         "--val-fraction", "0"]


@pytest.fixture(scope="module")
def msd(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("bad_seg_presets") / "msd"
    make_synthetic_volumes(root, n_cases=2, shape=(20, 18, 16), num_classes=3)
    return root


@pytest.mark.parametrize(
    ("extra", "contains"),
    [
        pytest.param(["--preset", "nnunet"], ["--preset", "mamba-home-paper", "medmoe-cpu"], id="seg-unknown-preset"),
        pytest.param(["--augmentation", "heavy"], ["--augmentation", "reference"], id="seg-unknown-augmentation"),
        pytest.param(["--mri-stats", "whole"], ["--mri-stats", "foreground"], id="seg-unknown-mri-stats"),
        pytest.param(["--blend", "linear"], ["--blend", "gaussian", "constant"], id="seg-unknown-blend"),
        pytest.param(["--dice-average", "median"], ["--dice-average", "cases-over-classes"], id="seg-unknown-dice-avg"),
    ],
)
def test_seg_train_protocol_switches(extra, contains, msd, tmp_path):  # type: ignore[no-untyped-def]
    assert_clear_error([*TRAIN, "--data", str(msd), "--out", str(tmp_path / "run"), *extra], contains,
                       watch=[msd, tmp_path])


@pytest.mark.parametrize(
    ("ckpt", "extra", "contains"),
    [
        pytest.param("home_paper_stage0_state.safetensors", [], ["not a mamba-home reference checkpoint"],
                     id="seg-infer-foreign-safetensors"),
        pytest.param("small_state.safetensors", ["--mode", "linear"], ["--mode", "gaussian"],
                     id="seg-infer-unknown-mode"),
    ],
)
def test_seg_infer_reference_checkpoints(ckpt, extra, contains, msd, tmp_path):  # type: ignore[no-untyped-def]
    assert_clear_error(["seg", "infer", str(GOLDEN / ckpt), str(msd / "imagesTr"), "--out", str(tmp_path / "pred"),
                        *extra], contains, watch=[msd, GOLDEN, tmp_path])
