"""medmoe.nn.HoME / DynamicSlotsSoftMoE against a deliberately naive loop implementation (per group, per
expert, per slot) written here from the Mamba-HoME description, with the release's parameter layout."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmoe.nn import DynamicSlotsSoftMoE, HoME

TOL = {"atol": 1e-5, "rtol": 1e-5}
# float64 shows the implementations agree to round-off; float32 gradients (magnitudes ~10) get a relative bound
TOLS = {
    torch.float64: ({"atol": 1e-10, "rtol": 1e-10}, {"atol": 1e-10, "rtol": 1e-9}),
    torch.float32: ({"atol": 1e-5, "rtol": 1e-5}, {"atol": 1e-4, "rtol": 1e-4}),
}


def neg(t):
    return -torch.finfo(t.dtype).max


def rms(x, gamma):
    return F.normalize(x, dim=-1, eps=1e-8) * math.sqrt(x.shape[-1]) * gamma


class NaiveExpert(nn.Sequential):
    """Linear(d, 2h) -> GEGLU -> Dropout -> Linear(h, d), or Linear(d, h) -> GELU -> Dropout -> Linear(h, d)."""

    def __init__(self, d, mult, geglu):
        h = int(d * mult * 2 / 3) if geglu else int(d * mult)
        super().__init__(nn.Linear(d, 2 * h if geglu else h), nn.Identity(), nn.Dropout(0.0), nn.Linear(h, d))
        self.geglu = geglu

    def forward(self, x):
        h = self[0](x)
        if self.geglu:
            value, gate = h.chunk(2, dim=-1)
            h = value * F.gelu(gate)
        else:
            h = F.gelu(h)
        return self[3](h)


class NaiveNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))


class NaiveSlotGen(nn.Module):
    """Keys ``0.weight`` and ``2.gamma`` like the release's ``to_slot_embeds`` Sequential."""

    def __init__(self, d, count):
        super().__init__()
        self.add_module("0", nn.Linear(d, d * count, bias=False))
        self.add_module("1", nn.Identity())
        self.add_module("2", NaiveNorm(d))


class NaiveDynamicSlots(nn.Module):
    def __init__(self, d, e, mult, geglu):
        super().__init__()
        self.e = e
        self.norm = NaiveNorm(d)
        self.to_slot_embeds = NaiveSlotGen(d, e)
        self.experts = nn.ModuleList(NaiveExpert(d, mult, geglu) for _ in range(e))

    def forward(self, x, mask=None):
        """One sample ``x: (L, d)``, ``mask: (L,)`` or None; returns ``(L, d)`` (masked rows: zeros)."""
        L, d = x.shape
        e = self.e
        xn = rms(x, self.norm.gamma)
        mask = torch.ones(L, dtype=torch.bool) if mask is None else mask
        n = math.ceil(L / e)
        real = torch.cat([mask, torch.zeros(n * e - L, dtype=torch.bool)])
        xn = torch.cat([xn, xn.new_zeros(n * e - L, d)])
        W = self.to_slot_embeds._modules["0"].weight
        slot_gamma = self.to_slot_embeds._modules["2"].gamma
        phi = x.new_zeros(e, n, d)
        for j in range(n):  # chunk means over real tokens
            rows = [i for i in range(j * e, (j + 1) * e) if real[i]]
            mean = sum(xn[i] for i in rows) / max(len(rows), 1e-5) if rows else x.new_zeros(d)
            proj = W @ mean
            for ex in range(e):
                phi[ex, j] = rms(proj[ex * d : (ex + 1) * d], slot_gamma)
        chunk_real = torch.tensor([bool(real[j * e : (j + 1) * e].any()) for j in range(n)])
        logits = torch.einsum("ld,esd->les", xn, phi)
        logits = logits.masked_fill(~real[:, None, None], neg(x)).masked_fill(
            ~chunk_real[None, None, :], neg(x)
        )
        dispatch = logits.softmax(dim=0)
        combine = logits.reshape(n * e, e * n).softmax(dim=-1)
        outs = []
        for ex in range(e):
            for s in range(n):
                slot = sum(dispatch[i, ex, s] * xn[i] for i in range(n * e))
                outs.append(self.experts[ex](slot))
        y = combine @ torch.stack(outs)
        return y[:L] * mask[:, None]


