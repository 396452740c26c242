"""CLAM instance loss (top/bottom-k pseudo-labels, subtyping, multi-branch) and the smooth top-1 SVM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import medmoe
from medmoe.models.mil.clam import CLAMConfig
from medmoe.nn.losses import SmoothTop1SVM, smooth_top1_svm_loss

IN_DIM = 11


def tiny(config: str = "base", num_classes: int = 3, **over):
    torch.manual_seed(0)
    kw = {"in_dim": IN_DIM, "embed_dim": 10, "attention_dim": 6, "k_sample": 3, **over}
    return medmoe.create_model(f"clam.{config}", num_classes=num_classes, **kw).eval()


def hand_instance_loss(model, x: torch.Tensor, y: int, loss_fn=None) -> torch.Tensor:
    """Recompute one bag's instance loss from the definition (``loss_fn``: the model's config's by default)."""
    if loss_fn is None:
        loss_fn = F.cross_entropy if model.config.instance_loss_fn == "ce" else smooth_top1_svm_loss
    h = model.patch_embed(x)[0]  # (n, d)
    scores = model.global_attn.scores(h.unsqueeze(0))[0]  # (k, n)
    k = min(model.config.k_sample, h.shape[0])
    total, c_num = 0.0, model.num_classes
    for c in range(c_num):
        a = scores[c] if model.config.multi_branch else scores[0]
        order = torch.argsort(a, descending=True)
        top, bottom = order[:k], order.flip(0)[:k]
        clf = model.instance_classifiers[c]
        if c == y:
            logits = clf(torch.cat([h[top], h[bottom]]))
            total = total + loss_fn(logits, torch.tensor([1] * k + [0] * k))
        elif model.config.subtyping:
            total = total + loss_fn(clf(h[top]), torch.tensor([0] * k))
    return total / c_num if model.config.subtyping else total


@pytest.mark.parametrize(
    "config", ["base", "base_ce", "base_subtyping", "base_ce_subtyping", "base_mb"]
)
def test_instance_loss_uses_top_and_bottom_k(config: str) -> None:
    model = tiny(config)
    x = torch.randn(1, 9, IN_DIM)
    loss_fn = F.cross_entropy if model.config.instance_loss_fn == "ce" else smooth_top1_svm_loss
    with torch.no_grad():
        for y in range(3):
            out = model(x, label=torch.tensor([y]))
            expected = hand_instance_loss(model, x, y, loss_fn)
            torch.testing.assert_close(out.extras["instance_loss"], expected)
            torch.testing.assert_close(out.aux_loss, 0.3 * expected)
            assert out.bag_loss_weight == pytest.approx(0.7)


def test_total_loss_is_weighted_sum() -> None:
    model = tiny()
    out = model(torch.randn(1, 9, IN_DIM), label=torch.tensor([2]))
    ce = F.cross_entropy(out.logits, torch.tensor([2]))
    torch.testing.assert_close(out.total_loss(ce), 0.7 * ce + 0.3 * out.extras["instance_loss"])


def test_no_label_no_aux_loss() -> None:
    out = tiny()(torch.randn(2, 9, IN_DIM))
    assert out.aux_loss is None and out.bag_loss_weight == 1.0 and "instance_loss" not in out.extras


def test_small_bags_use_k_equal_to_bag_size() -> None:
    model = tiny(k_sample=8)
    x = torch.randn(1, 3, IN_DIM)
    with torch.no_grad():
        out = model(x, label=torch.tensor([1]))
        expected = hand_instance_loss(model, x, 1)  # k = min(8, 3) = 3
    torch.testing.assert_close(out.extras["instance_loss"], expected)


def test_batched_instance_loss_is_mean_of_bags() -> None:
    model = tiny("base_subtyping")
    bags = [torch.randn(n, IN_DIM) for n in (9, 4, 6)]
    x = torch.zeros(3, 9, IN_DIM)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for j, b in enumerate(bags):
        x[j, : len(b)], mask[j, : len(b)] = b, True
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        batched = model(x, mask, label=labels).extras["instance_loss"]
        single = [
            model(b.unsqueeze(0), label=labels[j : j + 1]).extras["instance_loss"] for j, b in enumerate(bags)
        ]
    torch.testing.assert_close(batched, torch.stack(single).mean())


def test_multi_branch_shapes() -> None:
    model = tiny("base_mb")
    out = model(torch.randn(2, 7, IN_DIM), return_attention=True)
    assert out.attention.shape == (2, 3, 7)
    assert out.slide_features.shape == (2, 30)
    assert len(model.classifiers) == 3 and model.classifiers[0].out_features == 1


