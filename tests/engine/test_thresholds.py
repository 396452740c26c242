"""Decision thresholds chosen on validation data: the choice, its storage in checkpoints, and its use in
eval, predict, ensembles and heatmaps; and proof that the test fold never influences it."""

import json
import logging

import pytest
import torch
from engine_synthetic import TINY_ABMIL, multilabel_bags, synthetic_bags
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.engine import (
    TrainConfig,
    compute_metrics,
    evaluate,
    load_checkpoint,
    predict,
    predict_ensemble,
    run_cross_validation,
    save_checkpoint,
    train_one_fold,
)
from medmoe.engine.checkpoint import read_checkpoint_info
from medmoe.engine.mil import thresholds as th
from medmoe.engine.mil.thresholds import (
    SOURCE_DEFAULT,
    SOURCE_NO_VALIDATION,
    SOURCE_ONE_CLASS,
    SOURCE_VALIDATION,
    THRESHOLDS_KEY,
    DecisionThresholds,
    apply_thresholds,
    checkpoint_thresholds,
    choose_threshold,
    choose_thresholds,
    decide_classes,
    ensemble_thresholds,
)

CFG = TrainConfig(epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu")


def balanced_accuracy(scores, positive, t):
    pred = torch.as_tensor(scores, dtype=torch.float64) >= t
    y = torch.as_tensor(positive)
    return 0.5 * (float(pred[y].double().mean()) + float((~pred[~y]).double().mean()))


# ----------------------------------------------------------------------------------------------
# the choice


def test_separable_scores_keep_one_half():
    t, source = choose_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True])
    assert (t, source) == (0.5, SOURCE_VALIDATION)


def test_shifted_scores_move_the_threshold_between_the_classes():
    # a model that ranks perfectly but calls every bag positive at 0.5 (the one-class collapse)
    scores, positive = [0.60, 0.65, 0.70, 0.90], [False, False, True, True]
    assert balanced_accuracy(scores, positive, 0.5) == 0.5
    t, _ = choose_threshold(scores, positive)
    assert t == pytest.approx(0.675)  # the midpoint between the closest scores of the two classes
    assert balanced_accuracy(scores, positive, t) == 1.0


def test_ties_go_to_one_half_when_it_is_among_the_best():
    # 0.25, 0.5 and 0.675 all give balanced accuracy 0.75
    scores, positive = [0.2, 0.45, 0.3, 0.9], [False, False, True, True]
    for t in (0.25, 0.5, 0.675):
        assert balanced_accuracy(scores, positive, t) == 0.75
    assert choose_threshold(scores, positive)[0] == 0.5


def test_ties_go_to_the_value_nearest_one_half():
    # 0.575 and 0.8 both give 0.75; 0.5 gives 0.5
    scores, positive = [0.55, 0.7, 0.6, 0.9], [False, False, True, True]
    assert balanced_accuracy(scores, positive, 0.5) == 0.5
    assert balanced_accuracy(scores, positive, 0.575) == balanced_accuracy(scores, positive, 0.8) == 0.75
    assert choose_threshold(scores, positive)[0] == pytest.approx(0.575)


@pytest.mark.parametrize("seed", range(20))
def test_the_choice_reaches_the_best_balanced_accuracy_of_any_cut(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 30, (1,), generator=g))
    scores = torch.rand(n, generator=g).round(decimals=2)  # rounded: ties between bags too
    positive = torch.rand(n, generator=g) < 0.4
    positive[0], positive[1] = True, False  # both classes
    t, source = choose_threshold(scores, positive)
    grid = torch.linspace(0, 1.01, 2021, dtype=torch.float64)
    best = max(balanced_accuracy(scores, positive, float(c)) for c in grid)
    assert source == SOURCE_VALIDATION
    assert balanced_accuracy(scores, positive, t) == pytest.approx(best)
    if balanced_accuracy(scores, positive, 0.5) == pytest.approx(best):
        assert t == 0.5


def test_one_class_or_empty_validation_keeps_one_half():
    assert choose_threshold([0.9, 0.8, 0.7], [True, True, True]) == (0.5, SOURCE_ONE_CLASS)
    assert choose_threshold([0.1, 0.2], [False, False]) == (0.5, SOURCE_ONE_CLASS)
    assert choose_threshold([], []) == (0.5, SOURCE_NO_VALIDATION)


