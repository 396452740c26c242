"""Slide embeddings of a trained checkpoint: the classifier's input, saved and read back in every format."""

import pandas as pd
import pytest
import torch
from engine_synthetic import TINY_ABMIL, synthetic_bags

from medmoe.data import InMemoryBags
from medmoe.engine import (
    SlideEmbeddings,
    TrainConfig,
    embed_slides,
    load_checkpoint,
    load_slide_embeddings,
    predict,
    save_slide_embeddings,
    train_one_fold,
)
from medmoe.viz.slide_embedding_map import plot_slide_embeddings

CFG = TrainConfig(epochs=2, lr=5e-3, min_epochs=1, patience=None, progress=False, accelerator="cpu",
                  standardize_features=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fold")
    result = train_one_fold("abmil.base", synthetic_bags(16, seed=0), None, None, CFG, out, TINY_ABMIL)
    return result.checkpoint_dir


def test_vectors_are_what_the_classifier_reads(checkpoint):
    data = synthetic_bags(7, seed=3)
    emb = embed_slides(checkpoint, data)
    assert emb.features.shape == (7, 16) and emb.bag_ids == data.bag_ids and emb.labels == data.labels
    assert emb.class_names == ["neg", "pos"] and emb.meta["model"] == "abmil.base"

    # by hand: standardise with the checkpoint's statistics, one bag at a time
    model, info = load_checkpoint(checkpoint)
    model.eval()
    mean = torch.as_tensor(info["feature_stats"]["mean"])
    std = torch.as_tensor(info["feature_stats"]["std"])
    with torch.no_grad():
        for i in range(len(data)):
            x = (data[i].features - mean) / std
            torch.testing.assert_close(emb.features[i], model(x.unsqueeze(0)).slide_features[0])
        # the classifier applied to the vectors gives predict()'s probabilities
        probs = model.classifier(emb.features).softmax(-1)
    rows = predict(checkpoint, data)
    assert [r["prob_pos"] for r in rows] == pytest.approx(probs[:, 1].tolist(), abs=1e-6)

    # padding in a batch changes nothing
    torch.testing.assert_close(embed_slides(checkpoint, data, batch_size=4).features, emb.features)


def test_bad_input(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="expects 8-d features"):
        embed_slides(checkpoint, InMemoryBags([torch.ones(3, 5)], [0]))
    with pytest.raises(ValueError, match="batch_size"):
        embed_slides(checkpoint, synthetic_bags(2), batch_size=0)
    emb = SlideEmbeddings(["a", "b"], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="end the file name with one of"):
        save_slide_embeddings(emb, tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no slide-embedding file"):
        load_slide_embeddings(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match=r"\(N, d\) with N = 2"):
        SlideEmbeddings(["a", "b"], torch.zeros(3, 3))
    with pytest.raises(ValueError, match="3 labels for 2 bags"):
        SlideEmbeddings(["a", "b"], torch.zeros(2, 3), labels=[0, 1, 0])


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".pt"])
@pytest.mark.parametrize("labels", [[1, 0, -1], None])
def test_files_read_back_identical(tmp_path, suffix, labels):
    emb = SlideEmbeddings(["slide a", "b", "c"], torch.randn(3, 5), labels=labels, class_names=["x", "y"],
                          meta={"model": "abmil.base", "task": "classification"})
    path = save_slide_embeddings(emb, tmp_path / f"out{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    back = load_slide_embeddings(path)
    assert back.bag_ids == emb.bag_ids and back.labels == labels and back.class_names == ["x", "y"]
    assert torch.equal(back.features, emb.features)
    if suffix != ".npz":
        assert back.meta == emb.meta


def test_csv_for_spreadsheets(tmp_path):
    emb = SlideEmbeddings(["a,1", "b"], torch.tensor([[0.1, -2.0], [3.5, 1e-8]]), labels=[0, 1])
    path = save_slide_embeddings(emb, tmp_path / "emb.csv")
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["slide_id", "label", "f0", "f1"]
    assert list(frame["slide_id"]) == ["a,1", "b"] and list(frame["label"]) == [0, 1]
    assert torch.equal(torch.tensor(frame[["f0", "f1"]].to_numpy(), dtype=torch.float32), emb.features)
    with pytest.raises(ValueError, match="pandas.read_csv"):
        load_slide_embeddings(path)


def test_map_of_slides(tmp_path):
    feats = torch.randn(12, 6)
    png = plot_slide_embeddings(feats, [0, 1, -1] * 4, ["neg", "pos"], tmp_path / "map.png")
    assert png.is_file() and png.stat().st_size > 5000
    assert plot_slide_embeddings(feats, None, [], tmp_path / "plain.png").is_file()
    with pytest.raises(ValueError, match="at least two slides"):
        plot_slide_embeddings(feats[:1], [0], ["neg"], tmp_path / "one.png")
    with pytest.raises(ValueError, match="3 labels for 12 slides"):
        plot_slide_embeddings(feats, [0, 1, 0], ["neg", "pos"], tmp_path / "bad.png")
