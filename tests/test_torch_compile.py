"""``torch.compile`` on zoo models: the native kernels and oneDNN calls step aside while it traces."""

from __future__ import annotations

import pytest
import torch

from medmoe import create_model
from medmoe.nn.native_kernels import native_kernels_enabled

# torch's own modules, imported by the compiler, warn that torch.jit.script_method is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def test_compiled_mammoth_model_matches_eager_forward_and_backward(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # a cold compile, as on a user's machine
    torch.manual_seed(0)
    model = create_model("abmil.base_mammoth.uni", in_dim=24, num_classes=3).eval()  # eval: no dropout draws
    x, mask = torch.randn(2, 9, 24), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for run in (torch.compile(model), model):
        logits = run(x, mask).logits
        grads = torch.autograd.grad(
            logits.square().sum(), params
        )  # inductor used to fail lowering oneDNN here
        results.append((logits.detach(), grads))
    torch._dynamo.reset()
    (logits, grads), (ref_logits, ref_grads) = results
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)


def test_native_kernels_are_off_while_tracing(monkeypatch) -> None:
    monkeypatch.setenv("MEDMOE_NATIVE_KERNELS", "1")
    seen = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(native_kernels_enabled())
        return x + 1

    torch.compile(probe, backend="eager")(torch.zeros(2))
    torch._dynamo.reset()
    assert seen == [False]
    assert native_kernels_enabled()  # eager callers are unaffected


@pytest.mark.parametrize("name", ["abmil.base_mammoth", "transformer.base", "dsmil.base"])
def test_masked_batch_compiles_to_one_graph(name: str) -> None:
    """The input checks branch on mask values only in eager mode; compiled, they are asserted in the graph."""
    torch.manual_seed(0)
    model = create_model(name, in_dim=16, num_classes=2).eval()
    x, mask = torch.randn(2, 7, 16), torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x, mask)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, mask).logits, model(x, mask).logits)
    full = torch.ones(2, 7, dtype=torch.bool)  # kept as a mask when compiled, dropped in eager: same result
    torch.testing.assert_close(compiled(x, full).logits, model(x, full).logits, rtol=1e-5, atol=1e-6)
    mask[0] = False
    with pytest.raises(RuntimeError, match="at least one real instance"):
        compiled(x, mask)
    with pytest.raises(ValueError, match="at least one real instance"):
        model(x, mask)
    torch._dynamo.reset()


def test_mamba_home_traces_to_one_graph() -> None:
    """The selective scan is a custom op under compile, so nothing in Mamba-HoME splits the graph."""
    from medmoe.models.seg.mamba_home import MambaHoME, MambaHoMEConfig

    torch.manual_seed(0)
    model = MambaHoME(MambaHoMEConfig.tiny(in_channels=1, num_classes=2)).train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 1, 32, 32, 32))
    torch._dynamo.reset()
    assert explanation.graph_count == 1, [str(b.reason)[:200] for b in explanation.break_reasons]


def test_home_with_a_padding_mask_traces_to_one_graph() -> None:
    from medmoe.nn.home import HoME

    torch.manual_seed(0)
    layer = HoME(16, num_experts=4, num_experts_second=2, group_size=8, slots_per_expert=2).eval()
    x = torch.randn(2, 20, 16)
    for mask in (
        torch.ones(2, 20, dtype=torch.bool),
        torch.arange(20).expand(2, 20) < torch.tensor([[20], [9]]),
    ):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(layer)(x, mask)
        assert explanation.graph_count == 1, [str(b.reason)[:200] for b in explanation.break_reasons]
        compiled = torch.compile(layer, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, mask), layer(x, mask), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