def test_saturated_scores_can_still_call_every_bag_negative():
    # negatives at exactly 1.0 (float32 softmax saturates): only "all negative" beats 0.5 here
    t, _ = choose_threshold([1.0, 1.0, 1.0, 0.2], [False, False, False, True])
    assert t < 0.5 or t > 1.0
    assert balanced_accuracy([1.0, 1.0, 1.0, 0.2], [False, False, False, True], t) >= 0.5


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same length"):
        choose_threshold([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="NaN or inf"):
        choose_threshold([float("nan"), 0.2], [True, False])
    with pytest.raises(ValueError, match=r"\(n, L\)"):
        choose_thresholds(torch.rand(4), torch.ones(4))
    with pytest.raises(ValueError, match="one threshold per column"):
        apply_thresholds(torch.rand(4, 3), [0.5, 0.5])
    with pytest.raises(ValueError, match="different numbers"):
        ensemble_thresholds([[0.5], [0.5, 0.4]])
    with pytest.raises(ValueError, match="two classes"):
        compute_metrics(torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 2, 0]), threshold=0.4)


def test_multilabel_one_threshold_per_label():
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0]])
    scores = torch.rand(6, 3, generator=g) * 0.3 + 0.6 * targets  # label 0 and 2 separable, label 1 one-class
    scores[:, 2] = scores[:, 2] * 0.5 + 0.6  # label 2: separable but every score above 0.5
    chosen = choose_thresholds(scores, targets)
    assert chosen.sources == [SOURCE_VALIDATION, SOURCE_ONE_CLASS, SOURCE_VALIDATION]
    assert chosen.values[1] == 0.5
    for j in (0, 2):
        assert balanced_accuracy(scores[:, j], targets[:, j].bool(), chosen.values[j]) == 1.0
    assert chosen.values[2] > 0.5
    decided = apply_thresholds(scores, chosen)
    assert torch.equal(decided[:, 0], targets[:, 0].bool()) and torch.equal(decided[:, 2], targets[:, 2].bool())


def test_decisions_and_ensembles():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.55, 0.45]])
    assert decide_classes(probs, None).tolist() == [0, 1, 0]
    assert decide_classes(probs, [0.4]).tolist() == [0, 1, 1]
    assert decide_classes(torch.softmax(torch.randn(5, 3), -1), [0.1]).shape == (5,)  # multi-class: arg-max
    assert ensemble_thresholds([[0.2], DecisionThresholds([0.4], [SOURCE_VALIDATION])]) == [pytest.approx(0.3)]
    # mean(p) >= mean(t) is the sign of the mean margin over each model's own threshold
    p = torch.rand(4, 50, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.4, 0.6, 0.7])
    margin = (p - t[:, None]).mean(0) >= 0
    assert torch.equal(apply_thresholds(p.mean(0), ensemble_thresholds(t.view(-1, 1).tolist())), margin)


def test_record_round_trip_and_legacy_checkpoints():
    chosen = DecisionThresholds([0.31], [SOURCE_VALIDATION])
    record = json.loads(json.dumps(chosen.to_record()))
    assert DecisionThresholds.from_record(record) == chosen
    info = {"task": "classification", "class_names": ["a", "b"], THRESHOLDS_KEY: record}
    assert checkpoint_thresholds(info).values == [0.31]
    legacy = checkpoint_thresholds({"class_names": ["a", "b"]})
    assert legacy.values == [0.5] and legacy.sources == [SOURCE_DEFAULT]
    assert checkpoint_thresholds({"task": "multilabel", "class_names": ["x", "y", "z"]}).values == [0.5] * 3
    assert checkpoint_thresholds({"class_names": ["a", "b", "c"]}) is None  # multi-class: arg-max
    assert checkpoint_thresholds({"task": "survival", "class_names": []}) is None
    with pytest.raises(ValueError, match="has 1 binary decision"):
        checkpoint_thresholds({**info, THRESHOLDS_KEY: {"values": [0.1, 0.2]}})
    with pytest.raises(ValueError, match="must be finite numbers"):
        checkpoint_thresholds({**info, THRESHOLDS_KEY: {"values": ["x"]}})


