import json
import warnings

import pytest

from medmoe.data import Split, load_splits, save_splits, split_from_column, split_hash, stratified_group_kfold


def _cohort(n_patients=30, seed=0):
    """Patients with 1-3 slides each; label per patient, imbalanced 2:1."""
    import random

    rng = random.Random(seed)
    labels, groups, ids = [], [], []
    for p in range(n_patients):
        y = 1 if p % 3 == 0 else 0
        for s in range(rng.randint(1, 3)):
            labels.append(y)
            groups.append(f"P{p:02d}")
            ids.append(f"P{p:02d}-S{s}")
    return labels, groups, ids


def test_group_integrity_and_partition():
    labels, groups, ids = _cohort()
    splits = stratified_group_kfold(labels, groups, k=5, seed=0, bag_ids=ids)
    assert len(splits) == 5
    n = len(labels)
    tests = []
    for s in splits:
        parts = [set(s.train), set(s.val), set(s.test)]
        assert set().union(*parts) == set(range(n))
        assert sum(len(p) for p in parts) == n  # disjoint
        for a in range(3):
            for b in range(a + 1, 3):
                ga = {groups[i] for i in parts[a]}
                gb = {groups[i] for i in parts[b]}
                assert not ga & gb, "a patient appears in two parts"
        tests.extend(s.test)
        assert s.train == sorted(s.train)
    assert sorted(tests) == list(range(n))  # every bag tested exactly once


def test_stratification():
    labels, groups, _ = _cohort(60)
    splits = stratified_group_kfold(labels, groups, k=5, seed=1)
    overall = sum(labels) / len(labels)
    for s in splits:
        frac = sum(labels[i] for i in s.test) / len(s.test)
        assert abs(frac - overall) < 0.15
        assert {labels[i] for i in s.test} == {0, 1}
        assert {labels[i] for i in s.val} == {0, 1}


def test_seed_repeatability():
    labels, groups, _ = _cohort()
    a = stratified_group_kfold(labels, groups, k=4, seed=3)
    b = stratified_group_kfold(labels, groups, k=4, seed=3)
    c = stratified_group_kfold(labels, groups, k=4, seed=4)
    assert a == b
    assert a != c
    assert split_hash(a) == split_hash(b) != split_hash(c)


def test_val_folds_zero_and_no_groups():
    labels = [0, 1] * 10
    splits = stratified_group_kfold(labels, None, k=10, seed=0, val_folds=0)
    assert all(s.val == [] and len(s.test) == 2 for s in splits)
    with pytest.raises(ValueError, match="val_folds=0"):
        stratified_group_kfold(labels, None, k=2, seed=0)


def test_too_few_groups_error():
    labels = [0] * 10 + [1] * 3
    groups = [f"a{i}" for i in range(10)] + ["b0", "b0", "b1"]  # class 1: 2 patients
    # with a validation fold k must be >= 3, so "lower k to 2" would be wrong advice: name the groups instead
    with pytest.raises(ValueError, match=r"class 1: 2 group\(s\) \(b0, b1\).*no k >= 3 works"):
        stratified_group_kfold(labels, groups, k=5, seed=0)
    # without one, k = 2 is possible and advised
    with pytest.raises(ValueError, match="lower k to at most 2"):
        stratified_group_kfold(labels, groups, k=5, seed=0, val_folds=0)


def test_missing_class_warns():
    # class 1 only occurs inside mixed patients whose majority is class 0: they are stratified as class 0,
    # so for some seeds two of them share a fold and another fold's val/train part lacks class 1
    labels = [0] * 9 + [1] + [0] * 3 + [1] + [0] * 3 + [1] + [0] * 10 + [0] * 10
    groups = ["m1"] * 10 + ["m2"] * 4 + ["m3"] * 4 + ["p1"] * 10 + ["p2"] * 10
    warned = 0
    for seed in range(20):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            stratified_group_kfold(labels, groups, k=3, seed=seed)
        msgs = [str(w.message) for w in rec]
        assert all("class(es) [1] absent" in m for m in msgs)
        warned += bool(msgs)
    assert 0 < warned < 20


def test_minority_only_class_counts_groups():
    labels = [0] * 12 + [1]
    groups = [f"p{i}" for i in range(12)] + ["p0"]  # class 1 only inside patient p0
    with pytest.raises(ValueError, match="class 1: 1 group"):
        stratified_group_kfold(labels, groups, k=3, seed=0)


def test_save_load_round_trip(tmp_path):
    labels, groups, ids = _cohort()
    splits = stratified_group_kfold(labels, groups, k=5, seed=0, bag_ids=ids)
    h = split_hash(splits)
    path = save_splits(splits, tmp_path / "s" / "splits.json")
    doc = json.loads(path.read_text())
    assert doc["by"] == "bag_id" and doc["hash"] == h
    assert doc["folds"][0]["test"][0] in ids  # ids are stored
    back = load_splits(path)
    assert back == splits and split_hash(back) == h
    # re-ordered dataset: indices follow the ids
    rev = ids[::-1]
    back_rev = load_splits(path, bag_ids=rev)
    for s, r in zip(splits, back_rev):
        assert sorted(ids[i] for i in s.test) == sorted(rev[i] for i in r.test)
    assert split_hash(back_rev) != "" and {frozenset(r.ids("test")) for r in back_rev} == {
        frozenset(s.ids("test")) for s in splits
    }
    with pytest.raises(ValueError, match="not in the dataset"):
        load_splits(path, bag_ids=ids[:-3])
    # hash is stable (pinned to the canonical JSON)
    tiny = [Split(train=[0, 1], val=[2], test=[3])]
    assert split_hash(tiny) == split_hash([Split([0, 1], [2], [3])])
    assert split_hash(tiny, bag_ids=["a", "b", "c", "d"]) != split_hash(tiny)


def test_save_without_ids_warns(tmp_path):
    with pytest.warns(UserWarning, match="without bag ids"):
        path = save_splits([Split([0, 1], [2], [3])], tmp_path / "x.json")
    assert load_splits(path) == [Split([0, 1], [2], [3])]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a medmoe split file"):
        load_splits(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_splits(tmp_path / "nope.json")


def test_split_from_column():
    s = split_from_column(["train", "Val", "test", "training", "validation"], bag_ids=list("abcde"))
    assert s.train == [0, 3] and s.val == [1, 4] and s.test == [2]
    with pytest.raises(ValueError, match="train/val/test"):
        split_from_column(["train", "holdout"])


def test_no_warning_in_normal_case():
    labels, groups, _ = _cohort()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stratified_group_kfold(labels, groups, k=5, seed=0)
