"""Nested cross-validation with Optuna (medmoe.engine.mil.tuning): outputs, the test fold never influencing a
choice, resume of a killed study, several processes on one SQLite storage, the search space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from engine_synthetic import TINY_ABMIL, Killed, synthetic_bags

pytest.importorskip("optuna")

from medmoe.data import InMemoryBags, stratified_group_kfold
from medmoe.engine import TrainConfig
from medmoe.engine.mil.search_space import DEFAULT_SPACE, load_space
from medmoe.engine.mil.tuning import (
    applicable_params,
    apply_params,
    compare_tuned,
    inner_splits,
    open_storage,
    run_nested_cv,
)

CFG = TrainConfig(epochs=1, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")
SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
         "dropout": {"type": "float", "low": 0.0, "high": 0.3, "target": "model"}}
TINY_MAMMOTH = {"num_experts": 2, "num_slots": 2, "num_heads": 2, "slot_dim": 8}


def _data() -> InMemoryBags:
    return synthetic_bags(24, groups=True)


def _one_split(data: InMemoryBags):
    """The first outer split of 4 folds (one outer fold keeps each test fast)."""
    return stratified_group_kfold(data.labels, data.groups, 4, 0, val_folds=1, bag_ids=data.bag_ids)[:1]


def _trials(out_dir: Path, fold: str = "seed0-fold0") -> list[dict[str, str]]:
    import csv

    with (out_dir / "studies" / fold / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


def _check_outputs(res, tmp_path):
    assert len(res.chosen) == 1 and set(res.chosen[0]["params"]) == {"lr", "dropout"}
    assert res.chosen[0]["metric"] == "auroc" and res.chosen[0]["trials"]["COMPLETE"] == 2
    assert 1e-3 <= res.chosen[0]["params"]["lr"] <= 1e-2
    assert len(res.cv.runs) == 1 and res.cv.runs[0]["test"] is not None
    # the final run trained with the chosen settings
    assert res.cv.runs[0]["model_overrides"]["dropout"] == pytest.approx(res.chosen[0]["params"]["dropout"])
    info = json.loads((tmp_path / "seed0" / "fold0" / "checkpoint" / "config.json").read_text())
    assert info["train_config"]["lr"] == pytest.approx(res.chosen[0]["params"]["lr"])
    for name in ("best_params.json", "best_params.csv", "results.json", "summary.md", "space.yaml", "optuna.db",
                 "manifest.json", "studies/seed0-fold0/optimization_history.png", "studies/seed0-fold0/trials.csv"):
        assert (tmp_path / name).is_file(), name
    md = (tmp_path / "summary.md").read_text()
    assert "Chosen settings per outer fold" in md and "| auroc |" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tuning"]["folds"][0]["params"] == res.chosen[0]["params"]
    rows = _trials(tmp_path)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    assert len(json.loads(rows[0]["inner_scores"])) == 3  # one score per inner fold
    best = max(rows, key=lambda r: float(r["value"]))
    assert float(best["lr"]) == pytest.approx(res.chosen[0]["params"]["lr"])
    from medmoe.viz.report import build_report

    html = build_report(tmp_path).read_text()
    assert "Chosen settings per outer fold" in html and "optimization_history.png" in html


def test_inner_folds_never_hold_an_outer_test_bag():
    data = synthetic_bags(40, groups=True)
    for outer in stratified_group_kfold(data.labels, data.groups, 4, 1, val_folds=1):
        test = set(outer.test)
        pool = set(outer.train) | set(outer.val)
        inner = inner_splits(outer, data, 3, 1)
        assert len(inner) == 3
        for s in inner:
            assert not (set(s.train) | set(s.val) | set(s.test)) & test
            assert set(s.train) | set(s.val) | set(s.test) == pool
            groups = lambda idx: {data.groups[i] for i in idx}
            assert not groups(s.train) & groups(s.test) and not groups(s.val) & groups(s.test)


def test_outer_test_fold_never_influences_a_choice(tmp_path):
    """Corrupt the outer test fold (labels flipped, features replaced by large noise): the chosen settings
    and their inner scores stay identical; only the final test metrics change. The clean run's outputs
    (chosen settings, table, plots, final run) are checked too."""
    data = _data()
    split = _one_split(data)
    test = set(split[0].test)
    g = torch.Generator().manual_seed(7)
    feats = [data[i].features if i not in test else 50 * torch.randn(data[i].features.shape, generator=g)
             for i in range(len(data))]
    labels = [y if i not in test else 1 - y for i, y in enumerate(data.labels)]
    corrupt = InMemoryBags(feats, labels, bag_ids=data.bag_ids, groups=data.groups, class_names=data.class_names)
    runs = [run_nested_cv("abmil.base", ds, splits=split, trials=2, cfg=CFG, space=SPACE, out_dir=tmp_path / name,
                          model_overrides=TINY_ABMIL)
            for name, ds in (("clean", data), ("corrupt", corrupt))]
    clean, bad = runs
    _check_outputs(clean, tmp_path / "clean")
    assert clean.chosen[0]["params"] == bad.chosen[0]["params"]
    assert clean.chosen[0]["inner_scores"] == bad.chosen[0]["inner_scores"]
    same = ("state", "value", "inner_scores", "lr", "dropout")
    assert [[r[c] for c in same] for r in _trials(tmp_path / "clean")] == [
        [r[c] for c in same] for r in _trials(tmp_path / "corrupt")]
    assert clean.cv.runs[0]["test"] != bad.cv.runs[0]["test"]  # the test fold itself did change


def test_killed_study_resumes_and_fills_its_budget(tmp_path, monkeypatch):
    from medmoe.engine.mil import trainer

    data = _data()
    split = _one_split(data)
    real = trainer.train_one_fold
    calls = []

    def die_in_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # first inner fold of the second trial
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_fold", die_in_second_trial)
    kwargs = {"splits": split, "trials": 2, "cfg": CFG, "space": SPACE, "out_dir": tmp_path,
              "model_overrides": TINY_ABMIL}
    with pytest.raises(Killed):
        run_nested_cv("abmil.base", data, **kwargs)
    monkeypatch.undo()
    assert not (tmp_path / "results.json").exists()
    import optuna

    study = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")[0],
                              storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    first = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(first) == 1
    with pytest.raises(Exception, match="resume|overwrite"):
        run_nested_cv("abmil.base", data, **kwargs)  # a non-empty folder needs resume
    res = run_nested_cv("abmil.base", data, resume=True, **kwargs)
    states = [r["state"] for r in _trials(tmp_path)]
    # the killed trial stays RUNNING (as after SIGKILL; its heartbeat marks it failed later): not counted
    assert states == ["COMPLETE", "RUNNING", "COMPLETE"]
    assert _trials(tmp_path)[0]["lr"] == str(first[0].params["lr"])  # the finished trial was kept
    assert res.chosen[0]["trials"]["COMPLETE"] == 2 and (tmp_path / "results.json").is_file()


@pytest.mark.slow
def test_two_processes_share_one_sqlite_storage(tmp_path):
    """Two search-only processes add trials to the same studies; the final call only trains the outer fold."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from engine_synthetic import TINY_ABMIL, synthetic_bags
        from medmoe.data import stratified_group_kfold
        from medmoe.engine import TrainConfig
        from medmoe.engine.mil.tuning import run_nested_cv
        data = synthetic_bags(24, groups=True)
        split = stratified_group_kfold(data.labels, data.groups, 4, 0, val_folds=1, bag_ids=data.bag_ids)[:1]
        cfg = TrainConfig(epochs=1, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")
        run_nested_cv("abmil.base", data, splits=split, trials=4, cfg=cfg, space={SPACE!r},
                      out_dir={str(tmp_path / "run")!r}, model_overrides=TINY_ABMIL, storage=sys.argv[1],
                      search_only=True)
    """)
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'shared.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, url], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    data = _data()
    res = run_nested_cv("abmil.base", data, splits=_one_split(data), trials=4, cfg=CFG, space=SPACE,
                        out_dir=tmp_path / "run", model_overrides=TINY_ABMIL, storage=url, resume=True)
    import optuna

    study = optuna.load_study(study_name=res.chosen[0]["study"], storage=url)
    states = [t.state.name for t in study.trials]
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(done) <= 5, states  # the budget, maybe one more started by the other process meanwhile
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes contributed
    assert len(res.cv.runs) == 1 and not (tmp_path / "run" / "optuna.db").exists()


def test_bad_storage_url_fails_before_any_file(tmp_path):
    data = _data()
    with pytest.raises(ValueError, match="storage"):
        run_nested_cv("abmil.base", data, splits=_one_split(data), trials=1, cfg=CFG, out_dir=tmp_path / "x",
                      storage="nosuchdb://host/db")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="database URL"):
        open_storage("tune.db")


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lr": {"type": "float", "low": 1e-3, "high": 1e-5}}, "low"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "log scale"),
        ({"lr": {"type": "gauss", "low": 0.0, "high": 1.0}}, "type"),
        ({"seed": {"type": "int", "low": 0, "high": 3}}, "not a tunable"),
        ({"num_experts": {"type": "categorical", "choices": []}}, "non-empty"),
        ({"lr": {"type": "float", "low": 1e-5, "hi": 1e-3}}, "unknown keys"),
        ({"lr": [1e-5, 1e-3]}, "mapping"),
        ({}, "no parameter"),
    ],
)
def test_bad_search_spaces(space, message):
    with pytest.raises(ValueError, match=message):
        load_space(space)


def test_space_file_merge_and_targets(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\nepochs: null\n")
    merged = load_space(path, merge=True)
    assert "epochs" not in merged.names() and set(merged.names()) == set(DEFAULT_SPACE) - {"epochs"}
    assert load_space(path).names() == ["lr"]
    data = _data()
    space = load_space(None)
    linear = {p.name for p in applicable_params(space, "abmil.base", {}, data, CFG)}
    assert linear == {"lr", "weight_decay", "epochs", "patience", "dropout"}  # no Mammoth arguments
    mammoth = {p.name for p in applicable_params(space, "abmil.base_mammoth", {}, data, CFG)}
    assert {"num_experts", "num_slots"} <= mammoth
    drop = load_space({"attention_drop": {"type": "float", "low": 0.0, "high": 0.5, "target": "model"},
                       "lr": SPACE["lr"]})
    assert [p.name for p in applicable_params(drop, "dtfd.base", {}, data, CFG)] == ["attention_drop", "lr"]
    assert [p.name for p in applicable_params(drop, "abmil.base", {}, data, CFG)] == ["lr"]  # no such key
    specs = applicable_params(space, "abmil.base_mammoth", {}, data, CFG)
    cfg, over = apply_params({"lr": 3e-4, "epochs": 5, "dropout": 0.1, "num_experts": 4}, specs, CFG,
                             {"patch_embed_args": {"num_slots": 2}})
    assert cfg.lr == 3e-4 and cfg.epochs == 5 and cfg.min_epochs <= 5
    assert over == {"dropout": 0.1, "patch_embed_args": {"num_slots": 2, "num_experts": 4}}


def test_compare_tuned_gives_every_variant_the_same_budget(tmp_path):
    data = _data()
    space = {"lr": SPACE["lr"], "num_slots": {"type": "categorical", "choices": [1, 2], "target": "mammoth"}}
    table = compare_tuned(["abmil"], {"toy": data}, ("linear", "mammoth"), trials=1, out_dir=tmp_path,
                          model_overrides=TINY_ABMIL, patch_embed_args={"mammoth": TINY_MAMMOTH},
                          splits=_one_split(data), cfg=CFG, space=space)
    assert [(r["patch_embed"], r["trials"]) for r in table.rows] == [("linear", 1), ("mammoth", 1)]
    lin = json.loads((tmp_path / "toy" / "abmil" / "linear" / "best_params.json").read_text())
    moe = json.loads((tmp_path / "toy" / "abmil" / "mammoth" / "best_params.json").read_text())
    assert set(lin["folds"][0]["params"]) == {"lr"} and set(moe["folds"][0]["params"]) == {"lr", "num_slots"}
    assert "same budget" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "comparison.json").is_file()


def test_bad_arguments():
    data = _data()
    with pytest.raises(ValueError, match="trials"):
        run_nested_cv("abmil.base", data, trials=0, cfg=CFG, out_dir="unused")
    with pytest.raises(ValueError, match="inner_k"):
        run_nested_cv("abmil.base", data, inner_k=2, cfg=CFG, out_dir="unused")
    with pytest.raises(ValueError, match="pruner"):
        run_nested_cv("abmil.base", data, pruner="hyperband", cfg=CFG, out_dir="unused")
