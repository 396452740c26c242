"""medmoe.nn.SoftMoE against soft_moe_pytorch 0.1.9 with copied weights (outputs and gradients, fp32)."""

import pytest
import torch

from medmoe.nn.experts import BatchedFeedForward
from medmoe.nn.soft_moe import SoftMoE

soft_moe_pytorch = pytest.importorskip(
    "soft_moe_pytorch", reason="install the parity extra: pip install -e '.[parity]'"
)
pytestmark = pytest.mark.parity

TOL = {"atol": 1e-5, "rtol": 1e-4}


def make_pair(dim=32, backend="auto", **kw):
    cfg = {"num_experts": 3, "num_slots": 4, "expert_mult": 2}
    cfg.update(kw)
    ref = soft_moe_pytorch.SoftMoE(dim, **cfg)
    with torch.no_grad():  # move every parameter away from its init so the norms' gains matter too
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = SoftMoE(dim, backend=backend, **cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)  # reference keys are stacked by a load hook
    return ref, ours


def assert_same_grads(ref, ours, x_ref, x_ours):
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **TOL)
    ref_grads = {name: p.grad for name, p in ref.named_parameters()}
    BatchedFeedForward.stack_reference_state_dict(ref_grads, prefix="experts.")  # per-expert -> stacked
    ours_grads = {name: p.grad for name, p in ours.named_parameters()}
    assert ours_grads.keys() == ref_grads.keys()
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], **TOL, msg=name)


@pytest.mark.parametrize("backend", ["sdpa", "dense"])
@pytest.mark.parametrize("geglu", [False, True], ids=["gelu", "geglu"])
@pytest.mark.parametrize("use_layernorm", [False, True], ids=["rmsnorm", "layernorm"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_tokens_outputs_and_gradients_match(geglu, use_layernorm, masked, backend):
    ref, ours = make_pair(geglu=geglu, use_layernorm=use_layernorm, backend=backend)
    x_ref = torch.randn(2, 37, 32, requires_grad=True)
    x_ours = x_ref.detach().clone().requires_grad_()
    mask = None
    if masked:
        mask = torch.ones(2, 37, dtype=torch.bool)
        mask[0, 25:] = False
        mask[1, :3] = False
    out_ref, out_ours = ref(x_ref, mask=mask), ours(x_ours, mask=mask)
    keep = torch.ones(2, 37, 1) if mask is None else mask[..., None].float()
    # the reference gives padded tokens a uniform mix of slots; medmoe gives them zeros
    torch.testing.assert_close(out_ours, out_ref * keep, **TOL)
    grad = torch.randn_like(out_ref) * keep
    (out_ref * grad).sum().backward()
    (out_ours * grad).sum().backward()
    assert_same_grads(ref, ours, x_ref, x_ours)


@pytest.mark.parametrize("backend", ["sdpa", "dense"])
@pytest.mark.parametrize("geglu", [False, True], ids=["gelu", "geglu"])
def test_image_input_matches(geglu, backend):
    ref, ours = make_pair(geglu=geglu, backend=backend)
    x_ref = torch.randn(2, 32, 6, 5, requires_grad=True)
    x_ours = x_ref.detach().clone().requires_grad_()
    out_ref, out_ours = ref(x_ref), ours(x_ours)
    assert out_ours.shape == out_ref.shape == (2, 32, 6, 5)
    torch.testing.assert_close(out_ours, out_ref, **TOL)
    grad = torch.randn_like(out_ref)
    (out_ref * grad).sum().backward()
    (out_ours * grad).sum().backward()
    assert_same_grads(ref, ours, x_ref, x_ours)


def test_seq_len_config_and_from_reference():
    ref = soft_moe_pytorch.SoftMoE(48, seq_len=64, num_experts=4, geglu=True, use_layernorm=True)
    ours = SoftMoE.from_reference(ref)
    # 64 slots > dim 48 but small (b, n, e * s) logits: "auto" takes the dense GEMMs (SDPA: test_larger_sequence_matches)
    assert ours.num_slots == 16 and ours._dense(torch.empty(3, 64, 48))
    assert ours.use_layernorm and ours.experts.geglu
    x = torch.randn(3, 64, 48)
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    # a medmoe state dict holds the same tensors, stacked
    sd = ours.state_dict()
    assert sd["experts.w1"].shape == (4, 48, 2 * ref.experts.experts[0][3].in_features)
    torch.testing.assert_close(sd["experts.w1"][2], ref.experts.experts[2][0].weight.t())
    assert sd["slot_embeds"].shape == ref.slot_embeds.shape


@pytest.mark.parametrize("backend", ["sdpa", "dense"])
def test_larger_sequence_matches(backend):
    ref, ours = make_pair(dim=64, num_experts=4, num_slots=32, backend=backend)  # 128 slots > dim
    x = torch.randn(1, 1500, 64)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.parametrize("geglu", [False, True], ids=["gelu", "geglu"])
@pytest.mark.parametrize("use_layernorm", [False, True], ids=["rmsnorm", "layernorm"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_one_slot_per_token_outputs_and_gradients_match(geglu, use_layernorm, masked):
    """soft-moe-pytorch's default (seq_len = n: one slot per token, more slots than features): the fused route."""
    n = 70
    ref, ours = make_pair(
        geglu=geglu, use_layernorm=use_layernorm, num_experts=5, num_slots=n // 5, backend="auto"
    )
    assert ours._dense(torch.empty(2, n, 32)) and ours._many_slots()
    x_ref = torch.randn(2, n, 32, requires_grad=True)
    x_ours = x_ref.detach().clone().requires_grad_()
    mask = None
    if masked:
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[0, 50:] = False
        mask[1, :7] = False
    out_ref, out_ours = ref(x_ref, mask=mask), ours(x_ours, mask=mask)
    keep = torch.ones(2, n, 1) if mask is None else mask[..., None].float()
    torch.testing.assert_close(out_ours, out_ref * keep, **TOL)
    grad = torch.randn_like(out_ref) * keep
    (out_ref * grad).sum().backward()
    (out_ours * grad).sum().backward()
    assert_same_grads(ref, ours, x_ref, x_ours)
