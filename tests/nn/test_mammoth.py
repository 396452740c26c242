import logging

import pytest
import torch

from medmoe.nn import Mammoth, create_patch_embed, mammoth_auto_rank


def tiny(**kw) -> Mammoth:
    cfg = {"num_experts": 3, "num_slots": 2, "num_heads": 2, "slot_dim": 8, "dropout": 0.0}
    cfg.update(kw)
    return Mammoth(kw.pop("input_dim", 10), kw.pop("dim", 12), **{k: v for k, v in cfg.items() if k not in ("input_dim", "dim")})


@pytest.mark.parametrize(
    "input_dim,rank,params",
    [(512, 8, 364_176), (768, 13, 507_872), (1024, 17, 635_936), (1536, 25, 892_064), (2560, 42, 1_419_952)],
)
def test_auto_rank_and_parameter_budget_match_the_paper_table(input_dim, rank, params):
    m = Mammoth(input_dim, 512)
    assert m.lora_rank == rank == mammoth_auto_rank(input_dim, 256, 512, 30)
    assert sum(p.numel() for p in m.parameters()) == params


def test_state_dict_keys_and_shapes_match_mammoth_moe():
    sd = Mammoth(1024, 512).state_dict()
    expected = {
        "slot_embeds": (30, 16, 10, 16),
        "wq.weight": (256, 1024),
        "wq.bias": (256,),
        "norm.gamma": (256,),
        "norm.beta": (256,),
        "slot_norm.gamma": (16,),
        "slot_norm.beta": (16,),
        "expert_heads.lora_layers.shared_weight": (16, 16, 17),
        "expert_heads.lora_layers.shared_bias": (16, 17),
        "expert_heads.lora_layers.expert_weights": (30, 16, 17, 32),
        "expert_heads.lora_layers.bias": (30, 16, 32),
        "expert_heads.norm.gamma": (30, 512),
    }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


@pytest.mark.parametrize("keep_slots", [True, False])
@pytest.mark.parametrize("input_dim", [166, 230, 10])  # not multiples of num_heads
def test_shapes(keep_slots, input_dim):
    m = tiny(input_dim=input_dim, keep_slots=keep_slots)
    out = m(torch.randn(2, 7, input_dim))
    assert out.shape == ((2, 6, 12) if keep_slots else (2, 7, 12))
    assert m(torch.randn(7, input_dim)).shape[0] == 1  # unbatched input stays batched, as the reference


def test_dim_equal_slot_dim_gives_rank_one_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="medmoe.nn.mammoth"):
        m = Mammoth(512, 256, slot_dim=256)
    assert m.lora_rank == 1
    assert "rank 1" in caplog.text
    assert torch.isfinite(m(torch.randn(1, 5, 512))).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_heads": 5}, "divisible by num_heads"),
        ({"num_experts": 0}, "num_experts"),
        ({"dropout": 1.5}, "dropout"),
        ({"auto_rank": False, "lora_rank": 0}, "lora_rank"),
        ({"slot_dim": 2.5}, "slot_dim"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_bad_inputs_raise_value_error():
    m = tiny()
    with pytest.raises(ValueError, match=r"\(b, n, 10\)"):
        m(torch.randn(1, 4, 11))
    with pytest.raises(ValueError, match="n = 0"):
        m(torch.randn(1, 0, 10))
    with pytest.raises(ValueError, match="mask must have shape"):
        m(torch.randn(2, 4, 10), mask=torch.ones(2, 5, dtype=torch.bool))
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="fully masked"):
        m(torch.randn(2, 4, 10), mask=mask)


def test_factory_rejects_unknown_argument_with_the_accepted_list():
    with pytest.raises(ValueError, match="num_experts"):
        create_patch_embed("mammoth", 10, 12, num_expert=3)


