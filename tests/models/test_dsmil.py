"""DSMIL maths: critical-instance attention, the final-logit formula and masking."""

from __future__ import annotations

import math

import torch

import medmoe

IN_DIM = 13


def tiny(**over):
    torch.manual_seed(0)
    kw = {"in_dim": IN_DIM, "embed_dim": 10, "attn_dim": 6, **over}
    return medmoe.create_model("dsmil", num_classes=3, **kw).eval()


def test_forward_by_hand() -> None:
    model = tiny()
    x = torch.randn(2, 8, IN_DIM)
    with torch.no_grad():
        out = model(x, return_attention=True)
        h = model.patch_embed(x)  # (b, n, d)
        ic = model.i_classifier.inst_classifier
        c = h @ ic.weight.T + ic.bias  # (b, n, C)
        bc = model.b_classifier
        crit = c.argmax(dim=1)  # (b, C)
        h_crit = torch.stack([h[j, crit[j]] for j in range(2)])  # (b, C, d)
        q, q_crit = bc.q(h), bc.q(h_crit)
        a = torch.softmax(q @ q_crit.transpose(1, 2) / math.sqrt(6), dim=1)  # (b, n, C)
        v = bc.v[1](h)
        bag = torch.nn.functional.layer_norm(a.transpose(1, 2) @ v, (10,), bc.norm.weight, bc.norm.bias)
        w, b = model.classifier.weight, model.classifier.bias  # Conv1d(C, C, kernel=d): (C, C, d)
        bag_logits = torch.einsum("ocd,bcd->bo", w, bag) + b
        max_inst = c.max(dim=1).values
    torch.testing.assert_close(out.extras["bag_logits"], bag_logits)
    torch.testing.assert_close(out.extras["max_instance_logits"], max_inst)
    torch.testing.assert_close(out.logits, 0.5 * (bag_logits + max_inst))
    torch.testing.assert_close(out.instance_logits, c)
    torch.testing.assert_close(out.attention, a.transpose(1, 2))
    torch.testing.assert_close(out.slide_features, bag.flatten(1))
    assert torch.equal(out.extras["critical_tokens"], crit)


def test_attention_is_post_softmax_and_masked() -> None:
    model = tiny()
    x = torch.randn(2, 7, IN_DIM)
    x[1, 4:] = 100.0  # junk padding that would win the argmax and the max if not masked
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        out = model(x, mask, return_attention=True)
        alone = model(x[1:, :4])
    assert model.attention_kind == "post-softmax"
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 3))
    assert torch.all(out.attention[1, :, 4:] == 0)
    assert int(out.extras["critical_tokens"][1].max()) < 4
    torch.testing.assert_close(out.logits[1], alone.logits[0])


def test_state_dict_matches_milab_minus_unused_conv() -> None:
    keys = set(tiny().state_dict())
    assert keys == {
        "patch_embed.0.weight", "patch_embed.0.bias",
        "i_classifier.inst_classifier.weight", "i_classifier.inst_classifier.bias",
        "b_classifier.q.weight", "b_classifier.q.bias", "b_classifier.v.1.weight", "b_classifier.v.1.bias",
        "b_classifier.norm.weight", "b_classifier.norm.bias", "classifier.weight", "classifier.bias",
    }


def test_slot_tokens_have_no_patch_instance_logits() -> None:
    torch.manual_seed(0)
    model = medmoe.create_model(
        "dsmil.base_mammoth", num_classes=2, in_dim=IN_DIM, embed_dim=32, attn_dim=8,
        patch_embed_args={"num_experts": 4, "num_slots": 2, "num_heads": 4, "slot_dim": 16},
    ).eval()
    out = model(torch.randn(1, 5, IN_DIM), return_attention=True)
    assert out.instance_logits is None
    assert out.attention.shape == (1, 2, 5)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(1, 2))
