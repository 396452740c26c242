"""Generic contract tests run on every registered MIL config (``medmoe.list_models()``).

Every ``<model>.<config>`` is built tiny (``in_dim=37``, ``num_classes=3``, ``embed_dim=32``, attention
widths 16, and for Mammoth 4 experts x 2 slots x 4 heads with ``slot_dim=16``) and checked for: output
shapes (batch 1, batch 3, unbatched), padding invariance (a padded batch equals each bag alone, eval
mode, atol 1e-5), gradients reaching every parameter (``logits.sum() + aux_loss`` with labels), finite
outputs for a one-patch bag, a state-dict round trip, attention ``(b, k, n)`` over input patches with
the linear embedding and Mammoth (slot tokens and per-patch tokens), routing on request, and
``ValueError`` on bad input.

A model that legitimately cannot meet a generic property declares it with a class attribute, and the
test checks the declared alternative instead (no silent skips):

* ``tiny_config: ClassVar[dict]`` — extra config overrides that make a tiny instance (applied after the
  generic shrinking below); use it when the generic sizes violate a model constraint.
* ``params_without_grad: ClassVar[tuple[str, ...]]`` — ``fnmatch`` patterns of parameters that get no
  gradient from ``logits.sum() + aux_loss`` by design. Each pattern must match at least one parameter,
  and every parameter it matches must indeed get no gradient (so declarations cannot go stale).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import pytest
import torch

import medmoe
from medmoe.registry import get_entry

IN_DIM = 37
NUM_CLASSES = 3
#: Generic shrinking, applied to the config fields a model has.
SMALL_FIELDS: dict[str, Any] = {"embed_dim": 32, "attn_dim": 16, "attention_dim": 16}
TINY_MAMMOTH: dict[str, Any] = {"num_experts": 4, "num_slots": 2, "num_heads": 4, "slot_dim": 16}
ATOL = 1e-5
ATTENTION_KINDS = {"pre-softmax", "post-softmax", "instance-logits", "none"}

ALL_CONFIGS = medmoe.list_models()
ALL_MODELS = sorted({name.split(".")[0] for name in ALL_CONFIGS})


def tiny_overrides(name: str, **extra: Any) -> dict[str, Any]:
    """Overrides that make ``name`` (``model.config``) tiny; ``extra`` may switch the patch embedding."""
    entry = get_entry(name.split(".")[0])
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    over: dict[str, Any] = {k: v for k, v in SMALL_FIELDS.items() if k in fields}
    over.update(getattr(entry.model_cls, "tiny_config", {}) or {})
    over.update(extra)
    config = entry.config_dict(name.split(".")[1]) if "." in name else entry.config_dict("base")
    kind = over.get("patch_embed", config.get("patch_embed", "linear"))
    if kind == "mammoth":
        args = dict(over.get("patch_embed_args", {}))
        over["patch_embed_args"] = {**TINY_MAMMOTH, **args}
    return over


def build(name: str, seed: int = 0, **extra: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return medmoe.create_model(name, num_classes=NUM_CLASSES, in_dim=IN_DIM, **tiny_overrides(name, **extra))


def padded_batch(sizes: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Bags of the given sizes, padded with random junk (not zeros), and their mask."""
    g = torch.Generator().manual_seed(seed)
    bags = [torch.randn(n, IN_DIM, generator=g) for n in sizes]
    n_max = max(sizes)
    x = 3.0 * torch.randn(len(sizes), n_max, IN_DIM, generator=g)
    mask = torch.zeros(len(sizes), n_max, dtype=torch.bool)
    for j, bag in enumerate(bags):
        x[j, : len(bag)] = bag
        mask[j, : len(bag)] = True
    return x, mask, bags


