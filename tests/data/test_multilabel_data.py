"""Multi-label CSVs (``label_cols``) and folds stratified on several labels at once."""

import warnings

import numpy as np
import pytest

from medmoe.data import FeatureFolderBags, make_synthetic_multilabel_folder, multilabel_group_kfold

NAMES = ["tumor", "necrosis", "inflammation"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_synthetic_multilabel_folder(tmp_path_factory.mktemp("ml"), n_slides=30, n_patches=(5, 9), dim=16)


def test_label_columns_become_targets(folder):
    bags = FeatureFolderBags(folder.features_dir, folder.labels_csv, label_cols=NAMES)
    assert bags.is_multilabel and bags.label_names == NAMES
    assert bags.multilabel_targets.long().tolist() == folder.targets.tolist()
    # the class labels are the label combinations (they stratify ordinary folds)
    for y, t in zip(bags.labels, folder.targets):
        assert bags.class_names[y] == ("+".join(n for n, v in zip(NAMES, t) if v) or "(none)")
    sub = bags.subset([4, 2])
    assert sub.multilabel_targets.long().tolist() == folder.targets[[4, 2]].tolist()
    one = FeatureFolderBags(folder.features_dir, folder.labels_csv, label_cols="necrosis")
    assert one.multilabel_targets.long().flatten().tolist() == folder.targets[:, 1].tolist()


def test_bad_label_columns(folder, tmp_path):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['fibrosis'\]"):
        FeatureFolderBags(folder.features_dir, folder.labels_csv, label_cols=["tumor", "fibrosis"])
    with pytest.raises(ValueError, match="distinct"):
        FeatureFolderBags(folder.features_dir, folder.labels_csv, label_cols=["tumor", "tumor"])
    with pytest.raises(ValueError, match="cannot be combined"):
        FeatureFolderBags(folder.features_dir, folder.labels_csv, label_cols=["tumor"], time_col="time")
    lines = folder.labels_csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",yes"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="slide_002:inflammation='yes'"):
        FeatureFolderBags(folder.features_dir, bad, label_cols=NAMES)


def test_slides_of_a_patient_must_share_labels_when_concatenated(folder, tmp_path):
    lines = folder.labels_csv.read_text().splitlines()
    rows = [r.split(",") for r in lines[1:]]
    rows[1][1] = rows[0][1]  # slides 0 and 1 -> case_000
    rows[1][2:] = rows[0][2:]  # same labels: one bag
    csv = tmp_path / "cases.csv"
    csv.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    bags = FeatureFolderBags(folder.features_dir, csv, label_cols=NAMES, patient_mode="concat")
    assert len(bags) == 29 and bags.multilabel_targets[0].long().tolist() == [int(v) for v in rows[0][2:]]
    rows[1][2:] = [str(1 - int(v)) for v in rows[0][2:]]  # complementary labels: refused
    csv.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    with pytest.raises(ValueError, match="case_000"):
        FeatureFolderBags(folder.features_dir, csv, label_cols=NAMES, patient_mode="concat")


def _targets(n, L, seed, p=0.3):
    rng = np.random.default_rng(seed)
    return (rng.random((n, L)) < p).astype(int)


def test_iterative_stratification_balances_every_label():
    y = _targets(200, 4, 0)
    splits = multilabel_group_kfold(y, None, 5, seed=0)
    tests = [s.test for s in splits]
    assert sorted(i for t in tests for i in t) == list(range(200))  # every bag tested exactly once
    for s in splits:
        assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
        assert len(s.train) + len(s.val) + len(s.test) == 200
    per_fold = np.array([y[t].sum(0) for t in tests])  # (k, L) positives per test fold
    assert (per_fold.max(0) - per_fold.min(0) <= 2).all(), per_fold
    assert max(len(t) for t in tests) - min(len(t) for t in tests) <= 2
    # the same seed gives the same folds, another seed others
    assert multilabel_group_kfold(y, None, 5, seed=0)[2].test == splits[2].test
    assert multilabel_group_kfold(y, None, 5, seed=1)[2].test != splits[2].test


def test_patients_stay_together_and_rare_labels_warn():
    y = _targets(60, 3, 1)
    groups = [f"p{i // 3}" for i in range(60)]
    for s in multilabel_group_kfold(y, groups, 4, seed=0, val_folds=1):
        for part in (s.train, s.val, s.test):
            owners = {groups[i] for i in part}
            assert all(groups[i] in owners for i in part)
        assert not {groups[i] for i in s.test} & {groups[i] for i in s.train}
    rare = np.zeros((20, 2), dtype=int)
    rare[:, 0] = np.arange(20) % 2
    rare[0, 1] = 1
    with pytest.warns(UserWarning, match=r"label\(s\) \[1\] are present in fewer than k=5"):
        splits = multilabel_group_kfold(rare, None, 5)
    assert sum(rare[s.test, 1].sum() for s in splits) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multilabel_group_kfold(rare[:, :1], None, 5)
    with pytest.raises(ValueError, match="0/1 values"):
        multilabel_group_kfold([[0, 2]] * 10, None, 5)
    with pytest.raises(ValueError, match="k must be"):
        multilabel_group_kfold(rare, None, 1)
