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


def test_make_optimizer_adam_is_coupled_l2_weight_decay():
    """``optimizer='adam'``: torch.optim.Adam, the weight decay added to the gradient (not decoupled)."""
    from medmoe.engine.optim import make_optimizer

    torch.manual_seed(0)
    a = torch.nn.Linear(7, 3)
    b = torch.nn.Linear(7, 3)
    b.load_state_dict(a.state_dict())
    fast = make_optimizer("adam", a.parameters(), lr=1e-2, weight_decay=5e-3)
    plain = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=5e-3)
    assert isinstance(fast, torch.optim.Adam) and not isinstance(fast, torch.optim.AdamW)
    assert fast.param_groups[0]["betas"] == (0.9, 0.999)
    x = torch.randn(16, 7)
    for _ in range(5):
        for model, opt in ((a, fast), (b, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert isinstance(make_optimizer("adamw", a.parameters(), lr=1e-3, weight_decay=0.0), torch.optim.AdamW)


def test_make_optimizer_sgd_is_momentum_with_coupled_l2_weight_decay():
    """``optimizer='sgd'``: the hand-written update v = 0.9 v + (g + wd p); p -= lr v, step for step."""
    from medmoe.engine.optim import make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(7, 3)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    velocity = {n: torch.zeros_like(p) for n, p in reference.items()}
    opt = make_optimizer("sgd", model.parameters(), lr=1e-2, weight_decay=5e-3)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    x = torch.randn(16, 7)
    for _ in range(4):
        opt.zero_grad()
        model(x).square().mean().backward()
        for n, p in model.named_parameters():
            velocity[n] = 0.9 * velocity[n] + p.grad + 5e-3 * reference[n]
            reference[n] = reference[n] - 1e-2 * velocity[n]
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), reference[n], rtol=1e-6, atol=1e-7)


def test_optimizer_names_are_validated():
    import pytest

    from medmoe.engine import TrainConfig
    from medmoe.engine.optim import make_optimizer

    with pytest.raises(ValueError, match="lion.*sgd"):
        make_optimizer("lion", torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="optimizer.*sgd"):
        TrainConfig(optimizer="lion")