def test_label_validation() -> None:
    model = tiny()
    x = torch.randn(2, 5, IN_DIM)
    with pytest.raises(ValueError):
        model(x, label=torch.tensor([0]))
    with pytest.raises(ValueError):
        model(x, label=torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        model(x, label=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        CLAMConfig(instance_loss_fn="hinge")
    with pytest.raises(ValueError):
        CLAMConfig(bag_weight=1.5)


# MIL-Lab / MAMMOTH-fork names mean MIL-Lab's models; medmoe's own variants have their own names.
CLAM_NAMES = [
    # name, instance loss, subtyping, Mammoth patch embedding, multi-branch
    ("base", "svm", False, False, False),  # MIL-Lab clam/base
    ("base_ce", "ce", False, False, False),  # MIL-Lab clam/base_ce
    ("base_subtyping", "svm", True, False, False),  # MIL-Lab clam/base_subtyping
    ("base_ce_subtyping", "ce", True, False, False),  # MIL-Lab clam/base_ce_subtyping
    ("base_mammoth", "svm", False, True, False),  # MAMMOTH fork clam/base_mammoth
    ("base_ce_mammoth", "ce", False, True, False),  # medmoe's own
    ("base_mb", "ce", False, False, True),  # medmoe's own (CLAM-MB)
]


@pytest.mark.parametrize("config,loss,subtyping,mammoth,multi_branch", CLAM_NAMES)
def test_config_names_mean_mil_labs_models(config, loss, subtyping, mammoth, multi_branch) -> None:
    model = medmoe.create_model(f"clam.{config}")
    c = model.config
    assert (c.instance_loss_fn, c.subtyping, c.multi_branch) == (loss, subtyping, multi_branch)
    assert (c.k_sample, c.bag_weight, c.attention_dim, c.embed_dim, c.dropout, c.gate) == (8, 0.7, 384, 512, 0.25, True)
    assert isinstance(model.instance_loss_fn, SmoothTop1SVM if loss == "svm" else torch.nn.CrossEntropyLoss)
    assert type(model.patch_embed).__name__ == ("Mammoth" if mammoth else "MLPEmbed")
    if mammoth:
        args = c.patch_embed_args
        assert (args["num_experts"], args["num_slots"], args["num_heads"], args["slot_dim"]) == (30, 10, 16, 256)


def test_clam_default_and_config_class_default_are_the_svm_loss() -> None:
    assert medmoe.create_model("clam").config.instance_loss_fn == "svm"
    assert CLAMConfig().instance_loss_fn == "svm"  # MIL-Lab's CLAMConfig default


def test_svm_and_ce_clam_differ_only_in_the_instance_loss() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 20, IN_DIM)
    svm, ce = tiny("base"), tiny("base_ce")
    svm.load_state_dict(ce.state_dict())
    with torch.no_grad():
        a, b = svm(x, label=torch.tensor([1])), ce(x, label=torch.tensor([1]))
    torch.testing.assert_close(a.logits, b.logits)
    assert not torch.allclose(a.extras["instance_loss"], b.extras["instance_loss"])
    expected = hand_instance_loss(svm, x, 1, smooth_top1_svm_loss)
    torch.testing.assert_close(a.extras["instance_loss"], expected)


def test_label_without_return_attention_gives_the_instance_loss() -> None:
    """MIL-Lab's CLAM raises KeyError('attention') here; medmoe computes the loss (a written difference)."""
    out = tiny("base")(torch.randn(1, 9, IN_DIM), label=torch.tensor([0]), return_attention=False)
    assert out.aux_loss is not None and out.attention is None


# ---------------------------------------------------------------------- smooth top-1 SVM
def test_smooth_top1_svm_by_hand() -> None:
    scores = torch.tensor([[1.0, 2.0, 0.5], [0.2, -0.3, 0.1]])
    target = torch.tensor([0, 2])
    # L = tau * log sum_j exp((s_j + alpha [j != y] - s_y) / tau), tau = alpha = 1
    l0 = math.log(math.exp(0.0) + math.exp(2.0 + 1 - 1.0) + math.exp(0.5 + 1 - 1.0))
    l1 = math.log(math.exp(0.2 + 1 - 0.1) + math.exp(-0.3 + 1 - 0.1) + math.exp(0.0))
    per = smooth_top1_svm_loss(scores, target, reduction="none")
    torch.testing.assert_close(per, torch.tensor([l0, l1]))
    torch.testing.assert_close(SmoothTop1SVM(3)(scores, target), torch.tensor((l0 + l1) / 2))
    # temperature and margin
    t = smooth_top1_svm_loss(scores[:1], target[:1], tau=0.5, alpha=2.0)
    terms = [0.0, (2.0 + 2 - 1.0) / 0.5, (0.5 + 2 - 1.0) / 0.5]
    expected = 0.5 * math.log(sum(math.exp(v) for v in terms))
    assert t.item() == pytest.approx(expected, rel=1e-6)


def test_smooth_top1_svm_hard_switch() -> None:
    scores = torch.tensor([[10.0, 0.0], [10.0, 0.0]])  # gap 10 >= log(1000): hard multi-class SVM
    target = torch.tensor([0, 1])
    per = smooth_top1_svm_loss(scores, target, reduction="none")
    torch.testing.assert_close(per, torch.tensor([0.0, 11.0]))
    smooth = smooth_top1_svm_loss(scores, target, hard_threshold=None, reduction="none")
    expected = torch.tensor([math.log1p(math.exp(-9.0)), 11.0 + math.log1p(math.exp(-11.0))])
    torch.testing.assert_close(smooth, expected)


def test_smooth_top1_svm_gradients_and_errors() -> None:
    scores = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 1])
    assert torch.autograd.gradcheck(lambda s: smooth_top1_svm_loss(s, target), (scores,))
    with pytest.raises(ValueError):
        smooth_top1_svm_loss(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        smooth_top1_svm_loss(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        smooth_top1_svm_loss(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), tau=0.0)
    with pytest.raises(ValueError):
        SmoothTop1SVM(2)(torch.randn(3, 3), torch.zeros(3, dtype=torch.long))
