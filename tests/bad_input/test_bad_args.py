"""Bad-input cases: arguments, YAML in ``--set``/``--config``, flag wording, model names, expected vs internal errors.

Placeholders in the arguments: ``{tmp}`` (the case's empty folder), ``{features}``/``{labels}`` (a tiny
TRIDENT folder and its labels CSV), ``{ckpt}``/``{h5}`` (a MeanMIL checkpoint and one of the folder's feature
files), ``{vols}`` (a tiny MSD segmentation folder) and ``{cfg}`` (the case's config file, written from the
case's ``config`` text).
"""

from __future__ import annotations

import pytest
from bad_input_harness import assert_clear_error, run_cli, tree_digest

from medmoe.data import make_synthetic_feature_folder
from medmoe.data.volumes import make_synthetic_volumes

MIL = ["mil", "train", "-d", "musk1", "--out", "{tmp}/run"]
FEAT = ["mil", "train", "--features", "{features}", "--labels", "{labels}", "--out", "{tmp}/run"]
SEG = ["seg", "train", "--data", "{vols}", "--out", "{tmp}/run"]
HEATMAP = ["mil", "heatmap", "{ckpt}", "--features", "{h5}", "--out", "{tmp}/maps"]
MOSAIC = ["mosaic", "train", "--demo", "--weights", "none", "--vit", "tiny", "--datasets", "pathmnist", "--out",
          "{tmp}/run"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_args_inputs")
    folder = make_synthetic_feature_folder(root / "mil", n_slides=6, n_patches=(4, 8), dim=8, num_classes=2, seed=0)
    make_synthetic_volumes(root / "vols", n_cases=2, shape=(16, 16, 16), num_classes=2)
    from medmoe.engine.checkpoint import save_checkpoint
    from medmoe.registry import create_model

    model = create_model("meanmil.base", in_dim=8, num_classes=2, embed_dim=8)
    ckpt = save_checkpoint(root / "ckpt", model, {"class_names": ["0", "1"], "task": "classification"})
    h5 = min(folder.features_dir.glob("*.h5"))
    return {"features": str(folder.features_dir), "labels": str(folder.labels_csv), "vols": str(root / "vols"),
            "ckpt": str(ckpt), "h5": str(h5)}


def _fill(args, tmp_path, inputs, cfg=None):
    values = {"tmp": str(tmp_path), "cfg": str(cfg) if cfg else "", **inputs}
    out = []
    for a in args:
        for key, value in values.items():
            a = a.replace("{" + key + "}", value)
        out.append(a)
    return out


# --- --set / --moe: KEY=VALUE pairs with YAML values ----------------------------------------------------------
SET_CASES = [
    pytest.param([*MIL, "-m", "abmil.base", "--set", "embed_dim=[1,"], ["--set", "not valid yaml", "embed_dim"],
                 id="mil-train-set-invalid-yaml"),
    pytest.param([*MIL, "-m", "abmil.base", "--set", "dropout: {0.1"], ["--set", "KEY=VALUE"],
                 id="mil-train-set-without-equals"),
    pytest.param([*MIL, "-m", "abmil.base", "--set", "=3"], ["--set", "no KEY"], id="mil-train-set-empty-key"),
    pytest.param([*MIL, "-m", "abmil.base", "--set", "embeddim=16"], ["embeddim", "did you mean 'embed_dim'"],
                 id="mil-train-set-unknown-setting-suggests"),
    pytest.param([*MIL, "-m", "abmil.base", "--set", "embed_dim=[16, 32]"], ["embed_dim", "positive integer"],
                 id="mil-train-set-value-of-wrong-type"),
    pytest.param(["mil", "compare", "-d", "musk1", "--out", "{tmp}/cmp", "--set", "embed_dim={8"],
                 ["--set", "not valid yaml"], id="mil-compare-set-invalid-yaml"),
    pytest.param(["mil", "compare", "-d", "musk1", "--out", "{tmp}/cmp", "--moe", "num_experts=[4"],
                 ["--moe", "not valid yaml"], id="mil-compare-moe-invalid-yaml"),
    pytest.param([*SEG, "--set", "depths=[1, 1"], ["--set", "not valid yaml", "depths"],
                 id="seg-train-set-invalid-yaml"),
    pytest.param([*SEG, "--set", "depths"], ["--set", "KEY=VALUE"], id="seg-train-set-without-equals"),
]

# --- --config FILE: YAML mapping of the command's options ------------------------------------------------------
CONFIG_CASES = [
    pytest.param([*FEAT, "--config", "{cfg}"], "epochs: [1\nlr: 0.1\n", ["--config", "not valid yaml", "line"],
                 id="config-invalid-yaml"),
    pytest.param([*FEAT, "--config", "{cfg}"], "epochs: 1\n  lr: 0.1\n", ["--config", "not valid yaml"],
                 id="config-bad-indentation"),
    pytest.param([*FEAT, "--config", "{cfg}"], "- epochs\n- 1\n", ["--config", "mapping", "list"],
                 id="config-not-a-mapping"),
    pytest.param([*FEAT, "--config", "{cfg}"], "lrr: 0.1\n", ["unknown option", "lrr", "did you mean 'lr'"],
                 id="config-unknown-key-suggests-flag"),
    pytest.param([*FEAT, "--config", "{cfg}"], "learning_rate: 0.1\n", ["learning_rate", "time-col", "seed"],
                 id="config-unknown-key-lists-flag-names"),
    pytest.param([*FEAT, "--config", "{cfg}"], "set: ['embed_dim=[8,']\n", ["--set", "not valid yaml"],
                 id="config-set-invalid-yaml"),
    pytest.param([*FEAT, "--config", "{cfg}"], "epochs: many\n", ["--epochs", "integer"],
                 id="config-wrong-value-type"),
    pytest.param([*FEAT, "--config", "{tmp}/nowhere.yaml"], None, ["cannot read config file", "nowhere.yaml"],
                 id="config-missing-file"),
    pytest.param([*FEAT, "--config", "{tmp}"], None, ["cannot read config file", "directory"],
                 id="config-is-a-directory"),
    pytest.param([*FEAT, "--config", "{cfg}"], b"\xff\xfe\x00bad", ["cannot read config file"],
                 id="config-not-text"),
]

# --- plain arguments --------------------------------------------------------------------------------------------
ARG_CASES = [
    pytest.param([*MIL, "--epoch", "3"], ["no such option", "--epoch"], id="mil-train-misspelt-option"),
    pytest.param([*MIL, "--epochs", "three"], ["--epochs", "integer"], id="mil-train-epochs-not-a-number"),
    pytest.param([*MIL, "--k", "2"], ["--k", "3"], id="mil-train-k-below-3"),
    pytest.param(["mil", "train", "--out", "{tmp}/run"], ["--dataset", "--features"], id="mil-train-no-data"),
    pytest.param(["mil", "train", "--features", "{features}", "--out", "{tmp}/run"], ["--labels"],
                 id="mil-train-features-without-labels"),
    pytest.param([*MIL, "--task", "regression"], ["--task", "regression"], id="mil-train-unknown-task"),
    pytest.param([*FEAT, "--label-cols", ","], ["--label-cols"], id="mil-train-empty-label-cols"),
    pytest.param(["--max-model-gb", "0", "mil", "models"], ["--max-model-gb", "positive"],
                 id="max-model-gb-not-positive"),
    pytest.param(["--plugin", "no_such_module_xyz", "mil", "models"], ["no_such_module_xyz"],
                 id="plugin-module-missing"),
    pytest.param(["seg", "train", "--out", "{tmp}/run"], ["--data", "--dataset"], id="seg-train-no-data"),
    pytest.param([*MOSAIC, "--normalize", "foo"], ["--normalize", "foo", "imagenet"],
                 id="mosaic-train-unknown-normalization"),
    pytest.param([*MOSAIC, "--routing", "banana"], ["banana", "mosaic"], id="mosaic-train-unknown-routing"),
    pytest.param([*HEATMAP, "--cmap", "virdis"], ["--cmap", "colour map", "did you mean 'viridis'"],
                 id="heatmap-unknown-colour-map"),
    pytest.param([*HEATMAP, "--normalize", "zscore"], ["--normalize", "percentile"], id="heatmap-unknown-normalize"),
    pytest.param([*HEATMAP, "--embedding", "umap"], ["--embedding", "tsne"], id="heatmap-unknown-embedding"),
    pytest.param([*HEATMAP, "--top-k", "-3"], ["--top-k", "at least 0"], id="heatmap-negative-top-k"),
    pytest.param([*HEATMAP, "--max-size", "0"], ["--max-size", "at least 16"], id="heatmap-max-size-zero"),
    pytest.param([*HEATMAP, "--device", "banana"], ["--device", "not a device"], id="heatmap-unknown-device"),
    pytest.param([*HEATMAP, "--device", "cuda:99"], ["--device", "cuda:99"], id="heatmap-missing-cuda-device"),
    pytest.param([*HEATMAP, "--patch-size-level0", "0"], ["--patch-size-level0", "positive"],
                 id="heatmap-patch-size-zero"),
]

# --- model names --------------------------------------------------------------------------------------------
NAME_CASES = [
    pytest.param([*MIL, "-m", "abmill.base"], ["abmill", "did you mean 'abmil'"], id="mil-model-misspelt"),
    pytest.param([*MIL, "-m", "transmill"], ["transmill", "did you mean 'transmil'"],
                 id="mil-model-misspelt-short-name"),
    pytest.param([*MIL, "-m", "zzzz.base"], ["zzzz", "the models are", "abmil", "--plugin"],
                 id="mil-model-nothing-close-lists-models"),
    pytest.param(["mil", "compare", "-d", "musk1", "--out", "{tmp}/cmp", "--patch-embed", "banana"],
                 ["unknown patch_embed kind 'banana'", "mammoth"], id="mil-compare-unknown-patch-embed"),
    pytest.param(["mil", "compare", "-d", "musk1", "--out", "{tmp}/cmp", "--metric", "aurco"],
                 ["unknown --metric 'aurco'", "did you mean 'auroc'", "balanced_accuracy_tuned"],
                 id="mil-compare-unknown-plot-metric"),
    pytest.param(["mil", "compare", "-d", "musk1", "--out", "{tmp}/cmp", "--tune", "--metric", "nosuch"],
                 ["unknown --metric 'nosuch'", "the test metrics are"], id="mil-compare-tune-unknown-plot-metric"),
    pytest.param([*MIL, "-m", "abmil.basee"], ["no config 'basee'", "did you mean 'base'"],
                 id="mil-model-config-misspelt"),
    pytest.param([*MIL, "-m", " "], ["non-empty"], id="mil-model-name-empty"),
    pytest.param([*MIL, "-m", "abmil..uni"], ["must look like"], id="mil-model-name-malformed"),
    pytest.param([*MIL, "-m", "abmil.base", "--set", "embed_dim=1000000", "--set", "attn_dim=1000000"],
                 ["TB of weights", "MEDMOE_MAX_MODEL_GB"], id="mil-train-set-hostile-model-size"),
    pytest.param([*SEG, "-m", "unett.small"], ["unett.small", "did you mean 'unet.small'"],
                 id="seg-model-misspelt"),
    pytest.param([*SEG, "--set", "foo=1"], ["no setting 'foo'", "depths"], id="seg-train-set-unknown-setting"),
    pytest.param([*SEG, "-m", "unet.small", "--set", "chanels=[4, 8]"], ["chanels", "did you mean 'channels'"],
                 id="seg-train-baseline-setting-misspelt"),
    pytest.param([*SEG, "--set", "feature_size=48"], ["feature_size", "4 numbers"],
                 id="seg-train-set-one-number-for-four-stages"),
    pytest.param([*SEG, "--set", "feature_size=[48000, 96000, 192000, 384000]"],
                 ["TB of weights", "MEDMOE_MAX_MODEL_GB"], id="seg-train-set-hostile-model-size"),
]


@pytest.mark.parametrize(("args", "contains"), [*SET_CASES, *ARG_CASES, *NAME_CASES])
def test_bad_arguments(args, contains, tmp_path, inputs):
    assert_clear_error(_fill(args, tmp_path, inputs), contains, watch=[tmp_path])


@pytest.mark.parametrize(("args", "config", "contains"), CONFIG_CASES)
def test_bad_config_files(args, config, contains, tmp_path, inputs):
    cfg = tmp_path / "cfg.yaml"
    if isinstance(config, bytes):
        cfg.write_bytes(config)
    elif config is not None:
        cfg.write_text(config)
    out = assert_clear_error(_fill(args, tmp_path, inputs, cfg), contains, watch=[tmp_path])
    line = out.error_lines[0]
    assert "set_" not in line and "'seeds'" not in line  # the keys a user writes, not Python parameter names


# --- expected vs internal errors --------------------------------------------------------------------------------


def _break_load_dataset(monkeypatch, exc: BaseException | None = None, builtin: bool = False):
    """Make ``mil train`` fail early: with ``exc`` (raised in this test file, i.e. outside medmoe), or
    ``builtin``: a ValueError raised by Python itself in medmoe's own frame (``"".index(task, None)`` called
    where ``resolve_task(task, label_cols)`` was: "substring not found", like ``min([])`` on an empty CSV)."""
    import medmoe.engine.mil.inputs as mil_inputs

    if builtin:
        monkeypatch.setattr(mil_inputs, "resolve_task", "".index)
        return

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(mil_inputs, "load_dataset", fail)


@pytest.mark.parametrize(
    ("exc", "builtin"),
    [
        pytest.param(None, True, id="internal-builtin-valueerror-in-medmoe"),
        pytest.param(TypeError("unsupported operand"), False, id="internal-typeerror"),
        pytest.param(KeyError("slide_id"), False, id="internal-keyerror"),
        pytest.param(ValueError("bad value from a library"), False, id="internal-valueerror-outside-medmoe"),
    ],
)
def test_internal_errors_say_so(exc, builtin, monkeypatch, tmp_path):
    _break_load_dataset(monkeypatch, exc, builtin)
    out = run_cli(["mil", "train", "-d", "musk1", "--out", str(tmp_path / "run")])
    assert out.exit_code == 1, out.output
    assert len(out.error_lines) == 1 and "internal error" in out.error_lines[0], out.output
    assert "please report it" in out.output and "-vv" in out.output
    assert "Traceback" not in out.output
    assert tree_digest(tmp_path) == {}


def test_internal_error_traceback_with_vv(monkeypatch, tmp_path):
    _break_load_dataset(monkeypatch, builtin=True)
    out = run_cli(["-vv", "mil", "train", "-d", "musk1", "--out", str(tmp_path / "run")])
    assert out.exit_code == 1
    assert "Traceback (most recent call last)" in out.output and "substring not found" in out.output
    assert len(out.error_lines) == 1 and "internal error" in out.error_lines[0]


@pytest.mark.parametrize(
    ("exc", "contains"),
    [
        pytest.param("input", ["lower --lr", "--standardize", "another --out"], id="expected-inputerror-flags"),
        pytest.param("python-only", ["nonfinite='zero' (a python api setting"], id="expected-setting-without-flag"),
        pytest.param(PermissionError(13, "Permission denied", "/data/run"), ["permission denied", "/data/run"],
                     id="expected-oserror-one-line"),
        pytest.param(MemoryError(), ["out of memory"], id="expected-memoryerror"),
    ],
)
def test_expected_errors_are_one_line_in_the_cli_words(exc, contains, monkeypatch, tmp_path):
    from medmoe.errors import SETTING, InputError

    if exc == "input":
        exc = InputError("diverged: lower {lr}, keep {standardize_features} or use another {out_dir}",
                         lr=SETTING, standardize_features=True, out_dir=SETTING)
    elif exc == "python-only":
        exc = InputError("NaN features; pass {nonfinite}", nonfinite="zero")
    _break_load_dataset(monkeypatch, exc)
    assert_clear_error(["mil", "train", "-d", "musk1", "--out", str(tmp_path / "run")], contains, watch=[tmp_path])


def test_python_callers_keep_the_keyword_wording():
    from medmoe.errors import SETTING, InputError

    err = InputError("lower {lr} or use {precision}; {resume}", lr=SETTING, precision="32-true", resume=False)
    assert str(err) == "lower lr or use precision='32-true'; resume=False"
    assert isinstance(err, ValueError)


def test_medmoe_raise_of_a_plain_valueerror_is_expected():
    """medmoe's older refusals (a ``raise ValueError`` in its own code) stay expected errors."""
    from medmoe.cli.error_report import is_expected
    from medmoe.engine.mil.inputs import resolve_task

    with pytest.raises(ValueError) as info:
        resolve_task("regression", None)
    assert is_expected(info.value)
    with pytest.raises(ValueError) as info:
        min([])
    assert not is_expected(info.value)
