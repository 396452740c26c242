"""Bad-input cases: checkpoint folders and trainer states (missing, truncated, wrong format, pickle payloads,
hostile config sizes, the wrong family for the command) given to `mil eval/predict/embed`, `seg infer`,
`mosaic eval` and `mil train --resume`.

Every case copies a good tiny checkpoint (or run folder) into its own folder, damages it, runs the command
and checks one clear ``error:`` line, exit code 2 and that no file changed. No case lets pickle code run: the
payload would create ``PWNED`` in the case folder, and the folder is hashed before and after.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_harness import assert_clear_error, run_cli

from medmoe.data import write_trident_h5
from medmoe.engine.checkpoint import save_checkpoint
from medmoe.registry import create_model

DIM = 8
META_KEY = "medmoe_config"  # where save_checkpoint embeds the config in model.safetensors


class _Payload:
    """A pickle that would create a file if anything unpickled it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _rewrite_config(ckpt: Path, change) -> None:
    """Apply ``change(info)`` to the config in ``config.json`` and the one embedded in the weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = ckpt / "model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    info = json.loads(meta[META_KEY])
    change(info)
    meta[META_KEY] = json.dumps(info)
    save_file(load_file(str(weights)), str(weights), metadata=meta)
    (ckpt / "config.json").write_text(json.dumps(info))


def _drop_embedded_config(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = ckpt / "model.safetensors"
    save_file(load_file(str(weights)), str(weights))


def _missing(ckpt: Path) -> None:
    shutil.rmtree(ckpt)


def _empty(ckpt: Path) -> None:
    shutil.rmtree(ckpt)
    ckpt.mkdir()


def _truncated(ckpt: Path) -> None:
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _header_only(ckpt: Path) -> None:
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:8])


def _garbage(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"this is not a safetensors file" * 10)


def _pickle_as_weights(ckpt: Path) -> None:
    torch.save({"w": _Payload(str(ckpt.parent / "PWNED"))}, ckpt / "model.safetensors")


def _corrupt_config_no_embedded(ckpt: Path) -> None:
    _drop_embedded_config(ckpt)
    (ckpt / "config.json").write_text("{not json")


def _no_config_at_all(ckpt: Path) -> None:
    _drop_embedded_config(ckpt)
    (ckpt / "config.json").unlink()


def _lacks_model_name(ckpt: Path) -> None:
    _rewrite_config(ckpt, lambda info: info.pop("model_name"))


def _unknown_model(ckpt: Path) -> None:
    _rewrite_config(ckpt, lambda info: info.update(model_name="nosuchmil.base"))


def _unknown_setting(ckpt: Path) -> None:
    _rewrite_config(ckpt, lambda info: info["model_config"].update(frobnicate=3))


def _hostile_dims(ckpt: Path) -> None:
    _rewrite_config(ckpt, lambda info: info["model_config"].update(in_dim=10**6, embed_dim=10**6))


def _wrong_shapes(ckpt: Path) -> None:
    _rewrite_config(ckpt, lambda info: info["model_config"].update(embed_dim=16))


def _weights_file_is_a_folder(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").mkdir()


MIL_EVAL = ["mil", "eval", "{ckpt}", "--features", "{features}", "--labels", "{labels}"]
MIL_PREDICT = ["mil", "predict", "{ckpt}", "{features}", "--out", "{tmp}/preds.csv"]
MIL_EMBED = ["mil", "embed", "{ckpt}", "{features}", "--out", "{tmp}/emb.h5"]

CHECKPOINT_CASES = [
    pytest.param(MIL_EVAL, _missing, ["does not exist"], id="mil-eval-checkpoint-missing"),
    pytest.param(MIL_EVAL, _empty, ["without weights", "model.safetensors"], id="mil-eval-checkpoint-empty-folder"),
    pytest.param(MIL_EVAL, _truncated, ["corrupt or truncated"], id="mil-eval-weights-truncated"),
    pytest.param(MIL_PREDICT, _truncated, ["corrupt or truncated"], id="mil-predict-weights-truncated"),
    pytest.param(MIL_EMBED, _truncated, ["corrupt or truncated"], id="mil-embed-weights-truncated"),
    pytest.param(MIL_EVAL, _header_only, ["corrupt or truncated"], id="mil-eval-weights-8-bytes"),
    pytest.param(MIL_EVAL, _garbage, ["corrupt or truncated"], id="mil-eval-weights-not-safetensors"),
    pytest.param(MIL_EVAL, _pickle_as_weights, ["corrupt or truncated"], id="mil-eval-pickle-payload-as-weights"),
    pytest.param(MIL_EVAL, _weights_file_is_a_folder, ["model.safetensors"], id="mil-eval-weights-is-a-folder"),
    pytest.param(MIL_EVAL, _corrupt_config_no_embedded, ["not a medmoe checkpoint", "model name"],
                 id="mil-eval-config-json-corrupt"),
    pytest.param(MIL_EVAL, _no_config_at_all, ["not a medmoe checkpoint", "model name"], id="mil-eval-no-config"),
    pytest.param(MIL_EVAL, _lacks_model_name, ["lacks 'model_name'"], id="mil-eval-config-lacks-model-name"),
    pytest.param(MIL_EVAL, _unknown_model, ["unknown model", "nosuchmil"], id="mil-eval-config-unknown-model"),
    pytest.param(MIL_EVAL, _unknown_setting, ["frobnicate", "newer medmoe"], id="mil-eval-config-unknown-setting"),
    pytest.param(MIL_EVAL, _hostile_dims, ["TB of weights", "MEDMOE_MAX_MODEL_GB"], id="mil-eval-config-hostile-dims"),
    pytest.param(MIL_PREDICT, _hostile_dims, ["TB of weights", "--max-model-gb"], id="mil-predict-config-hostile-dims"),
    pytest.param(MIL_EVAL, _wrong_shapes, ["do not match the saved model config", "size mismatch"],
                 id="mil-eval-weights-do-not-match-config"),
    pytest.param(["--max-model-gb", "1e-7", *MIL_EVAL], None, ["limit set by MEDMOE_MAX_MODEL_GB", "kB"],
                 id="mil-eval-model-above-max-model-gb"),
    pytest.param(["seg", "infer", "{ckpt}", "{vols}", "--out", "{tmp}/seg_out"], None,
                 ["not a segmentation checkpoint"], id="seg-infer-given-a-mil-checkpoint"),
    pytest.param(["mosaic", "eval", "{ckpt}", "--data", "{tmp}"], None, ["not a MOSAIC one"],
                 id="mosaic-eval-given-a-mil-checkpoint"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny MeanMIL checkpoint (``in_dim`` 8), a feature folder it can score, and a NIfTI volume folder."""
    root = tmp_path_factory.mktemp("bad_ckpt_inputs")
    torch.manual_seed(0)
    model = create_model("meanmil.base", in_dim=DIM, num_classes=2, embed_dim=8)
    ckpt = save_checkpoint(root / "ckpt", model, {"class_names": ["0", "1"], "task": "classification"})
    rng = np.random.default_rng(0)
    features = root / "features"
    features.mkdir()
    rows = []
    for i in range(4):
        write_trident_h5(features / f"s{i}.h5", rng.standard_normal((5, DIM)).astype(np.float32))
        rows.append(f"s{i},{i % 2}\n")
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(rows))
    from medmoe.data.volumes import make_synthetic_volumes

    make_synthetic_volumes(root / "vols", n_cases=1, shape=(16, 16, 16), num_classes=2)
    return {"ckpt": ckpt, "features": str(features), "labels": str(labels), "vols": str(root / "vols" / "imagesTr")}


