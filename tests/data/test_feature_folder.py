import warnings

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")
pytest.importorskip("pandas")

from medmoe.data import (
    FeatureFileError,
    FeatureFolderBags,
    InMemoryBags,
    collate_bags,
    feature_file_shape,
    make_synthetic_feature_folder,
    read_feature_file,
    stratified_group_kfold,
    write_trident_h5,
)
from medmoe.data import feature_dataset as ff


def _csv(path, rows, header="slide_id,label"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clean cases must not warn
        return fn(*a, **kw)


def test_write_read_trident_h5(tmp_path):
    x = torch.randn(5, 7)
    p = write_trident_h5(tmp_path / "s.h5", x, patch_size_level0=512)
    feats, coords, attrs = read_feature_file(p, with_attrs=True)
    assert torch.allclose(feats, x) and feats.dtype == torch.float32
    assert coords.shape == (5, 2) and coords.dtype == torch.int64
    assert attrs["patch_size_level0"] == 512
    assert feature_file_shape(p) == (5, 7)
    assert not list(tmp_path.glob("*.tmp"))


def test_h5_and_pt_and_squeeze(tmp_path):
    fdir = tmp_path / "f"
    fdir.mkdir()
    with h5py.File(fdir / "a.h5", "w") as f:  # CLAM-style (1, n, d), no coords
        f.create_dataset("features", data=np.ones((1, 4, 3), np.float32))
    torch.save(torch.full((1, 2, 3), 2.0), fdir / "b.pt")  # bare tensor (1, n, d)
    torch.save(
        {"features": torch.full((3, 3), 3.0), "coords": torch.zeros(3, 2, dtype=torch.int32)}, fdir / "c.pt"
    )
    csv = _csv(tmp_path / "l.csv", [("a", 0), ("b.svs", 1), ("c", 1)])
    ds = _quiet(FeatureFolderBags, fdir, csv)
    assert ds.bag_ids == ["a", "b.svs", "c"] and ds.labels == [0, 1, 1] and ds.feature_dim == 3
    assert ds.class_names == ["0", "1"] and ds.num_classes == 2 and ds.groups == ds.bag_ids
    assert ds[0].features.shape == (4, 3) and ds[0].coords is None
    assert ds[1].features.shape == (2, 3) and float(ds[1].features[0, 0]) == 2.0
    assert ds[2].coords.shape == (3, 2) and ds[2].coords.dtype == torch.int64
    assert ds.num_instances == [4, 2, 3]
    batch = collate_bags([ds[0], ds[1], ds[2]])
    assert batch.x.shape == (3, 4, 3) and batch.mask.sum().item() == 9 and batch.coords is None


def test_lazy_loading(tmp_path, monkeypatch):
    syn = make_synthetic_feature_folder(tmp_path, n_slides=6, n_patches=10, dim=8)
    reads = []
    real = ff.read_feature_file
    monkeypatch.setattr(ff, "read_feature_file", lambda p, **kw: (reads.append(p), real(p, **kw))[1])
    # with check_shapes=False nothing is opened at all
    opened = []
    real_shape = ff.feature_file_shape
    monkeypatch.setattr(ff, "feature_file_shape", lambda p: (opened.append(p), real_shape(p))[1])
    ds = FeatureFolderBags(syn.features_dir, syn.labels_csv, check_shapes=False)
    assert reads == [] and opened == []
    assert ds.feature_dim == 8 and len(opened) == 1  # one header read, on demand
    ds[3]
    assert len(reads) == 1 and reads[0].name == "slide_003.h5"
    # default: shape metadata of each file, but no feature data
    ds2 = FeatureFolderBags(syn.features_dir, syn.labels_csv)
    assert len(reads) == 1 and len(opened) == 1 + 6
    # in-memory cache: a second access does not read again
    ds3 = FeatureFolderBags(syn.features_dir, syn.labels_csv, cache_in_memory=True)
    ds3[0]
    ds3[0]
    ds2[0]
    ds2[0]
    assert len(reads) == 1 + 1 + 2


def test_string_labels_cases_and_concat(tmp_path):
    syn = make_synthetic_feature_folder(
        tmp_path,
        n_slides=8,
        n_patches=(3, 6),
        dim=8,
        num_classes=2,
        slides_per_case=2,
        string_labels=True,
        fmt="pt",
    )
    sep = _quiet(FeatureFolderBags, syn.features_dir, syn.labels_csv)
    assert len(sep) == 8 and sep.class_names == ["class_0", "class_1"]
    assert sep.groups[:4] == ["case_000", "case_000", "case_001", "case_001"]
    cat = _quiet(FeatureFolderBags, syn.features_dir, syn.labels_csv, patient_mode="concat")
    assert len(cat) == 4 and cat.bag_ids == ["case_000", "case_001", "case_002", "case_003"]
    assert cat.labels == [0, 1, 0, 1] and cat.groups == cat.bag_ids
    bag = cat[1]
    n = sep[2].features.shape[0] + sep[3].features.shape[0]
    assert bag.features.shape == (n, 8) and bag.coords.shape == (n, 2)
    assert torch.equal(bag.features, torch.cat([sep[2].features, sep[3].features]))
    assert cat.slide_ids(1) == ["slide_002", "slide_003"]
    # patient-level splits from the dataset
    splits = stratified_group_kfold(sep.labels, sep.groups, k=2, seed=0, val_folds=0)
    for s in splits:
        assert not {sep.groups[i] for i in s.train} & {sep.groups[i] for i in s.test}
    sub = sep.subset(splits[0].test)
    assert isinstance(sub, FeatureFolderBags) and len(sub) == len(splits[0].test) and sub.num_classes == 2


def test_concat_needs_case_and_consistent_labels(tmp_path):
    fdir = tmp_path / "f"
    for s in "ab":
        write_trident_h5(fdir / f"{s}.h5", torch.randn(3, 4))
    with pytest.raises(ValueError, match="needs a 'case_id' column"):
        FeatureFolderBags(fdir, _csv(tmp_path / "l.csv", [("a", 0), ("b", 1)]), patient_mode="concat")
    csv = _csv(tmp_path / "l2.csv", [("a", "p", 0), ("b", "p", 1)], header="slide_id,case_id,label")
    with pytest.raises(ValueError, match="different labels"):
        FeatureFolderBags(fdir, csv, patient_mode="concat")


def test_predefined_split(tmp_path):
    syn = make_synthetic_feature_folder(tmp_path, n_slides=10, n_patches=4, dim=4, with_split=True)
    ds = _quiet(FeatureFolderBags, syn.features_dir, syn.labels_csv)
    s = ds.predefined_split()
    assert s is not None and len(s.train) == 6 and len(s.val) == 2 and len(s.test) == 2


def test_missing_and_extra_slides_warn(tmp_path):
    fdir = tmp_path / "f"
    for s in ["a", "b", "x1", "x2"]:
        write_trident_h5(fdir / f"{s}.h5", torch.randn(3, 4))
    rows = [("a", 0), ("b", 1)] + [(f"gone{i:02d}", 1) for i in range(12)]
    with pytest.warns(UserWarning) as rec:
        ds = FeatureFolderBags(fdir, _csv(tmp_path / "l.csv", rows))
    msgs = " | ".join(str(w.message) for w in rec)
    assert "slides without a feature file" in msgs and "12: gone00" in msgs and "(+2 more)" in msgs
    assert "feature files without a row" in msgs and "2: x1, x2" in msgs
    assert ds.bag_ids == ["a", "b"]


def test_empty_bag_skipped(tmp_path):
    fdir = tmp_path / "f"
    write_trident_h5(fdir / "a.h5", torch.randn(3, 4))
    write_trident_h5(fdir / "e.h5", torch.zeros(0, 4))
    csv = _csv(tmp_path / "l.csv", [("a", 0), ("e", 1)])
    with pytest.warns(UserWarning, match=r"0 patches \(skipped\) 1: e"):
        ds = FeatureFolderBags(fdir, csv)
    assert ds.bag_ids == ["a"] and ds.num_classes == 2
    lazy = FeatureFolderBags(fdir, csv, check_shapes=False)
    with pytest.raises(ValueError, match="'e'.*0 patches"):
        lazy[1]


def test_nonfinite(tmp_path):
    fdir = tmp_path / "f"
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    x[2, 0] = float("inf")
    write_trident_h5(fdir / "bad.h5", x)
    csv = _csv(tmp_path / "l.csv", [("bad", 0)])
    ds = FeatureFolderBags(fdir, csv)
    with pytest.raises(ValueError, match="slide 'bad'.*2 NaN/inf"):
        ds[0]
    dz = FeatureFolderBags(fdir, csv, nonfinite="zero")
    with pytest.warns(UserWarning, match="replaced 2"):
        f = dz[0].features
    assert torch.isfinite(f).all() and f[1, 2] == 0 and f[2, 0] == 0


def test_inconsistent_dims(tmp_path):
    fdir = tmp_path / "f"
    write_trident_h5(fdir / "a.h5", torch.randn(3, 4))
    write_trident_h5(fdir / "b.h5", torch.randn(3, 5))
    csv = _csv(tmp_path / "l.csv", [("a", 0), ("b", 1)])
    with pytest.raises(ValueError, match="different feature dims"):
        FeatureFolderBags(fdir, csv)
    lazy = FeatureFolderBags(fdir, csv, check_shapes=False)
    lazy[0]
    with pytest.raises(ValueError, match="'b'.*feature dim 5"):
        lazy[1]


def test_unreadable_and_malformed_files(tmp_path):
    fdir = tmp_path / "f"
    fdir.mkdir()
    (fdir / "junk.h5").write_bytes(b"this is not hdf5")
    csv = _csv(tmp_path / "l.csv", [("junk", 0)])
    with pytest.raises(FeatureFileError, match="junk.h5"):
        FeatureFolderBags(fdir, csv)
    lazy = FeatureFolderBags(fdir, csv, check_shapes=False)
    with pytest.raises(FeatureFileError, match="cannot read feature file .*junk.h5"):
        lazy[0]
    (fdir / "junk.h5").unlink()
    with h5py.File(fdir / "nofeat.h5", "w") as f:
        f.create_dataset("feats", data=np.ones((2, 2)))
    with pytest.raises(
        FeatureFileError, match=r"nofeat.h5 has no 'features' dataset \(it holds \['feats'\]\)"
    ):
        FeatureFolderBags(fdir, _csv(tmp_path / "l2.csv", [("nofeat", 0)]))
    # file deleted after construction
    (fdir / "nofeat.h5").unlink()
    write_trident_h5(fdir / "gone.h5", torch.randn(2, 2))
    ds = FeatureFolderBags(fdir, _csv(tmp_path / "l3.csv", [("gone", 0)]), check_shapes=False)
    (fdir / "gone.h5").unlink()
    with pytest.raises(FeatureFileError, match="gone.h5 does not exist"):
        ds[0]


def test_bad_csv(tmp_path):
    fdir = tmp_path / "f"
    write_trident_h5(fdir / "a.h5", torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
        FeatureFolderBags(fdir, _csv(tmp_path / "l.csv", [("a",)], header="slide_id"))
    with pytest.raises(ValueError, match="duplicated"):
        FeatureFolderBags(fdir, _csv(tmp_path / "l2.csv", [("a", 0), ("a", 1)]))
    with pytest.raises(ValueError, match="without a label"):
        FeatureFolderBags(fdir, _csv(tmp_path / "l3.csv", [("a", "")]))
    with pytest.raises(ValueError, match="does not exist"):
        FeatureFolderBags(fdir, tmp_path / "none.csv")
    with pytest.raises(ValueError, match="no usable bags"), pytest.warns(UserWarning):
        FeatureFolderBags(fdir, _csv(tmp_path / "l4.csv", [("zzz", 0)]))
    ds = FeatureFolderBags(
        fdir, _csv(tmp_path / "l5.csv", [("a", "tumour")]), label_map={"normal": 0, "tumour": 1}
    )
    assert ds.labels == [1] and ds.class_names == ["normal", "tumour"]


def test_synthetic_signal_is_learnable(tmp_path):
    syn = make_synthetic_feature_folder(
        tmp_path, n_slides=20, n_patches=(20, 30), dim=16, num_classes=2, seed=1
    )
    ds = FeatureFolderBags(syn.features_dir, syn.labels_csv)
    means = torch.stack([ds[i].features.mean(0) for i in range(len(ds))])
    y = torch.tensor(ds.labels)
    # class c is shifted on dims [8c, 8c+8): a mean-pooled nearest-centroid rule separates them
    score = means[:, :8].mean(1) - means[:, 8:].mean(1)
    assert ((score < 0).long() == y).float().mean() >= 0.9
    mem = InMemoryBags([ds[i].features for i in range(len(ds))], ds.labels)
    assert mem.feature_dim == 16


def test_plain_h5_features_are_memory_mapped_copy_on_write(tmp_path):
    """Contiguous float datasets are mapped, not read: same values, writable, and the file never changes."""
    import h5py
    import numpy as np

    from medmoe.data.feature_files import read_feature_file

    feats = np.random.default_rng(0).standard_normal((300, 24)).astype(np.float32)
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats[None])  # (1, n, d) as TRIDENT writes it
        f.create_dataset("coords", data=np.zeros((300, 2), dtype=np.int64))
    before = path.read_bytes()
    x, coords = read_feature_file(path)
    assert x.shape == (300, 24) and coords.shape == (300, 2)
    np.testing.assert_array_equal(x.numpy(), feats)
    x.mul_(0.0)  # in-place work on the tensor stays private to this process
    assert path.read_bytes() == before
    np.testing.assert_array_equal(read_feature_file(path)[0].numpy(), feats)


@pytest.mark.parametrize("layout", ["chunked", "gzip", "float16", "big-endian"])
def test_other_h5_layouts_are_read_by_h5py(tmp_path, layout):
    import h5py
    import numpy as np

    from medmoe.data.feature_files import read_feature_file

    feats = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    kwargs = {"chunked": {"chunks": (10, 8)}, "gzip": {"compression": "gzip"}}.get(layout, {})
    data = {"float16": feats.astype(np.float16), "big-endian": feats.astype(">f4")}.get(layout, feats)
    path = tmp_path / f"{layout}.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=data, **kwargs)
    x, _ = read_feature_file(path)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), data.astype(np.float32), rtol=0, atol=0)