class NaiveHoME(nn.Module):
    def __init__(self, d, E1, E2, K, S, mult, geglu):
        super().__init__()
        self.d, self.E1, self.K, self.S = d, E1, K, S
        self.norm = NaiveNorm(d)
        self.to_slot_embeds = NaiveSlotGen(d, E1 * S)
        self.experts_first = nn.ModuleList(NaiveExpert(d, mult, geglu) for _ in range(E1))
        self.expert_gates = nn.Parameter(torch.ones(E1))
        self.group_gate_mlp = nn.Linear(d, 1)
        self.dynamic_slots_soft_moe = NaiveDynamicSlots(d, E2, mult, geglu)

    def forward(self, x):
        """``x: (b, N, d)``, reference semantics (no user mask)."""
        return torch.stack([self.one(sample) for sample in x])

    def one(self, x):
        N, d = x.shape
        K, E1, S = self.K, self.E1, self.S
        M = E1 * S
        G = math.ceil(N / K)
        xp = torch.cat([x, x.new_zeros(G * K - N, d)])
        real = torch.arange(G * K) < N
        W = self.to_slot_embeds._modules["0"].weight
        slot_gamma = self.to_slot_embeds._modules["2"].gamma
        combines, level1 = [], []
        for g in range(G):
            xs = xp[g * K : (g + 1) * K]
            mu = xs.sum(0) / K  # padding zeros included
            proj = W @ mu
            phi = torch.stack([rms(proj[m * d : (m + 1) * d], slot_gamma) for m in range(M)])
            logits = rms(xs, self.norm.gamma) @ phi.T  # (K, M)
            logits = logits.masked_fill(~real[g * K : (g + 1) * K, None], neg(x))
            C = logits.softmax(dim=-1)
            combines.append(C)
            gate = torch.sigmoid(self.group_gate_mlp(mu)).clamp(0.01, 1.0)
            for e in range(E1):
                for s in range(S):
                    m = e * S + s
                    z = sum(C[k, m] * xs[k] for k in range(K))
                    level1.append(self.experts_first[e](z) * self.expert_gates[e] * gate)
        y2 = self.dynamic_slots_soft_moe(torch.stack(level1))  # (G*M, d)
        out = torch.cat([combines[g] @ y2[g * M : (g + 1) * M] for g in range(G)])
        return out[:N]


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))


def compare(ref, ours, x, mask=None, ref_forward=None):
    out_tol, grad_tol = TOLS[x.dtype]
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    y_ref = (ref_forward or ref)(x_ref)
    y_ours = ours(x_ours, mask=mask) if mask is not None else ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, **out_tol)
    grad = torch.randn_like(y_ref)
    (y_ref * grad).sum().backward()
    (y_ours * grad).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **grad_tol)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    for head in ("experts_first.", "experts.", "dynamic_slots_soft_moe.experts."):
        _stack(ref_grads, head)
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    assert ours_grads.keys() == ref_grads.keys()
    for name, g in ours_grads.items():
        assert g is not None, name
        torch.testing.assert_close(g, ref_grads[name], **grad_tol, msg=name)


def _stack(grads, head):
    """Per-expert reference gradients -> the stacked (w1, b1, w2, b2) layout of BatchedFeedForward."""
    idx = sorted(
        {int(k[len(head) :].split(".")[0]) for k in grads if k.startswith(head) and k[len(head)].isdigit()}
    )
    if not idx:
        return
    for ours, key, transpose in (
        ("w1", "0.weight", True),
        ("b1", "0.bias", False),
        ("w2", "3.weight", True),
        ("b2", "3.bias", False),
    ):
        parts = [grads.pop(f"{head}{i}.{key}") for i in idx]
        grads[head + ours] = torch.stack([p.T if transpose else p for p in parts])


