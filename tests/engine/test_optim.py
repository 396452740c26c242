"""medmoe.engine.optim.make_adamw: fused where possible, the same updates as the default AdamW."""

import torch

from medmoe.engine.optim import make_adamw


def test_fused_on_cpu_and_same_updates_as_default():
    torch.manual_seed(0)
    a = torch.nn.Linear(7, 3)
    b = torch.nn.Linear(7, 3)
    b.load_state_dict(a.state_dict())
    fast = make_adamw(a.parameters(), lr=1e-2, weight_decay=1e-2)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=1e-2)
    assert fast.param_groups[0]["fused"] is True
    x = torch.randn(16, 7)
    for _ in range(5):
        for model, opt in ((a, fast), (b, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_falls_back_for_parameters_fused_cannot_take():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64, device="meta"))
    opt = make_adamw([p], lr=1e-3, weight_decay=0.0)
    assert not opt.param_groups[0].get("fused")