def test_pt_features_are_mapped_copy_on_write(tmp_path):
    from medmoe.data.feature_files import read_feature_file

    feats = torch.randn(200, 16)
    path = tmp_path / "slide.pt"
    torch.save({"features": feats, "coords": torch.zeros(200, 2, dtype=torch.long)}, path)
    before = path.read_bytes()
    x, coords = read_feature_file(path)
    assert torch.equal(x, feats) and coords.shape == (200, 2)
    x.add_(1.0)  # private to this process
    assert path.read_bytes() == before
    assert torch.equal(read_feature_file(path)[0], feats)


def test_a_trident_job_directory_is_found(tmp_path):
    from medmoe.data.feature_files import trident_features_dir

    job = tmp_path / "job"
    feats = job / "20x_256px_0px_overlap" / "features_uni_v1"
    write_trident_h5(feats / "a.h5", torch.randn(3, 4))
    (job / "20x_256px_0px_overlap" / "patches").mkdir()
    assert trident_features_dir(job) == feats and trident_features_dir(feats) == feats
    ds = FeatureFolderBags(job, _csv(tmp_path / "l.csv", [("a", 0)]))
    assert ds.features_dir == feats and len(ds) == 1
    write_trident_h5(job / "20x_256px_0px_overlap" / "features_conch_v15" / "a.h5", torch.randn(3, 5))
    with pytest.raises(ValueError, match="several TRIDENT feature folders .*features_conch_v15.*features_uni_v1"):
        trident_features_dir(job)
    with pytest.raises(ValueError, match="no feature files"):
        trident_features_dir(tmp_path / "job" / "20x_256px_0px_overlap" / "patches")
    with pytest.raises(ValueError, match="is not a folder"):
        trident_features_dir(feats / "a.h5")


def test_old_module_path_still_resolves_with_a_deprecation_warning():
    from medmoe import data
    from medmoe.data import feature_files, synthetic_bags

    with pytest.warns(DeprecationWarning, match="medmoe.data.feature_folder is deprecated"):
        from medmoe.data.feature_folder import FeatureFolderBags as Old
    assert Old is data.FeatureFolderBags
    with pytest.warns(DeprecationWarning, match="from medmoe.data.feature_files"):
        from medmoe.data.feature_folder import feature_files as listing
    assert listing is feature_files.feature_files
    with pytest.warns(DeprecationWarning):
        from medmoe.data.feature_folder import make_synthetic_feature_folder as make
    assert make is synthetic_bags.make_synthetic_feature_folder
    with pytest.raises(ImportError):
        from medmoe.data.feature_folder import _parse_labels  # noqa: F401