@pytest.mark.parametrize(
    "b, N, d, E1, E2, K, S, geglu",
    [
        (2, 23, 16, 2, 3, 5, 2, True),  # N % K != 0, G*M % E2 != 0
        (1, 24, 12, 3, 4, 8, 2, False),  # no level-1 padding, GELU experts
        (2, 7, 8, 2, 8, 16, 4, True),  # one (padded) group
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_home_matches_naive_loops(b, N, d, E1, E2, K, S, geglu, dtype):
    torch.manual_seed(0)
    ref = NaiveHoME(d, E1, E2, K, S, mult=2, geglu=geglu)
    randomise(ref)
    ours = HoME(d, E1, E2, K, slots_per_expert=S, mult=2, geglu=geglu)
    ours.load_state_dict(ref.state_dict(), strict=True)  # release layout -> stacked experts on load
    ref, ours = ref.to(dtype), ours.to(dtype)
    compare(ref, ours, torch.randn(b, N, d, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("L, masked", [(13, False), (16, False), (13, True)])
def test_dynamic_slots_matches_naive_loops(L, masked, dtype):
    torch.manual_seed(0)
    d, e = 8, 4
    ref = NaiveDynamicSlots(d, e, mult=2, geglu=True)
    randomise(ref)
    ours = DynamicSlotsSoftMoE(d, e, mult=2, geglu=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref, ours = ref.to(dtype), ours.to(dtype)
    x = torch.randn(2, L, d, dtype=dtype)
    mask = None
    if masked:
        mask = torch.ones(2, L, dtype=torch.bool)
        mask[0, 5:] = False  # includes whole masked chunks
        mask[1, 2] = False
    compare(
        ref,
        ours,
        x,
        mask=mask,
        ref_forward=lambda t: torch.stack([ref(t[i], None if mask is None else mask[i]) for i in range(2)]),
    )


def test_parameter_counts_of_the_paper_stages():
    """§3.1: HoME per layer 0.17M, 1.34M, 7.99M, 42.5M (stage 3: slots 9.44M, experts 9.46M, level 2 23.6M)."""
    expected = [0.17, 1.34, 7.99, 42.5]
    for (C, K, E1, E2), millions in zip(
        [(48, 2048, 4, 8), (96, 1024, 8, 16), (192, 512, 12, 24), (384, 256, 16, 32)], expected
    ):
        with torch.device("meta"):
            layer = HoME(C, E1, E2, K, slots_per_expert=4, mult=2, geglu=True)
        total = sum(p.numel() for p in layer.parameters())
        assert round(total / 1e6, 2 if millions < 10 else 1) == millions, (C, total)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert round(count(layer.to_slot_embeds) / 1e6, 2) == 9.44
    assert round(count(layer.experts_first) / 1e6, 2) == 9.46
    assert round(count(layer.dynamic_slots_soft_moe) / 1e6, 1) == 23.6
    assert layer.experts_first.hidden == int(384 * 2 * 2 / 3)


def test_mask_right_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    layer = HoME(16, 2, 3, 5, slots_per_expert=2)
    randomise(layer)
    lengths = [23, 9]
    x = torch.randn(2, 30, 16)
    mask = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    out = layer(x, mask=mask)
    assert out[~mask].abs().max() == 0
    for i, n in enumerate(lengths):
        alone = layer(x[i : i + 1, :n], mask=torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out[i : i + 1, :n], alone, **TOL)


def test_mask_none_is_the_reference_and_all_true_mask_on_full_groups_equal():
    torch.manual_seed(0)
    layer = HoME(8, 2, 4, 4, slots_per_expert=2)
    x = torch.randn(2, 12, 8)  # N % K == 0: no padded group, so mask=None and all-True masks agree
    torch.testing.assert_close(layer(x, mask=torch.ones(2, 12, dtype=torch.bool)), layer(x), **TOL)


def test_batch_independence():
    torch.manual_seed(0)
    layer = HoME(8, 2, 3, 4, slots_per_expert=2)
    x = torch.randn(3, 10, 8)
    torch.testing.assert_close(layer(x)[1:2], layer(x[1:2]), **TOL)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"group_size": 0}, "group_size"),
        ({"num_experts": 0}, "num_experts"),
        ({"num_experts_second": -1}, "num_experts_second"),
        ({"slots_per_expert": 0}, "slots_per_expert"),
        ({"dim": 0}, "dim"),
    ],
)
def test_bad_config(kwargs, match):
    cfg = {"dim": 8, "num_experts": 2, "num_experts_second": 3, "group_size": 4}
    with pytest.raises(ValueError, match=match):
        HoME(**{**cfg, **kwargs})


def test_bad_input():
    layer = HoME(8, 2, 3, 4)
    with pytest.raises(ValueError, match=r"\(b, N, 8\)"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"\(b, N, 8\)"):
        layer(torch.randn(5, 8))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(torch.randn(2, 5, 8), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        layer(torch.randn(2, 5, 8), mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="empty"):
        layer(torch.randn(2, 0, 8))
    with pytest.raises(ValueError, match=r"\(b, N, 8\)"):
        DynamicSlotsSoftMoE(8, 2)(torch.randn(2, 3, 4))