@pytest.mark.parametrize("keep_slots", [True, False])
def test_padding_does_not_change_outputs_or_gradients(keep_slots):
    m = tiny(keep_slots=keep_slots)
    a, b = torch.randn(1, 5, 10), torch.randn(1, 9, 10)
    batch = torch.zeros(2, 9, 10)
    batch[0, :5], batch[1] = a[0], b[0]
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5] = True
    mask[1] = True
    batch.requires_grad_()
    out = m(batch, mask=mask)
    out_a, out_b = m(a), m(b)
    if keep_slots:
        torch.testing.assert_close(out[0], out_a[0], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(out[0, :5], out_a[0], atol=1e-5, rtol=1e-5)
        assert out[0, 5:].abs().max() == 0
    torch.testing.assert_close(out[1], out_b[0], atol=1e-5, rtol=1e-5)
    out[0].sum().backward()
    a.requires_grad_()
    m(a).sum().backward()
    torch.testing.assert_close(batch.grad[0, :5], a.grad[0], atol=1e-5, rtol=1e-4)
    assert batch.grad[0, 5:].abs().max() == 0


@pytest.mark.parametrize("keep_slots", [True, False])
def test_gradcheck_float64(keep_slots):
    m = tiny(keep_slots=keep_slots).double()
    x = torch.randn(2, 4, 10, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    assert torch.autograd.gradcheck(lambda t: m(t, mask=mask), (x,), eps=1e-6, atol=1e-5)


def test_attention_path_equals_explicit_path():
    for keep in (True, False):
        m = tiny(keep_slots=keep)
        x = torch.randn(2, 6, 10)
        mask = torch.ones(2, 6, dtype=torch.bool)
        mask[0, 4:] = False
        fast = m(x, mask=mask)
        explicit, _ = m._forward_explicit(*m._check(x, mask))
        torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


def test_dispatch_weights_are_chunked_correctly_and_normalised_over_patches():
    m = tiny(routing_chunk_size=3)
    x = torch.randn(2, 8, 10)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 6:] = False
    _, w = m(x, return_weights=True, mask=mask)
    assert w.shape == (2, 8, 3, 2, 2)  # (b, n, E, H, S)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 3, 2, 2))
    assert w[1, 6:].abs().max() == 0
    m.routing_chunk_size = 100
    torch.testing.assert_close(m(x, return_weights=True, mask=mask)[1], w)


def test_routing_summary_and_patch_scores():
    m = tiny(routing_chunk_size=4)
    x = torch.randn(2, 9, 10)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 7:] = False
    emb = m.embed(x, mask, return_routing=True)
    assert emb.tokens.shape == (2, 6, 12) and emb.mask is None
    r = emb.routing
    assert r.expert_assignment.shape == (2, 9, 3)
    torch.testing.assert_close(r.expert_assignment[1].sum(-1), torch.ones(9))
    assert r.expert_assignment[0, 7:].abs().max() == 0
    torch.testing.assert_close(r.slot_composition.sum(1), torch.ones(2, 6))
    # slot attention summing to 1 becomes a patch distribution summing to 1
    attn = torch.softmax(torch.randn(2, 1, 6), -1)
    patch = emb.patch_scores(attn)
    assert patch.shape == (2, 1, 9)
    torch.testing.assert_close(patch.sum(-1), torch.ones(2, 1))
    assert torch.allclose(r.expert_load(mask).sum(-1), torch.ones(2))
    # the summary agrees with the full dispatch weights
    _, w = m(x, return_weights=True, mask=mask)
    per_expert = w.sum(dim=(3, 4))
    torch.testing.assert_close(r.expert_assignment, per_expert / per_expert.sum(-1, keepdim=True).clamp_min(1e-30))


def test_autocast_bf16_keeps_routing_in_fp32_and_stays_close():
    m = tiny(keep_slots=False)
    x = torch.randn(2, 16, 10)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1


def test_slot_dropout_only_in_training():
    m = tiny(slot_dropout=0.5)
    x = torch.randn(1, 6, 10)
    m.train()
    out_train = m(x)
    assert torch.isfinite(out_train).all()
    m.eval()
    torch.testing.assert_close(m(x), m._forward_explicit(*m._check(x, None))[0], atol=1e-5, rtol=1e-5)


def test_no_printing(capsys):
    Mammoth(64, 32, num_heads=4, slot_dim=16)
    assert capsys.readouterr().out == ""