@pytest.mark.parametrize(("args", "damage", "contains"), CHECKPOINT_CASES)
def test_bad_checkpoints(args, damage, contains, tmp_path, inputs):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(inputs["ckpt"], ckpt)
    if damage is not None:
        damage(ckpt)
    values = {**inputs, "ckpt": str(ckpt), "tmp": str(tmp_path)}
    filled = []
    for a in args:
        for key, value in values.items():
            a = a.replace("{" + key + "}", str(value))
        filled.append(a)
    assert_clear_error(filled, contains, watch=[tmp_path, Path(inputs["features"])])
    assert not (tmp_path / "PWNED").exists()


# --- trainer states met by `mil train --resume` ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 3-fold, 1-epoch MeanMIL run on a generated feature folder (a few seconds)."""
    from medmoe.data import make_synthetic_feature_folder

    root = tmp_path_factory.mktemp("bad_ckpt_run")
    folder = make_synthetic_feature_folder(root / "data", n_slides=9, n_patches=(4, 8), dim=DIM, num_classes=2,
                                           seed=0)
    args = ["mil", "train", "-m", "meanmil.base", "--set", "embed_dim=8", "--features", str(folder.features_dir),
            "--labels", str(folder.labels_csv), "--k", "3", "--epochs", "1", "--keep-last-state"]
    out = run_cli([*args, "--out", str(root / "run")])
    assert out.exit_code == 0, out.output
    return root / "run", args


def _payload_state(path: Path) -> None:
    torch.save({"epoch": 0, "model": _Payload(str(path.parent / "PWNED"))}, path)


def _truncated_state(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _garbage_state(path: Path) -> None:
    path.write_bytes(b"\x00\x01garbage" * 20)


@pytest.mark.parametrize(
    ("damage", "contains"),
    [
        pytest.param(_payload_state, ["trainer_state.pt", "holds python objects that medmoe does not load"],
                     id="mil-resume-trainer-state-pickle-payload"),
        pytest.param(_truncated_state, ["trainer_state.pt", "corrupt or truncated"],
                     id="mil-resume-trainer-state-truncated"),
        pytest.param(_garbage_state, ["trainer_state.pt", "corrupt or truncated"],
                     id="mil-resume-trainer-state-not-a-torch-file"),
    ],
)
def test_bad_trainer_states(damage, contains, tmp_path, tiny_run):
    run, args = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy / "seed0" / "fold0" / "trainer_state.pt")
    out = assert_clear_error([*args, "--out", str(copy), "--resume"], contains, watch=[tmp_path])
    line = out.error_lines[0]
    assert "weights_only" not in line  # PyTorch's advice to unpickle anyway is not passed on
    assert not (tmp_path / "PWNED").exists()
