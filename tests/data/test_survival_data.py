"""Survival targets on bag datasets: TRIDENT folders with time/event (or censorship) columns, with_survival."""

import numpy as np
import pytest
import torch

from medmoe.data import FeatureFolderBags, InMemoryBags, make_synthetic_survival_folder, write_trident_h5


def test_synthetic_folder_reads_as_survival_dataset(tmp_path):
    f = make_synthetic_survival_folder(tmp_path, n_slides=30, seed=1)
    ds = FeatureFolderBags(f.features_dir, f.labels_csv, time_col="time")
    assert ds.is_survival and len(ds) == 30
    assert ds.class_names == ["censored", "event"]
    assert ds.labels == ds.survival_events  # folds are stratified by event
    assert 0 < sum(ds.survival_events) < 30
    assert all(t >= 0 for t in ds.survival_times)
    # the targets follow the bags through subset, in the subset's order
    sub = ds.subset([5, 2])
    assert sub.survival_times == [ds.survival_times[5], ds.survival_times[2]]
    assert sub.survival_events == [ds.survival_events[5], ds.survival_events[2]]
    # riskier slides die sooner: the hidden risk is concordant with the times
    from medmoe.engine.mil.survival import concordance_index

    assert concordance_index(f.risks, ds.survival_times, ds.survival_events) > 0.65


def test_censorship_column_is_inverted(tmp_path):
    a = make_synthetic_survival_folder(tmp_path / "a", n_slides=12, seed=2)
    b = make_synthetic_survival_folder(tmp_path / "b", n_slides=12, seed=2, censorship_column=True)
    da = FeatureFolderBags(a.features_dir, a.labels_csv, time_col="time")
    db = FeatureFolderBags(b.features_dir, b.labels_csv, time_col="survival_months")
    assert da.survival_events == db.survival_events
    assert da.survival_times == db.survival_times


def test_classification_dataset_has_no_survival_targets(tmp_path):
    from medmoe.data import make_synthetic_feature_folder

    f = make_synthetic_feature_folder(tmp_path, n_slides=4)
    ds = FeatureFolderBags(f.features_dir, f.labels_csv)
    assert not ds.is_survival
    with pytest.raises(ValueError, match="with_survival"):
        _ = ds.survival_times


def _folder(tmp_path, rows, header="slide_id,time,event"):
    fdir = tmp_path / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        write_trident_h5(fdir / f"{r.split(',')[0]}.h5", np.ones((3, 4), np.float32))
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    return fdir, csv


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (["s1,-2,1", "s2,3,0"], "finite numbers >= 0; bad rows 1: s1='-2'"),
        (["s1,abc,1", "s2,3,0"], "s1='abc'"),
        (["s1,2,2", "s2,3,0"], "'event' must hold 0 or 1; bad rows 1: s1='2'"),
        (["s1,2,", "s2,3,0"], "without a label \\(column 'event'\\)"),
    ],
)
def test_bad_survival_rows_are_named(tmp_path, rows, match):
    fdir, csv = _folder(tmp_path, rows)
    with pytest.raises(ValueError, match=match):
        FeatureFolderBags(fdir, csv, time_col="time")


def test_missing_survival_columns_are_named(tmp_path):
    fdir, csv = _folder(tmp_path, ["s1,2", "s2,3"], header="slide_id,time")
    with pytest.raises(ValueError, match="lacks column\\(s\\) \\['event'\\].*'censorship'"):
        FeatureFolderBags(fdir, csv, time_col="time")
    with pytest.raises(ValueError, match="\\['event', 'months'\\]"):
        FeatureFolderBags(fdir, csv, time_col="months")
    with pytest.raises(ValueError, match="label_map numbers class labels"):
        FeatureFolderBags(fdir, csv, time_col="time", label_map={"a": 0})


def test_concat_mode_needs_one_survival_target_per_case(tmp_path):
    fdir, csv = _folder(
        tmp_path, ["s1,c1,2,1", "s2,c1,2,1", "s3,c2,5,0"], header="slide_id,case_id,time,event"
    )
    ds = FeatureFolderBags(fdir, csv, time_col="time", patient_mode="concat")
    assert ds.bag_ids == ["c1", "c2"] and ds.survival_times == [2.0, 5.0] and ds.survival_events == [1, 0]
    fdir, csv = _folder(
        tmp_path / "bad", ["s1,c1,2,1", "s2,c1,4,1", "s3,c2,5,0"], header="slide_id,case_id,time,event"
    )
    with pytest.raises(ValueError, match="different labels, survival times or splits 1: c1"):
        FeatureFolderBags(fdir, csv, time_col="time", patient_mode="concat")


def test_with_survival_on_in_memory_bags():
    bags = InMemoryBags([torch.ones(2, 3)] * 3, [1, 0, 1], bag_ids=["a", "b", "c"])
    surv = bags.with_survival([1.0, 2.5, 0.0], [1, 0, 1])
    assert not bags.is_survival and surv.is_survival
    assert surv.subset([2, 0]).survival_times == [0.0, 1.0]
    with pytest.raises(ValueError, match="3 bags"):
        bags.with_survival([1.0], [1])
    with pytest.raises(ValueError, match="bag 'b': survival time"):
        bags.with_survival([1.0, float("nan"), 2.0], [1, 0, 1])
    with pytest.raises(ValueError, match="bag 'c': event"):
        bags.with_survival([1.0, 2.0, 2.0], [1, 0, 3])
