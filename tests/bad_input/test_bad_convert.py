"""Bad-input cases: ``medmoe mil convert`` (reference checkpoints -> medmoe checkpoint)."""

import pickle
from pathlib import Path

import pytest
from bad_input_harness import assert_clear_error, run_cli

GOLDEN = Path(__file__).parents[1] / "parity" / "golden" / "millab"
ABMIL = str(GOLDEN / "millab_abmil_base.safetensors")
MAMMOTH = str(GOLDEN / "millab_abmil_base_mammoth.safetensors")
SMALL = ["--in-dim", "64", "--set", "embed_dim=64", "--set", "attn_dim=32"]


def _setup(kind: str, tmp: Path) -> None:
    if kind == "existing-out":
        out = run_cli(["mil", "convert", ABMIL, "--model", "abmil.base", *SMALL, "--out", str(tmp / "out")])
        assert out.exit_code == 0, out.output
    elif kind == "pickle":
        with open(tmp / "evil.pth", "wb") as fh:
            pickle.dump({"w": object()}, fh, protocol=2)
    elif kind == "empty-folder":
        (tmp / "folder").mkdir()
        (tmp / "folder" / "config.json").write_text("{}")


@pytest.mark.parametrize(
    ("setup", "args", "contains"),
    [
        pytest.param(None, ["{tmp}/nope.bin", "--model", "abmil.base", "--out", "{tmp}/out"], ["does not exist"],
                     id="convert-missing-source"),
        pytest.param(None, [ABMIL, "--out", "{tmp}/out"], ["--model"], id="convert-no-model-name"),
        pytest.param(None, [ABMIL, "--model", "nosuch.base", "--out", "{tmp}/out"], ["nosuch"],
                     id="convert-unknown-model"),
        pytest.param(None, [MAMMOTH, "--model", "abmil.base", *SMALL, "--out", "{tmp}/out"],
                     ["slot_embeds", "patch_embed.0.weight"], id="convert-wrong-model-lists-tensors"),
        pytest.param(None, [str(GOLDEN / "millab_transformer_base.safetensors"), "--model", "transformer.base",
                            "--out", "{tmp}/out"], ["other widths", "--set"], id="convert-other-widths"),
        pytest.param(None, [ABMIL, "--model", "abmil.base", *SMALL, "--num-classes", "3", "--out", "{tmp}/out"],
                     ["--num-classes", "--reinit-head"], id="convert-other-class-count"),
        pytest.param(None, [ABMIL, "--model", "abmil.base", *SMALL, "--class-names", "a,b,c", "--out", "{tmp}/out"],
                     ["--class-names"], id="convert-class-names-count"),
        pytest.param(None, [ABMIL, "--model", "abmil.base", "--num-classes", "0", "--out", "{tmp}/out"],
                     ["--num-classes"], id="convert-num-classes-zero"),
        pytest.param("existing-out", [ABMIL, "--model", "abmil.base", *SMALL, "--out", "{tmp}/out"],
                     ["--overwrite"], id="convert-out-holds-a-checkpoint"),
        pytest.param("pickle", ["{tmp}/evil.pth", "--model", "abmil.base", "--out", "{tmp}/out"],
                     ["pickle"], id="convert-pickled-object"),
        pytest.param("empty-folder", ["{tmp}/folder", "--model", "abmil.base", "--out", "{tmp}/out"],
                     ["without weights"], id="convert-folder-without-weights"),
    ],
)
def test_convert(setup, args, contains, tmp_path):
    if setup:
        _setup(setup, tmp_path)
    args = ["mil", "convert", *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    assert_clear_error(args, contains, watch=[tmp_path, GOLDEN])


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        pytest.param(["mil", "eval", ABMIL, "--dataset", "musk1"], ["medmoe mil convert", "--model"],
                     id="eval-reference-file-without-model-name"),
        pytest.param(["mil", "predict", ABMIL, "musk1", "--out", "{tmp}/p.csv"], ["medmoe mil convert"],
                     id="predict-reference-file-without-model-name"),
    ],
)
def test_inference_on_a_reference_file_points_to_convert(args, contains, tmp_path):
    assert_clear_error([a.replace("{tmp}", str(tmp_path)) for a in args], contains, watch=[tmp_path, GOLDEN])