# ----------------------------------------------------------------------------------------------
# training: chosen on validation, stored, applied to the test set


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    out = tmp_path_factory.mktemp("fold")
    data = synthetic_bags(36, seed=0), synthetic_bags(12, seed=1), synthetic_bags(12, seed=2)
    return train_one_fold("abmil.base", *data, CFG, out, TINY_ABMIL), data


def test_the_fold_stores_its_threshold_and_reports_both_metrics(fold):
    result, (_, val, test) = fold
    info = read_checkpoint_info(result.checkpoint_dir)
    stored = checkpoint_thresholds(info)
    assert stored.sources == [SOURCE_VALIDATION]
    assert info[THRESHOLDS_KEY] == result.thresholds
    assert json.loads((result.out_dir / "fold_result.json").read_text())["thresholds"] == result.thresholds
    model, _ = load_checkpoint(result.checkpoint_dir)
    v = evaluate(model, val, feature_stats=info.get("feature_stats"))
    assert stored.values[0] == choose_threshold(v.probs[:, 1], v.labels == 1)[0]  # the validation choice
    t = evaluate(model, test, feature_stats=info.get("feature_stats"))
    at_half = compute_metrics(t.probs, t.labels)
    at_tuned = compute_metrics(t.probs, t.labels, threshold=stored.values[0])
    assert result.test_metrics["threshold"] == stored.values[0]
    for name in ("balanced_accuracy", "accuracy", "f1", "kappa"):
        assert result.test_metrics[name] == pytest.approx(at_half[name], nan_ok=True)
        assert result.test_metrics[f"{name}_tuned"] == pytest.approx(at_tuned[name], nan_ok=True)
    assert "balanced_accuracy_tuned" not in result.val_metrics  # tuned on validation: never reported there


def test_no_test_fold_influences_the_threshold(fold, tmp_path, monkeypatch):
    """Train the same fold with the test set's labels flipped and its features replaced: the threshold
    (and everything chosen before testing) is bit-identical, and the choice only ever sees validation bags."""
    result, (train, val, test) = fold
    seen = []
    real = th.choose_thresholds

    def spy(scores, targets):
        seen.append(scores.shape[0])
        return real(scores, targets)

    monkeypatch.setattr("medmoe.engine.mil.tasks.classification.choose_thresholds", spy)
    flipped = type(test)([torch.randn_like(test[i].features) * 5 for i in range(len(test))], [1 - y for y in test.labels],
                         bag_ids=test.bag_ids, class_names=test.class_names)
    again = train_one_fold("abmil.base", train, val, flipped, CFG, tmp_path / "corrupt", TINY_ABMIL)
    assert seen == [len(val)]
    assert again.thresholds == result.thresholds
    assert again.val_metrics == result.val_metrics and again.best_epoch == result.best_epoch
    assert again.test_metrics["threshold"] == result.test_metrics["threshold"]


def test_without_validation_the_threshold_stays_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medmoe.engine.mil.trainer"):
        result = run_cross_validation("abmil.base", synthetic_bags(18, seed=4), k=3, val_folds=0, cfg=CFG,
                                      out_dir=tmp_path, model_overrides=TINY_ABMIL)
    assert "kept at 0.5 (no validation set)" in caplog.text
    for run in result.runs:
        assert run["thresholds"]["values"] == [0.5] and run["thresholds"]["sources"] == [SOURCE_NO_VALIDATION]
        assert run["test"]["threshold"] == 0.5
    summary = (tmp_path / "summary.md").read_text()
    assert "kept at 0.5 in all 3 runs (no validation set)" in summary
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"][0]["thresholds"]["sources"] == [SOURCE_NO_VALIDATION]


def test_summary_and_results_name_both_thresholds(tmp_path):
    result = run_cross_validation("abmil.base", synthetic_bags(24, seed=0), k=3, cfg=CFG, out_dir=tmp_path,
                                  model_overrides=TINY_ABMIL)
    summary = (tmp_path / "summary.md").read_text()
    assert "| balanced_accuracy_tuned |" in summary and "| threshold |" in summary
    assert "chosen on each run's validation set" in summary and "fixed 0.5" in summary
    assert "balanced_accuracy_tuned" in result.summary
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"balanced_accuracy", "balanced_accuracy_tuned", "threshold"} <= set(saved["summary"])


