"""medmoe.nn.Mamba against mambapy's MambaBlock (pscan) with copied weights: outputs and gradients, fp32."""

import pytest
import torch

from medmoe.nn import Mamba
from medmoe.nn.mamba import mamba_state_dict_from_reference

mambapy_mamba = pytest.importorskip(
    "mambapy.mamba", reason="install the parity extra: pip install -e '.[parity]'"
)
pytestmark = pytest.mark.parity

TOL = {"atol": 1e-4, "rtol": 1e-4}


def make_pair(d_model, backend, chunk_size, **cfg):
    ref = mambapy_mamba.MambaBlock(mambapy_mamba.MambaConfig(d_model=d_model, n_layers=1, **cfg))
    with torch.no_grad():  # move A_log, D and the biases away from their structured init
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    c = ref.config
    ours = Mamba(
        d_model,
        d_state=c.d_state,
        d_conv=c.d_conv,
        expand=c.expand_factor,
        dt_rank=c.dt_rank,
        bias=c.bias,
        conv_bias=c.conv_bias,
        backend=backend,
        chunk_size=chunk_size,
    )
    ours.load_state_dict(ref.state_dict(), strict=True)  # identical parameter names
    return ref, ours


@pytest.mark.parametrize("backend", ["torch", "sequential"])
@pytest.mark.parametrize(
    "b, L, d_model, chunk, cfg",
    [
        (2, 37, 16, 8, {}),
        (1, 64, 24, 16, {"d_state": 8, "d_conv": 3}),
        (3, 5, 8, 64, {"bias": True, "expand_factor": 3}),
        (1, 130, 32, 32, {"dt_rank": 5}),
    ],
)
def test_outputs_and_gradients_match_mambapy(backend, b, L, d_model, chunk, cfg):
    torch.manual_seed(0)
    ref, ours = make_pair(d_model, backend, chunk, **cfg)
    x_ref = torch.randn(b, L, d_model, requires_grad=True)
    x_ours = x_ref.detach().clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, **TOL)
    grad = torch.randn_like(y_ref)
    (y_ref * grad).sum().backward()
    (y_ours * grad).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **TOL)
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, **TOL, msg=name)


def test_from_reference_and_residual_block_prefix():
    torch.manual_seed(0)
    model = mambapy_mamba.Mamba(mambapy_mamba.MambaConfig(d_model=16, n_layers=2))
    block = model.layers[1].mixer
    ours = Mamba.from_reference(block, chunk_size=4)
    assert ours.d_model == 16 and ours.d_inner == 32 and ours.dt_rank == 1
    x = torch.randn(2, 13, 16)
    torch.testing.assert_close(ours(x), block(x), **TOL)
    other = Mamba(16)
    other.load_state_dict(mamba_state_dict_from_reference(model.state_dict(), "layers.1.mixer."), strict=True)
    torch.testing.assert_close(other(x), block(x), **TOL)
