"""Bad-input cases: run folders (overwrite, resume, manifest), output paths, write faults, divergence.

One tiny ``mil train`` run (3 folds, 1 epoch) is made per module; each case then tries something a user
might do to it and asserts a one-line error and that no file of the run changed.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

import pytest
from bad_input_harness import assert_clear_error, run_cli, tree_digest

from medmoe.data import make_synthetic_feature_folder

TINY = ["--set", "embed_dim=16", "--set", "attn_dim=8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_runs_data")
    one = make_synthetic_feature_folder(root / "a", n_slides=16, n_patches=(6, 12), dim=12, num_classes=2, seed=1)
    two = make_synthetic_feature_folder(root / "b", n_slides=18, n_patches=(6, 12), dim=12, num_classes=2, seed=2)
    return one, two


def _train_args(folder, out, *extra):
    return ["mil", "train", "-m", "abmil.base", "--features", str(folder.features_dir), "--labels",
            str(folder.labels_csv), "--k", "3", "--epochs", "1", "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_runs") / "run"
    result = run_cli(_train_args(data[0], out))
    assert result.exit_code == 0, result.output
    return out


def _fill(args, data, run, tmp):
    one, two = data
    table = {"{run}": str(run), "{tmp}": str(tmp), "{feat}": str(one.features_dir), "{labels}": str(one.labels_csv),
             "{feat2}": str(two.features_dir), "{labels2}": str(two.labels_csv)}
    out = []
    for a in args:
        for key, value in table.items():
            a = a.replace(key, value)
        out.append(a)
    return out


TRAIN = ["mil", "train", "-m", "abmil.base", "--features", "{feat}", "--labels", "{labels}", "--k", "3",
         "--epochs", "1", *TINY]


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        pytest.param([*TRAIN, "--out", "{run}"], ["already holds", "--resume", "--overwrite"],
                     id="mil-train-into-existing-run"),
        pytest.param([*TRAIN, "--out", "{run}", "--resume", "--k", "4"], ["--resume", "--k: 3 in the folder, 4 now"],
                     id="mil-resume-other-k"),
        # another seed with the same settings adds that seed (how grids are filled: tests/engine/test_runs.py);
        # with another setting too it is another run
        pytest.param([*TRAIN, "--out", "{run}", "--resume", "--seed", "1", "--lr", "0.5"],
                     ["--resume", "--lr: 0.0001 in the folder, 0.5 now"], id="mil-resume-other-seed-and-lr"),
        pytest.param(["mil", "train", "-m", "abmil.base", "--features", "{feat2}", "--labels", "{labels2}", "--k", "3",
                      "--epochs", "1", *TINY, "--out", "{run}", "--resume"], ["--resume", "the data differ"],
                     id="mil-resume-other-dataset"),
        pytest.param(["mil", "train", "-m", "meanmil.base", "--features", "{feat}", "--labels", "{labels}", "--k", "3",
                      "--epochs", "1", "--out", "{run}", "--resume"], ["--resume", "--model: abmil.base in the folder, meanmil.base now"],
                     id="mil-resume-other-model"),
        pytest.param([*TRAIN, "--out", "{run}", "--resume", "--lr", "0.01"], ["--resume", "--lr: 0.0001 in the folder, 0.01 now"],
                     id="mil-resume-other-lr"),
        pytest.param([*TRAIN, "--out", "{run}", "--resume", "--set", "dropout=0.5"], ["--resume", "--set"],
                     id="mil-resume-other-set"),
        pytest.param([*TRAIN, "--out", "{run}", "--resume", "--overwrite"], ["--resume", "--overwrite", "only one"],
                     id="mil-resume-and-overwrite"),
        pytest.param(["mil", "compare", "-m", "abmil", "--features", "{feat}", "--labels", "{labels}", "--k", "3",
                      "--epochs", "1", "--out", "{run}"], ["already holds", "--overwrite"],
                     id="mil-compare-into-a-train-run"),
        pytest.param(["mil", "compare", "-m", "abmil", "--features", "{feat}", "--labels", "{labels}", "--k", "3",
                      "--epochs", "1", "--out", "{run}", "--resume"], ["--resume", "kind"],
                     id="mil-compare-resume-a-train-run"),
    ],
)
def test_existing_run(args, contains, data, run, tmp_path):
    assert_clear_error(_fill(args, data, run, tmp_path), contains, watch=[run])


@pytest.mark.parametrize(
    ("prepare", "args", "contains"),
    [
        pytest.param("file", [*TRAIN, "--out", "{tmp}/target"], ["--out", "is a file"], id="mil-out-is-a-file"),
        pytest.param("file", [*TRAIN, "--out", "{tmp}/target/run"], ["--out", "is a file"],
                     id="mil-out-under-a-file"),
        pytest.param("notes", [*TRAIN, "--out", "{tmp}/target"], ["already holds other files", "notes.txt"],
                     id="mil-train-into-a-folder-of-other-files"),
        pytest.param("notes", [*TRAIN, "--out", "{tmp}/target", "--overwrite"], ["not a medmoe run", "--out"],
                     id="mil-overwrite-a-folder-of-other-files"),
        pytest.param("notes", [*TRAIN, "--out", "{tmp}/target", "--resume"], ["not a medmoe run", "nothing to resume"],
                     id="mil-resume-a-folder-of-other-files"),
        pytest.param("legacy", [*TRAIN, "--out", "{tmp}/target", "--resume"], ["older medmoe", "--overwrite"],
                     id="mil-resume-a-run-without-manifest"),
        pytest.param("bad-manifest", [*TRAIN, "--out", "{tmp}/target", "--resume"], ["manifest", "--overwrite"],
                     id="mil-resume-a-corrupt-manifest"),
        pytest.param("file", ["mil", "compare", "-m", "abmil", "--features", "{feat}", "--labels", "{labels}",
                              "--k", "3", "--epochs", "1", "--out", "{tmp}/target"], ["--out", "is a file"],
                     id="mil-compare-out-is-a-file"),
        pytest.param("none", [*TRAIN, "--out", "{tmp}/target", "--set", "nosuch=1"], ["nosuch"],
                     id="mil-train-unknown-set-key-writes-nothing"),
    ],
)
def test_output_folder(prepare, args, contains, data, run, tmp_path):
    target = tmp_path / "target"
    if prepare == "file":
        target.write_text("not a folder\n")
    elif prepare == "notes":
        target.mkdir()
        (target / "notes.txt").write_text("my notes\n")
    elif prepare in ("legacy", "bad-manifest"):
        shutil.copytree(run, target)
        if prepare == "legacy":
            (target / "manifest.json").unlink()
        else:
            (target / "manifest.json").write_text("{not json")
    assert_clear_error(_fill(args, data, run, tmp_path), contains, watch=[tmp_path])
    if prepare == "none":
        assert not target.exists(), "a refused run created its folder"


def test_overwrite_replaces_the_run_and_drops_stale_folds(data, run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    stale = target / "seed0" / "fold7"
    shutil.copytree(target / "seed0" / "fold0", stale)  # a fold of an earlier, larger run
    result = run_cli(_train_args(data[0], target, "--overwrite", "--k", "4"))
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert sorted(p.name for p in (target / "seed0").iterdir() if p.is_dir()) == [f"fold{i}" for i in range(4)]


def test_predict_ensembles_only_the_manifest_folds(data, run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    shutil.copytree(target / "seed0" / "fold0", target / "seed0" / "fold5")  # stale fold of another run
    preds = tmp_path / "p.csv"
    result = run_cli(["mil", "predict", str(target), str(data[0].features_dir), "--out", str(preds)])
    assert result.exit_code == 0, result.output
    assert "ensemble of 3 checkpoints" in result.output
    # an older run without a manifest is still read (every seed*/fold* folder)
    (target / "manifest.json").unlink()
    shutil.rmtree(target / "seed0" / "fold5")
    result = run_cli(["mil", "predict", str(target), str(data[0].features_dir), "--out", str(preds)])
    assert result.exit_code == 0 and "ensemble of 3 checkpoints" in result.output, result.output


def test_resume_of_a_finished_run_changes_nothing(data, run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    before = tree_digest(target)
    result = run_cli(_train_args(data[0], target, "--resume"))
    assert result.exit_code == 0, result.output
    after = tree_digest(target)
    changed = sorted(k for k in before if before[k] != after.get(k))
    # the folds are re-evaluated (results rewritten); the manifest and the splits stay as they were
    assert not [c for c in changed if c == "manifest.json" or c.endswith("splits.json")], changed
    assert set(after) >= set(before)


# ------------------------------------------------------------------------------------------------
# faults while writing: a read-only folder and a full disk (simulated: root ignores permissions)


def _deny_writes_under(monkeypatch, folder: Path, code: int) -> None:
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        where = Path(kwargs.get("dir") or (args[2] if len(args) > 2 else tempfile.gettempdir()))
        if where.resolve().is_relative_to(folder.resolve()):
            raise OSError(code, __import__("os").strerror(code), str(where))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("resume", [False, True], ids=["mil-train-read-only-out", "mil-resume-read-only-out"])
def test_read_only_output_folder(resume, data, run, tmp_path, monkeypatch):
    target = tmp_path / "run"
    if resume:
        shutil.copytree(run, target)
    else:
        target.mkdir()
    _deny_writes_under(monkeypatch, target, errno.EACCES)
    args = _train_args(data[0], target, *(["--resume"] if resume else []))
    assert_clear_error(args, ["cannot write", "--out", "permission denied"], watch=[tmp_path])


def test_full_disk_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    from medmoe.engine import loop as trainer  # the training loop writes the trainer state

    target = tmp_path / "run"
    real = trainer.save_trainer_state
    calls = {"n": 0}

    def full_after_two_epochs(path, state):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, state)

    monkeypatch.setattr(trainer, "save_trainer_state", full_after_two_epochs)
    args = _train_args(data[0], target)
    args[args.index("--epochs") + 1] = "4"
    out = assert_clear_error(args, ["disk is full", "--resume", "intact"])
    assert "epoch" in out.error_lines[0]
    ckpt = target / "seed0" / "fold0" / "checkpoint"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    from medmoe.engine import load_checkpoint

    load_checkpoint(ckpt)  # the last good checkpoint loads
    # --resume on the still-full disk: the same clear error, the checkpoint intact
    before = tree_digest(ckpt)
    calls["n"] = 10
    assert_clear_error([*args, "--resume"], ["disk is full"])
    assert tree_digest(ckpt) == before
    # space freed: the resume finishes the run
    monkeypatch.setattr(trainer, "save_trainer_state", real)
    result = run_cli([*args, "--resume"])
    assert result.exit_code == 0, result.output


def test_divergent_learning_rate_is_an_error(data, tmp_path):
    args = _train_args(data[0], tmp_path / "run", "--lr", "1e30")
    out = assert_clear_error(args, ["diverged", "--lr", "step"])
    assert not list((tmp_path / "run").rglob("model.safetensors")), "a diverged model was saved"
    assert out.exit_code == 2


def test_compare_processes_fill_one_folder_and_resume_checks_each_run(data, tmp_path):
    """Two `compare` processes may fill one --out (one dataset each); a resume must match each run there."""
    other = tmp_path / "cohort2"
    shutil.copytree(data[1].features_dir, other)
    grid = tmp_path / "grid"

    def compare(features, labels, *extra):
        return ["mil", "compare", "-m", "abmil", "--patch-embed", "linear", "--features", str(features), "--labels",
                str(labels), "--k", "3", "--epochs", "1", "--set", "embed_dim=8", "--set", "attn_dim=8",
                "--out", str(grid), *extra]

    first = run_cli(compare(data[0].features_dir, data[0].labels_csv))
    assert first.exit_code == 0, first.output
    second = run_cli(compare(other, data[1].labels_csv, "--resume"))  # another dataset joins the folder
    assert second.exit_code == 0, second.output
    assert (grid / "features" / "abmil" / "linear" / "manifest.json").is_file()
    assert (grid / "cohort2" / "abmil" / "linear" / "manifest.json").is_file()
    assert_clear_error(compare(other, data[1].labels_csv, "--resume", "--k", "4"), ["--k: 3 in the folder, 4 now"],
                       watch=[grid])
    assert_clear_error(["mil", "predict", str(grid), str(data[0].features_dir), "--out", str(tmp_path / "p.csv")],
                       ["comparison grid of 2 runs", "cohort2/abmil/linear"], watch=[grid])