def test_resume_of_a_finished_fold_keeps_the_threshold(fold):
    result, data = fold
    again = train_one_fold("abmil.base", *data, CFG, result.out_dir, TINY_ABMIL, resume=True)
    assert again.thresholds == result.thresholds and again.test_metrics == result.test_metrics


def test_multiclass_has_no_threshold(tmp_path):
    data = [synthetic_bags(n, seed=s, num_classes=3) for n, s in ((18, 0), (9, 1), (9, 2))]
    result = train_one_fold("abmil.base", *data, CFG.replace(epochs=1), tmp_path, TINY_ABMIL)
    assert result.thresholds is None and "threshold" not in result.test_metrics
    assert THRESHOLDS_KEY not in read_checkpoint_info(result.checkpoint_dir)


def test_multilabel_thresholds_per_label(tmp_path):
    data = multilabel_bags(30, seed=0), multilabel_bags(12, seed=1), multilabel_bags(12, seed=2)
    cfg = CFG.replace(task="multilabel")
    result = train_one_fold("abmil.base", *data, cfg, tmp_path, TINY_ABMIL)
    names = data[0].label_names
    assert len(result.thresholds["values"]) == len(names)
    for name, value in zip(names, result.thresholds["values"]):
        assert result.test_metrics[f"threshold_{name}"] == value
    assert {"balanced_accuracy_tuned", "f1_tuned", "subset_accuracy_tuned"} <= set(result.test_metrics)
    model, info = load_checkpoint(result.checkpoint_dir)
    stored = checkpoint_thresholds(info)
    assert stored.values == result.thresholds["values"]
    rows = predict(result.checkpoint_dir, data[2])
    for row in rows:  # pred_labels at each label's own threshold
        expected = [n for n, t in zip(names, stored.values) if row[f"prob_{n}"] >= t]
        assert row["pred_labels"] == ";".join(expected)
    metrics = evaluate(model, data[2], feature_stats=info.get("feature_stats"), multilabel=True,
                       thresholds=stored).metrics
    assert metrics["subset_accuracy_tuned"] == pytest.approx(result.test_metrics["subset_accuracy_tuned"])


# ----------------------------------------------------------------------------------------------
# applied where a checkpoint meets data: eval, predict, ensembles, heatmaps


def _with_threshold(ckpt, tmp_path, name, value):
    """A copy of checkpoint ``ckpt`` whose stored threshold is ``value`` (None: a checkpoint written
    before thresholds existed)."""
    model, info = load_checkpoint(ckpt)
    extra = {k: v for k, v in info.items()
             if k not in ("format_version", "checkpoint_id", "model_name", "model_class", "model_config",
                          "medmoe_version", THRESHOLDS_KEY)}
    if value is not None:
        extra[THRESHOLDS_KEY] = DecisionThresholds([value], [SOURCE_VALIDATION]).to_record()
    return save_checkpoint(tmp_path / name, model, extra)


def test_predict_applies_the_stored_threshold(fold, tmp_path):
    result, (_, _, test) = fold
    low = _with_threshold(result.checkpoint_dir, tmp_path, "low", 0.0)
    high = _with_threshold(result.checkpoint_dir, tmp_path, "high", 1.5)
    assert {r["pred"] for r in predict(low, test)} == {1}
    assert {r["pred"] for r in predict(high, test)} == {0}
    rows = predict(result.checkpoint_dir, test)
    t = result.thresholds["values"][0]
    assert all(r["pred"] == int(r["prob_pos"] >= t) and r["threshold"] == t for r in rows)


def test_checkpoint_without_thresholds_uses_one_half(fold, tmp_path):
    result, (_, _, test) = fold
    legacy = _with_threshold(result.checkpoint_dir, tmp_path, "legacy", None)
    assert THRESHOLDS_KEY not in read_checkpoint_info(legacy)
    rows = predict(legacy, test)
    assert all(r["threshold"] == 0.5 and r["pred"] == int(r["prob_pos"] >= 0.5) for r in rows)
    model, info = load_checkpoint(legacy)
    metrics = evaluate(model, test, feature_stats=info.get("feature_stats"), thresholds=checkpoint_thresholds(info)).metrics
    assert metrics["threshold"] == 0.5
    assert metrics["balanced_accuracy_tuned"] == pytest.approx(metrics["balanced_accuracy"])