def check_attention(
    model: torch.nn.Module, out: Any, b: int, n: int, mask: torch.Tensor | None = None
) -> None:
    assert model.attention_kind in ATTENTION_KINDS, f"unknown attention_kind {model.attention_kind!r}"
    if model.attention_kind == "none":
        assert out.attention is None, "attention_kind is 'none' but attention was returned"
        return
    att = out.attention
    assert att is not None, "return_attention=True but no attention returned"
    assert att.ndim == 3 and att.shape[0] == b and att.shape[2] == n, (
        f"attention must be (b, k, n) = ({b}, k, {n}) over input patches, got {tuple(att.shape)}"
    )
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    assert torch.isfinite(att.permute(0, 2, 1)[real]).all(), "attention is not finite at real patches"


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_output_shapes(name: str) -> None:
    model = build(name).eval()
    with torch.no_grad():
        for b in (1, 3):
            x = torch.randn(b, 10, IN_DIM)
            out = model(x, return_attention=True)
            assert out.logits.shape == (b, NUM_CLASSES)
            assert torch.isfinite(out.logits).all()
            if out.slide_features is not None:
                assert out.slide_features.ndim == 2 and out.slide_features.shape[0] == b
            if out.instance_logits is not None:
                assert out.instance_logits.shape == (b, 10, NUM_CLASSES)
            assert out.routing is None, "routing must only be returned with return_routing=True"
            check_attention(model, out, b, 10)
            plain = model(x)
            assert plain.attention is None, "attention must only be returned with return_attention=True"
            torch.testing.assert_close(plain.logits, out.logits, atol=ATOL, rtol=ATOL)
        unbatched = model(torch.randn(10, IN_DIM))
        assert unbatched.logits.shape == (1, NUM_CLASSES)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 comparison with the tolerance scaled by the tensor's magnitude: DTFD's un-normalised
    attention and residual blocks give activations of ~40, where padded-batch and single-bag matmul
    shapes legitimately differ by a few ulps (relative ~1e-6)."""
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=ATOL * scale, rtol=ATOL)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_padding_invariance(name: str) -> None:
    model = build(name).eval()
    sizes = [7, 13, 2]
    x, mask, bags = padded_batch(sizes)
    with torch.no_grad():
        out = model(x, mask, return_attention=True)
        check_attention(model, out, len(sizes), max(sizes), mask)
        for j, bag in enumerate(bags):
            alone = model(bag.unsqueeze(0), return_attention=True)
            n = len(bag)
            assert_close_scaled(out.logits[j], alone.logits[0])
            if alone.slide_features is not None:
                assert_close_scaled(out.slide_features[j], alone.slide_features[0])
            if alone.instance_logits is not None:
                assert_close_scaled(out.instance_logits[j, :n], alone.instance_logits[0])
            if alone.attention is not None:
                assert_close_scaled(out.attention[j, :, :n], alone.attention[0])


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = build(name).train()
    x, mask, _ = padded_batch([9, 5, 12])
    labels = torch.arange(3) % NUM_CLASSES
    out = model(x, mask, label=labels)
    loss = out.logits.sum()
    if out.aux_loss is not None:
        assert out.aux_loss.ndim == 0 and torch.isfinite(out.aux_loss)
        loss = loss + out.aux_loss
    loss.backward()
    exempt = tuple(getattr(type(model), "params_without_grad", ()) or ())
    names = [n for n, _ in model.named_parameters()]
    for pattern in exempt:
        assert any(fnmatch.fnmatch(n, pattern) for n in names), (
            f"params_without_grad pattern {pattern!r} matches no parameter"
        )
    missing, unexpected = [], []
    for pname, p in model.named_parameters():
        declared = any(fnmatch.fnmatch(pname, pat) for pat in exempt)
        if declared:
            if p.grad is not None and p.grad.abs().sum() > 0:
                unexpected.append(pname)
        elif p.grad is None:
            missing.append(pname)
        else:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient for {pname}"
    assert not missing, f"parameters without gradient: {missing}"
    assert not unexpected, f"parameters declared in params_without_grad got a gradient: {unexpected}"


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_single_patch_bag(name: str) -> None:
    model = build(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, IN_DIM), label=torch.tensor([1]), return_attention=True)
    assert out.logits.shape == (1, NUM_CLASSES) and torch.isfinite(out.logits).all()
    if out.aux_loss is not None:
        assert torch.isfinite(out.aux_loss)
    check_attention(model, out, 1, 1)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_state_dict_round_trip(name: str) -> None:
    source = build(name, seed=0).eval()
    target = build(name, seed=1).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    x, mask, _ = padded_batch([6, 4])
    with torch.no_grad():
        a, b = source(x, mask), target(x, mask)
    torch.testing.assert_close(a.logits, b.logits, atol=0.0, rtol=0.0)
    assert type(target.config) is type(source.config) and target.config == source.config


@pytest.mark.parametrize("model_name", ALL_MODELS)
@pytest.mark.parametrize("kind", ["linear", "mammoth", "mammoth_per_patch"])
def test_attention_over_input_patches(model_name: str, kind: str) -> None:
    """Attention is over input patches for the linear embedding, Mammoth's slot tokens (``keep_slots``)
    and Mammoth combined back to one token per patch (``keep_slots=False``)."""
    name = f"{model_name}.base"
    if kind == "mammoth_per_patch":
        model = build(name, patch_embed="mammoth", patch_embed_args={"keep_slots": False}).eval()
    else:
        model = build(name, patch_embed=kind).eval()
    x, mask, bags = padded_batch([8, 3])
    with torch.no_grad():
        out = model(x, mask, return_attention=True, return_routing=True)
        alone = model(bags[1].unsqueeze(0))
    check_attention(model, out, 2, 8, mask)
    torch.testing.assert_close(out.logits[1], alone.logits[0], atol=ATOL, rtol=ATOL)
    if kind != "linear":
        assert out.routing is not None, "return_routing=True with Mammoth must return the routing"
        assert out.routing.expert_assignment.shape[:2] == (2, 8)
    else:
        assert out.routing is None


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_bad_input_raises_value_error(name: str) -> None:
    model = build(name).eval()
    with pytest.raises(ValueError):
        model(torch.randn(1, 5, IN_DIM - 1))
    with pytest.raises(ValueError):
        model(torch.randn(1, 0, IN_DIM))
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, IN_DIM), torch.ones(2, 4, dtype=torch.bool))
    empty_row = torch.ones(2, 5, dtype=torch.bool)
    empty_row[1] = False
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, IN_DIM), empty_row)
    with pytest.raises(ValueError):
        model(torch.randn(1, 2, 5, IN_DIM))


def test_registry_is_not_empty() -> None:
    assert {"abmil", "clam", "dsmil", "meanmil", "maxmil"} <= set(ALL_MODELS)
