"""medmoe.nn.Mammoth against mammoth-moe 0.1.2 with copied weights (outputs and gradients, fp32)."""

import contextlib
import io

import pytest
import torch

from medmoe.nn import Mammoth

mammoth = pytest.importorskip("mammoth", reason="install the parity extra: pip install -e '.[parity]'")
pytestmark = pytest.mark.parity

CFG = {"num_experts": 5, "num_slots": 3, "num_heads": 4, "slot_dim": 32, "dropout": 0.0}


def make_pair(input_dim=48, dim=64, **kw):
    cfg = {**CFG, **kw}
    with contextlib.redirect_stdout(io.StringIO()):
        ref = mammoth.Mammoth(input_dim, dim, **cfg)
    ours = Mammoth(input_dim, dim, **cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def assert_same_grads(ref, ours, x_ref, x_ours):
    """1e-5 absolute, scaled by the gradient's largest entry when that exceeds 1: float32 keeps ~7 digits,
    so a gradient of size ~60 (slot embeddings with head size 16) cannot agree to 1e-5 absolute, whichever
    kernel (PyTorch's or medmoe's) computes it."""
    pairs = [("input", x_ours.grad, x_ref.grad)]
    ref_params = dict(ref.named_parameters())
    pairs += [(name, p.grad, ref_params[name].grad) for name, p in ours.named_parameters()]
    for name, mine, theirs in pairs:
        scale = max(1.0, float(theirs.abs().max()))
        torch.testing.assert_close(mine, theirs, atol=1e-5 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("keep_slots", [True, False])
@pytest.mark.parametrize("use_layernorm", [True, False])
@pytest.mark.parametrize("return_weights", [False, True])
@pytest.mark.parametrize("slot_dim", [32, 64], ids=["head8-sdpa", "head16-native"])
def test_outputs_and_gradients_match(keep_slots, use_layernorm, return_weights, slot_dim):
    """slot_dim 64 / 4 heads = head size 16: the dispatch runs the native CPU kernel where it builds."""
    ref, ours = make_pair(48, 96, keep_slots=keep_slots, use_layernorm=use_layernorm, slot_dim=slot_dim)
    x_ref = torch.randn(2, 37, 48, requires_grad=True)
    x_ours = x_ref.detach().clone().requires_grad_()
    out_ref, out_ours = ref(x_ref, return_weights=return_weights), ours(x_ours, return_weights=return_weights)
    if return_weights:
        (out_ref, w_ref), (out_ours, w_ours) = out_ref, out_ours
        assert w_ours.shape == w_ref.shape == (2, 37, 5, 4, 3)
        torch.testing.assert_close(w_ours, w_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_ours, out_ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out_ref)
    (out_ref * grad).sum().backward()
    (out_ours * grad).sum().backward()
    assert_same_grads(ref, ours, x_ref, x_ours)


def test_uni_configuration_and_unbatched_input():
    ref, ours = make_pair(1024, 512, num_experts=30, num_slots=10, num_heads=16, slot_dim=256)
    assert ours.lora_rank == ref.lora_rank == 17
    x = torch.randn(300, 1024)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_training_mode_without_dropout_matches():
    ref, ours = make_pair(keep_slots=False)
    ref.train(), ours.train()
    x = torch.randn(1, 20, 48)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_unshared_lora_weights():
    """mammoth-moe 0.1.2 crashes in forward with share_lora_weights=False (its per-expert bias
    broadcast adds a dimension, then ExpertWiseRMSNorm asserts 4-D input). We check that its state dict
    loads into ours, and that ours equals the reference's *shared* model when every expert holds the
    shared factor — the per-expert path computes the same maths expert by expert."""
    with contextlib.redirect_stdout(io.StringIO()):
        ref_unshared = mammoth.Mammoth(48, 64, share_lora_weights=False, **CFG)
    ours = Mammoth(48, 64, share_lora_weights=False, **CFG)
    ours.load_state_dict(ref_unshared.state_dict(), strict=True)
    with pytest.raises(AssertionError):
        ref_unshared(torch.randn(1, 4, 48))

    ref, _ours_shared = make_pair()
    sd = ref.state_dict()
    sd["expert_heads.lora_layers.shared_weight"] = sd["expert_heads.lora_layers.shared_weight"].expand(5, -1, -1, -1)
    sd["expert_heads.lora_layers.shared_bias"] = sd["expert_heads.lora_layers.shared_bias"].expand(5, -1, -1)
    ours.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True)
    x = torch.randn(2, 11, 48)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
