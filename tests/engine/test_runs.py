"""Run folders (manifest first, refusals, overwrite, resume checks, write faults) and the divergence checks."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from torch import nn

from medmoe.engine.divergence import TrainingDivergedError, check_finite_loss, check_finite_model
from medmoe.engine.runs import (
    MANIFEST_NAME,
    RunFolderError,
    RunManifest,
    RunWriteError,
    check_run_folder,
    data_identity,
    extend_manifest,
    manifest_checkpoints,
    read_manifest,
    start_run_folder,
    writing,
)


def _manifest(**identity):
    return RunManifest("mil-cv", {"model_name": "abmil.base", "k": 3, **identity}, ["seed0/fold0", "seed0/fold1"])


def test_new_folder_gets_the_manifest_first(tmp_path):
    out = tmp_path / "a" / "run"
    plan = start_run_folder(out, _manifest())
    assert plan.action == "new" and [p.name for p in out.iterdir()] == [MANIFEST_NAME]
    saved = read_manifest(out)
    assert saved.identity == _manifest().identity and saved.members == ["seed0/fold0", "seed0/fold1"]
    raw = json.loads((out / MANIFEST_NAME).read_text())
    assert raw["format"] == 1 and raw["medmoe_version"] and raw["created"]


def test_non_empty_folder_needs_resume_or_overwrite(tmp_path):
    start_run_folder(tmp_path, _manifest())
    (tmp_path / "seed0").mkdir()
    with pytest.raises(RunFolderError, match="already holds a mil-cv run; pass resume=True to continue it, "
                                             "overwrite=True to delete it"):  # a Python caller's keywords
        start_run_folder(tmp_path, _manifest())
    # resume with the same identity: accepted, nothing written
    before = (tmp_path / MANIFEST_NAME).read_text()
    assert start_run_folder(tmp_path, _manifest(), resume=True).action == "resume"
    assert (tmp_path / MANIFEST_NAME).read_text() == before
    # resume with another identity: every difference named
    with pytest.raises(RunFolderError, match=r"; k: 3 in the folder, 5 now"):
        start_run_folder(tmp_path, _manifest(k=5), resume=True)
    # overwrite: the old run's entries are gone, the new manifest is there
    assert start_run_folder(tmp_path, _manifest(k=5), overwrite=True).action == "overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]
    assert read_manifest(tmp_path).identity["k"] == 5


def _seeded(seeds, hashes):
    members = [f"seed{s}/fold{f}" for s in seeds for f in range(2)]
    return RunManifest("mil-cv", {"model_name": "abmil.base", "k": 2, "seeds": list(seeds),
                                  "split_hashes": {str(s): h for s, h in zip(seeds, hashes)}}, members)


def test_resume_on_new_seeds_extends_the_run(tmp_path):
    """One process per seed fills one run folder (benchmarks/full_protocol/run_units.sh): a resume that
    differs only by new seeds adds them to the manifest; a changed split of a seed already there is refused."""
    start_run_folder(tmp_path, _seeded([0], ["h0"]))
    (tmp_path / "seed0").mkdir()
    plan = start_run_folder(tmp_path, _seeded([1], ["h1"]), resume=True)
    assert plan.action == "extend"
    saved = read_manifest(tmp_path)
    assert saved.identity["seeds"] == [0, 1] and saved.identity["split_hashes"] == {"0": "h0", "1": "h1"}
    assert saved.members == [f"seed{s}/fold{f}" for s in (0, 1) for f in range(2)]
    # the same seed again: a plain resume, nothing written
    before = (tmp_path / MANIFEST_NAME).read_text()
    assert start_run_folder(tmp_path, _seeded([0, 1], ["h0", "h1"]), resume=True).action == "resume"
    assert (tmp_path / MANIFEST_NAME).read_text() == before
    # seed 0 split differently: another run
    with pytest.raises(RunFolderError, match="split hashes"):
        start_run_folder(tmp_path, _seeded([0, 2], ["other", "h2"]), resume=True)
    # another setting besides the new seed: another run
    other = _seeded([3], ["h3"])
    other.identity["k"] = 5
    with pytest.raises(RunFolderError, match="k: 2 in the folder, 5 now"):
        start_run_folder(tmp_path, other, resume=True)
    # concurrent extensions merge under the lock: none is lost
    extend_manifest(tmp_path, _seeded([4], ["h4"]))
    extend_manifest(tmp_path, _seeded([5], ["h5"]))
    assert read_manifest(tmp_path).identity["seeds"] == [0, 1, 4, 5]


def test_folders_of_other_files_are_never_deleted(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work\n")
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunFolderError, match="thesis.tex"):
            start_run_folder(tmp_path, _manifest(), **kwargs)
    assert (tmp_path / "thesis.tex").read_text() == "years of work\n"


def test_old_runs_without_manifest_cannot_be_resumed_but_can_be_overwritten(tmp_path):
    (tmp_path / "seed0" / "fold0").mkdir(parents=True)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(RunFolderError, match="older medmoe"):
        check_run_folder(tmp_path, _manifest(), resume=True)
    assert check_run_folder(tmp_path, _manifest(), overwrite=True).action == "overwrite"


def test_allowed_entries_do_not_count_and_survive_overwrite(tmp_path):
    (tmp_path / "synthetic_data").mkdir()
    (tmp_path / "synthetic_data" / "x.npz").write_bytes(b"1")
    assert check_run_folder(tmp_path, allow=["synthetic_data"]).action == "new"
    start_run_folder(tmp_path, _manifest(), allow=["synthetic_data"])
    (tmp_path / "report.md").write_text("old")
    start_run_folder(tmp_path, _manifest(), overwrite=True, allow=["synthetic_data"])
    assert (tmp_path / "synthetic_data" / "x.npz").is_file() and not (tmp_path / "report.md").exists()


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "run"):
        with pytest.raises(RunFolderError, match="is a file"):
            start_run_folder(out, _manifest())


def test_manifest_checkpoints_are_the_members(tmp_path):
    start_run_folder(tmp_path, _manifest())
    for fold in ("fold0", "fold1", "fold9"):  # fold9: stale, not in the manifest
        ckpt = tmp_path / "seed0" / fold / "checkpoint"
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text("{}")
    assert [p.parent.name for p in manifest_checkpoints(tmp_path)] == ["fold0", "fold1"]
    (tmp_path / "seed0" / "fold1" / "checkpoint" / "config.json").unlink()
    with pytest.raises(RunFolderError, match="not finished.*seed0/fold1"):
        manifest_checkpoints(tmp_path)
    assert manifest_checkpoints(tmp_path / "nowhere") is None


def test_a_comparison_grid_is_not_one_ensemble(tmp_path):
    start_run_folder(tmp_path, RunManifest("mil-compare", {}))
    for embed in ("linear", "mammoth"):
        start_run_folder(tmp_path / "musk1" / "abmil" / embed, _manifest())
    with pytest.raises(RunFolderError, match="comparison grid of 2 runs.*musk1/abmil/linear"):
        manifest_checkpoints(tmp_path)


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "disk is full"), (errno.EACCES, "permission denied"),
                                             (errno.EROFS, "read-only")])
def test_write_faults_become_one_clear_error(tmp_path, code, words):
    with pytest.raises(RunWriteError, match=words) as info, writing(tmp_path / "state.pt",
                                                                    keep="the best checkpoint (epoch 2) is intact"):
        raise OSError(code, "boom")
    assert "state.pt" in str(info.value) and "epoch 2" in str(info.value)
    with pytest.raises(FileNotFoundError), writing(tmp_path / "x"):  # other errors pass unchanged
        raise FileNotFoundError(errno.ENOENT, "gone")


def test_data_identity_changes_with_the_data():
    class Bags:
        def __init__(self, ids, labels):
            self.bag_ids, self.labels, self.groups = ids, labels, ids
            self.feature_dim, self.class_names = 8, ["a", "b"]

    base = data_identity(Bags(["s1", "s2"], [0, 1]))
    assert base == data_identity(Bags(["s1", "s2"], [0, 1]))
    assert base != data_identity(Bags(["s1", "s2"], [1, 0]))
    assert base != data_identity(Bags(["s1", "s3"], [0, 1]))


def test_divergence_checks():
    assert check_finite_loss(torch.tensor(0.5), "step 1", "lower --lr") == 0.5
    with pytest.raises(TrainingDivergedError, match="loss is nan at epoch 2, step 3; lower --lr") as info:
        check_finite_loss(torch.tensor(float("nan")), "epoch 2, step 3", "lower --lr")
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, RuntimeError)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    check_finite_model(model, "epoch 1", "lower --lr")
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match=r"NaN/inf at epoch 1 \(0.weight\); this model is not saved"):
        check_finite_model(model, "epoch 1", "lower --lr")