def test_ensemble_uses_the_mean_threshold_and_each_models_own_vote(fold, tmp_path):
    result, (_, _, test) = fold
    ckpts = [_with_threshold(result.checkpoint_dir, tmp_path, f"m{i}", t) for i, t in enumerate((0.2, 0.5, 0.9))]
    singles = [predict(c, test) for c in ckpts]
    rows = predict_ensemble(ckpts, test)
    for i, row in enumerate(rows):
        assert row["threshold"] == pytest.approx(sum((0.2, 0.5, 0.9)) / 3)
        assert row["pred"] == int(row["prob_pos"] >= row["threshold"])
        votes = [s[i]["pred"] for s in singles]  # each at its own threshold
        assert row["agreement"] == pytest.approx(votes.count(row["pred"]) / 3)


def test_cli_eval_and_predict_use_the_checkpoint_threshold(fold, tmp_path, monkeypatch):
    result, (_, _, test) = fold
    from medmoe.engine.mil import inputs as mil_inputs

    monkeypatch.setattr(mil_inputs, "load_dataset", lambda *a, **k: ("synthetic", test))
    res = CliRunner().invoke(app, ["mil", "eval", str(result.checkpoint_dir), "-d", "musk1"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output[res.output.index("{"):])
    assert shown["threshold"] == round(result.thresholds["values"][0], 4)
    assert shown["balanced_accuracy_tuned"] == round(result.test_metrics["balanced_accuracy_tuned"], 4)
    assert shown["balanced_accuracy"] == round(result.test_metrics["balanced_accuracy"], 4)

    monkeypatch.setattr(mil_inputs, "inference_dataset", lambda *a, **k: (test, True))
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(app, ["mil", "predict", str(result.checkpoint_dir), "musk1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    import csv

    rows = list(csv.DictReader(out.open()))
    t = result.thresholds["values"][0]
    assert all(int(r["pred"]) == int(float(r["prob_pos"]) >= t) for r in rows)


def test_heatmap_prediction_uses_the_threshold(tmp_path):
    from medmoe.engine.mil.heatmap_pipeline import slide_heatmaps
    from medmoe.registry import create_model

    torch.manual_seed(0)
    model = create_model("abmil.base", in_dim=8, num_classes=2, **TINY_ABMIL)
    feats = torch.randn(16, 8)
    coords = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).view(-1, 2) * 64
    common = {"max_size": 64, "top_k": 0, "num_expert_maps": 0, "class_names": ["neg", "pos"]}
    plain = slide_heatmaps(model, feats, coords, 64, tmp_path / "a", **common)
    p_pos = plain["probs"]["pos"]
    assert plain["prediction"] == ("pos" if p_pos > 0.5 else "neg")
    below = slide_heatmaps(model, feats, coords, 64, tmp_path / "b", thresholds=[p_pos - 0.01], **common)
    above = slide_heatmaps(model, feats, coords, 64, tmp_path / "c", thresholds=[p_pos + 0.01], **common)
    assert (below["prediction"], above["prediction"]) == ("pos", "neg")
    assert below["decision_thresholds"] == [pytest.approx(p_pos - 0.01)]


def test_per_patient_metrics_choose_on_patient_scores(tmp_path, monkeypatch):
    """With ``metrics_level='group'`` the threshold is chosen on, and applied to, a patient's mean probability."""
    from medmoe.data import InMemoryBags
    from medmoe.engine.mil.tasks import get_task

    def two_slides(n_patients, seed):
        first, second = synthetic_bags(n_patients, seed=seed), synthetic_bags(n_patients, seed=seed + 100)
        feats = [bags[p].features for p in range(n_patients) for bags in (first, second)]
        return InMemoryBags(feats, [p % 2 for p in range(n_patients) for _ in range(2)],
                            bag_ids=[f"s{seed}_{i}" for i in range(2 * n_patients)],
                            groups=[f"p{seed}_{p}" for p in range(n_patients) for _ in range(2)],
                            class_names=["neg", "pos"])

    val = two_slides(6, seed=1)
    logits = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor(val.labels)
    patient_probs = torch.softmax(logits, -1).view(6, 2, 2).mean(1)  # slides 2i, 2i+1 = patient i
    chosen = get_task("classification").choose_thresholds(logits, val, "group", 2)
    assert chosen.values == [choose_threshold(patient_probs[:, 1], labels[::2] == 1)[0]]
    got = get_task("classification").metrics(logits, val, {}, level="group", thresholds=chosen.values)
    expected = compute_metrics(patient_probs, labels[::2], threshold=chosen.values[0])
    assert got["balanced_accuracy_tuned"] == pytest.approx(expected["balanced_accuracy"])

    seen = []
    real = th.choose_thresholds
    monkeypatch.setattr("medmoe.engine.mil.tasks.classification.choose_thresholds",
                        lambda s, t: seen.append(s.shape[0]) or real(s, t))
    train_one_fold("abmil.base", two_slides(10, seed=0), val, two_slides(6, seed=2),
                   CFG.replace(metrics_level="group"), tmp_path, TINY_ABMIL)
    assert seen == [6]  # the validation patients, not their 12 slides


def test_multilabel_ensemble_uses_the_mean_threshold_per_label(tmp_path):
    data = multilabel_bags(24, seed=0), multilabel_bags(10, seed=1), None
    result = train_one_fold("abmil.base", *data, CFG.replace(task="multilabel", epochs=1), tmp_path / "a",
                            TINY_ABMIL)
    names = data[0].label_names
    model, info = load_checkpoint(result.checkpoint_dir)
    extra = {k: info[k] for k in ("class_names", "task", "feature_stats")}
    shifted = [min(1.0, t + 0.2) for t in result.thresholds["values"]]
    other = save_checkpoint(tmp_path / "b", model, {**extra, THRESHOLDS_KEY: DecisionThresholds(
        shifted, [SOURCE_VALIDATION] * len(names)).to_record()})
    test = multilabel_bags(8, seed=5)
    rows = predict_ensemble([result.checkpoint_dir, other], test)
    mean = [(a + b) / 2 for a, b in zip(result.thresholds["values"], shifted)]
    for row in rows:  # same model twice: the mean probability is its own, the cut-off the mean threshold
        assert row["pred_labels"] == ";".join(n for n, t in zip(names, mean) if row[f"prob_{n}"] >= t)


def test_cli_train_reports_both_and_stores_the_threshold(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "bad_input"))
    try:
        from inference_inputs import feature_folder
    finally:
        sys.path.pop(0)
    labels = {f"slide_{i:02d}": ("tumor" if i % 2 else "normal") for i in range(15)}
    features, csv_path = feature_folder(tmp_path, labels, dim=8, n_patches=5)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["mil", "train", "-m", "meanmil.base", "--features", str(features), "--labels",
                                   str(csv_path), "--k", "3", "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| balanced_accuracy_tuned |" in res.output and "Decision thresholds:" in res.output
    for ckpt in sorted(out.glob("seed0/fold*/checkpoint")):
        assert checkpoint_thresholds(read_checkpoint_info(ckpt)).sources in ([SOURCE_VALIDATION], [SOURCE_ONE_CLASS])


def test_demo_table_shows_balanced_accuracy_at_both_thresholds(tmp_path, monkeypatch):
    """`medmoe demo --quick` on tiny synthetic bags (instead of Musk1): its table has both columns."""
    from medmoe.engine.mil import compare_grid as mil_grid
    from medmoe.engine.mil import demo as demo_engine
    from medmoe.engine.mil import inputs as mil_inputs

    real = mil_grid.compare_grid
    small = {"num_experts": 2, "num_slots": 2, "num_heads": 1, "slot_dim": 8}  # not the paper's 30 x 10 x 16
    monkeypatch.setattr(mil_grid, "compare_grid", lambda *a, **k: real(*a, **{**k, "moe_args": small}))
    monkeypatch.setattr(mil_inputs, "load_dataset", lambda name, *a, **k: (name, synthetic_bags(15, seed=0)))
    monkeypatch.setattr(demo_engine, "DEMO_MODELS", ["abmil"])
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    header = (tmp_path / "demo" / "comparison.md").read_text().splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[3:] == ["auroc", "balanced_accuracy", "balanced_accuracy_tuned", "f1", "f1_tuned", "threshold"]
    assert "decision thresholds chosen on each validation fold" in res.output
