"""Nyström attention: exactness when landmarks = tokens, masking, per-sample pinv, shapes and validation."""

from __future__ import annotations

import pytest
import torch

from medmoe.nn.attention import NystromAttention, moore_penrose_pinv


def _exact_attention(att: NystromAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention with the layer's weights (no residual conv): (output, weights)."""
    b, n, _ = x.shape
    h, d = att.heads, att.dim_head
    q, k, v = (t.view(b, n, h, d).transpose(1, 2) for t in att.to_qkv(x).chunk(3, dim=-1))
    weights = (q @ k.transpose(-1, -2) * d**-0.5).softmax(dim=-1)
    out = att.to_out((weights @ v).transpose(1, 2).reshape(b, n, h * d))
    return out, weights


def test_pinv_matches_inverse_of_well_conditioned_matrices() -> None:
    eye = torch.eye(10, dtype=torch.float64)
    m = torch.randn(3, 10, 10, dtype=torch.float64) + 5 * eye
    for per_sample in (False, True):
        inv = moore_penrose_pinv(m, iters=30, per_sample=per_sample)
        torch.testing.assert_close(m @ inv, eye.expand(3, 10, 10))
    with pytest.raises(ValueError):
        moore_penrose_pinv(torch.randn(3, 4))


def test_exact_softmax_attention_when_every_token_is_a_landmark() -> None:
    att = NystromAttention(
        16, dim_head=8, heads=2, num_landmarks=32, pinv_iterations=30, residual=False
    ).double()
    x = 3 * torch.randn(2, 32, 16, dtype=torch.float64)
    out, attn = att(x, return_attn=True)
    ref_out, ref_attn = _exact_attention(att, x)
    torch.testing.assert_close(attn, ref_attn, atol=1e-9, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=1e-9, rtol=0)


@pytest.mark.parametrize("n", [5, 40, 64, 100])
def test_shapes_and_optional_outputs(n: int) -> None:
    att = NystromAttention(24, dim_head=6, heads=4, num_landmarks=16, residual_conv_kernel=5).eval()
    x = torch.randn(2, n, 24)
    out = att(x)
    assert out.shape == (2, n, 24)
    out2, attn = att(x, return_attn=True)
    torch.testing.assert_close(out2, out)
    assert attn.shape == (2, 4, n, n)
    padded = n + (-n) % 16
    _, (a1, a2_inv, a3) = att(x, return_attn_matrices=True)
    assert (
        a1.shape == (2, 4, padded, 16) and a2_inv.shape == (2, 4, 16, 16) and a3.shape == (2, 4, 16, padded)
    )


def test_state_dict_keys_match_the_reference_layout() -> None:
    att = NystromAttention(32, dim_head=8, heads=4, num_landmarks=8)
    assert set(att.state_dict()) == {"to_qkv.weight", "to_out.0.weight", "to_out.0.bias", "res_conv.weight"}
    assert att.res_conv.weight.shape == (4, 1, 33, 1)
    plain = NystromAttention(32, dim_head=8, heads=4, num_landmarks=8, residual=False)
    assert "res_conv.weight" not in plain.state_dict()


def test_masked_tokens_do_not_influence_real_outputs() -> None:
    att = NystromAttention(16, dim_head=4, heads=4, num_landmarks=8).eval()
    x = torch.randn(2, 30, 16)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 20:] = False
    mask[1, :3] = False
    junk = x.clone()
    junk[~mask] = 1e4 * torch.randn(int((~mask).sum()), 16)
    a, b = att(x, mask), att(junk, mask)
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(a).all()


def test_per_sample_pinv_makes_bags_independent_of_the_batch() -> None:
    torch.manual_seed(3)
    att = NystromAttention(16, dim_head=4, heads=4, num_landmarks=8, pinv_scale="sample").eval()
    x = torch.randn(3, 24, 16)
    x[2] *= 10  # very different bag in the same batch
    batched = att(x)
    for i in range(3):
        torch.testing.assert_close(batched[i], att(x[i : i + 1])[0], atol=1e-6, rtol=1e-5)


def test_gradients_flow_to_input_and_parameters() -> None:
    att = NystromAttention(4, dim_head=2, heads=2, num_landmarks=4, residual_conv_kernel=3).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 6, dtype=torch.bool)
    mask[0, -2:] = False
    assert torch.autograd.gradcheck(lambda t: att(t, mask), (x,), eps=1e-6, atol=1e-5)
    att(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in att.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0},
        {"dim": 8, "heads": 0},
        {"dim": 8, "num_landmarks": 0},
        {"dim": 8, "dropout": 1.0},
        {"dim": 8, "pinv_scale": "global"},
        {"dim": 8, "pinv_iterations": -1},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        NystromAttention(**kwargs)


def test_bad_inputs_raise_value_error() -> None:
    att = NystromAttention(8, dim_head=4, heads=2, num_landmarks=4)
    with pytest.raises(ValueError):
        att(torch.randn(1, 5, 7))
    with pytest.raises(ValueError):
        att(torch.randn(5, 8))
    with pytest.raises(ValueError):
        att(torch.randn(1, 5, 8), torch.ones(1, 4, dtype=torch.bool))


@pytest.mark.parametrize(
    ("landmarks", "n", "scale", "b"),
    [(8, 3, "batch", 1), (8, 5, "batch", 2), (8, 9, "sample", 2), (8, 9, "batch", 1), (16, 20, "sample", 2),
     (256, 10, "batch", 1), (256, 325, "batch", 2)],
)
def test_padded_bags_on_real_landmarks_equal_the_full_computation(landmarks, n, scale, b) -> None:
    """Whole landmark segments of padding (TransMIL bags under 256 tokens; 325 tokens -> 93 zero landmarks):
    the reduced computation gives the full one's values and gradients (float64)."""
    torch.manual_seed(0)
    att = NystromAttention(16, dim_head=8, heads=2, num_landmarks=landmarks, residual_conv_kernel=5,
                           pinv_scale=scale).double()
    x = torch.randn(b, n, 16, dtype=torch.float64, requires_grad=True)
    calls = []
    real = att._forward_padded
    att._forward_padded = lambda t: calls.append(1) or real(t)
    out = att(x)
    assert calls == [1]
    g = torch.randn_like(out)
    params = [x, *att.parameters()]
    grads = torch.autograd.grad(out, params, g)
    att.exploit_padding = False
    ref = att(x)
    assert calls == [1]  # the switch forces the full computation
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    for a, e in zip(grads, torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, e, atol=1e-11, rtol=1e-9)


def test_masks_attention_maps_and_little_padding_take_the_full_computation() -> None:
    att = NystromAttention(16, dim_head=8, heads=2, num_landmarks=8).double()
    calls = []
    att._forward_padded = lambda t: calls.append(1)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    att(x, mask=torch.ones(2, 5, dtype=torch.bool))
    att(x, return_attn=True)
    att(x, return_attn_matrices=True)
    att(torch.randn(1, 15, 16, dtype=torch.float64))  # 1 padding token in segments of 2: no zero landmark
    att(torch.randn(1, 7, 16, dtype=torch.float64))  # 1 zero landmark of 8: less than a quarter
    assert calls == []
