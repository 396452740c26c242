"""The Ilse et al. (2018) MIL-benchmark network (``ilse.base`` gated, ``ilse.attention`` plain)."""

import pytest
import torch

import medmoe
from medmoe.models.mil.ilse import IlseMIL, IlseMILConfig


def linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize(("name", "gated"), [("ilse.base", True), ("ilse.attention", False)])
def test_paper_layers(name, gated):
    """fc-256 + ReLU, fc-128 + ReLU, fc-64 + ReLU (dropout 0.5 after each), attention with L = 64, classifier."""
    model = medmoe.create_model(name, num_classes=2, in_dim=166)
    shapes = {n: tuple(m.weight.shape) for n, m in linears(model)}
    assert shapes["patch_embed.0"] == (256, 166)
    assert [shapes["fc.1"], shapes["fc.4"]] == [(128, 256), (64, 128)]
    assert shapes["attention.attention_a.0"] == (64, 64)
    assert ("attention.attention_b.0" in shapes) is gated
    assert shapes["attention.attention_c"] == (1, 64) and shapes["classifier"] == (2, 64)
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops.count(0.5) == 3 and all(p in (0.0, 0.5) for p in drops)


def test_dropout_after_last_keeps_one_dropout_and_the_same_weights_layout():
    """MI-Net's layout (one dropout, after fc-64): the same state-dict keys, so checkpoints move between them."""
    every = medmoe.create_model("ilse.base", num_classes=2, in_dim=166)
    last = medmoe.create_model("ilse.base", num_classes=2, in_dim=166, dropout_after="last")
    drops = [(n, m.p) for n, m in last.fc.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [("6", 0.5)]  # fc: Identity, Linear, ReLU, Identity, Linear, ReLU, Dropout
    assert isinstance(last.fc[0], torch.nn.Identity) and isinstance(last.fc[3], torch.nn.Identity)
    assert every.state_dict().keys() == last.state_dict().keys()
    last.load_state_dict(every.state_dict())
    x = torch.randn(1, 6, 166)
    torch.testing.assert_close(last.eval()(x).logits, every.eval()(x).logits)


def test_xavier_init_with_zero_biases_and_mil_lab_alternative():
    torch.manual_seed(0)
    model = medmoe.create_model("ilse.base", num_classes=2, in_dim=230)
    for _, layer in linears(model):
        assert torch.count_nonzero(layer.bias) == 0
        fan_out, fan_in = layer.weight.shape
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max() <= bound + 1e-7
        assert layer.weight.abs().max() > 0.8 * bound  # uniform over the whole Glorot range
    kaiming = medmoe.create_model("ilse.base", num_classes=2, in_dim=230, init="mil_lab")
    assert not torch.equal(kaiming.patch_embed[0].weight.abs().max(), model.patch_embed[0].weight.abs().max())


def test_mammoth_patch_embedding_keeps_its_own_init():
    torch.manual_seed(0)
    model = medmoe.create_model("ilse.base", num_classes=2, in_dim=20, patch_embed="mammoth",
                                patch_embed_args={"num_experts": 4, "num_slots": 2, "num_heads": 4, "slot_dim": 16},
                                embed_dim=32)
    out = model(torch.randn(2, 7, 20), return_attention=True)
    assert out.logits.shape == (2, 2) and out.attention.shape == (2, 1, 7)


def test_binary_output_is_a_bernoulli_on_the_logit_difference():
    """Two logits + softmax = the paper's sigmoid output with weight w1 - w0 (same function class)."""
    model = medmoe.create_model("ilse.base", num_classes=2, in_dim=9).eval()
    x = torch.randn(1, 5, 9)
    out = model(x)
    w = model.classifier.weight[1] - model.classifier.weight[0]
    b = model.classifier.bias[1] - model.classifier.bias[0]
    p_sigmoid = torch.sigmoid(out.slide_features[0] @ w + b)
    torch.testing.assert_close(out.logits.softmax(-1)[0, 1], p_sigmoid)


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_dims", [128, 0]), ("hidden_dims", "128"), ("attn_dim", 0), ("init", "he"), ("dropout", 1.0),
     ("dropout_after", "first")],
)
def test_bad_config_raises_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        IlseMILConfig(**{field: value})


def test_registered():
    assert {"ilse.base", "ilse.attention"} <= set(medmoe.list_models("ilse*"))
    assert isinstance(medmoe.create_model("ilse"), IlseMIL)
