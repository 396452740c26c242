"""Parity with the reference code itself: MIL-Lab (``base``), the MAMMOTH fork (``base_mammoth``) and the
original CLAM repository (CLAM-SB / CLAM-MB).

Each fixture in ``golden/millab/`` was written by ``golden/make_millab_fixtures.py`` from the reference's
own code (see its docstring for how to regenerate): the reference's state dict in its own key format, a
fixed bag, and the reference's logits, attention and instance loss. Here the state dict goes through
``medmoe.create_model(..., checkpoint_path=...)`` (i.e. :mod:`medmoe.interop`) and medmoe's outputs are
compared with the reference's (rtol 1e-5). No network, no reference code.

Attention is compared in medmoe's ``(b, k, n)`` convention: the reference's tensor is reshaped
(ABMIL, CLAM, ILRA, RRT), transposed (DSMIL ``[B, M, C]``), cropped to the real patches (TransMIL pads to a
square with repeated tokens) or reduced to the class token's row (Transformer). WiKG is compared on its
top-k neighbour weights, DTFD on its tier-2 attention. With Mammoth (slot tokens) the reference's slot
attention is carried to the patches with medmoe's routing (its own weights, loaded from the same file).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import medmoe

COMMITTED = Path(__file__).parent / "golden" / "millab"
#: another fixture folder (e.g. written with make_millab_fixtures.py --full-size) for a one-off check
GOLDEN = Path(os.environ.get("MEDMOE_GOLDEN_DIR") or COMMITTED)
FIXTURES = sorted(p.stem for p in GOLDEN.glob("*.json"))
RTOL, ATOL = 1e-5, 1e-6


def _load(fid: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    meta = json.loads((GOLDEN / f"{fid}.json").read_text())
    io = load_file(str(GOLDEN / f"{fid}.io.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor must load: no fresh-head warning here
        model = medmoe.create_model(meta["medmoe_name"], num_classes=meta["num_classes"],
                                    checkpoint_path=str(GOLDEN / f"{fid}.safetensors"), **meta["medmoe_overrides"])
    return meta, io, model.eval()


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours.float(), ref.float(), rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.skipif(GOLDEN != COMMITTED, reason="MEDMOE_GOLDEN_DIR points at another fixture folder")
def test_fixtures_present() -> None:
    """The committed set: 9 MIL-Lab models x (base, base_mammoth) + CLAM-SB/MB of the CLAM repository."""
    assert len(FIXTURES) == 20, FIXTURES
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 6_000_000, f"fixtures grew to {total / 1e6:.1f} MB"


@pytest.mark.parametrize("fid", FIXTURES)
def test_logits_and_instance_loss(fid: str) -> None:
    meta, io, model = _load(fid)
    layout = model.load_report.key_format
    assert layout == ("clam-repository" if meta["reference"] == "CLAM" else "mil-lab")
    with torch.no_grad():
        out = model(io["x"], label=io["label"], return_attention=False)
    _close(out.logits, io["logits"], f"{fid} logits")
    if "instance_loss" in io:
        if meta["medmoe_name"].startswith("dtfd"):  # DTFD's tier-1 loss: aux_loss = (1 - bag_weight) * it
            weight = 1 - model.config.bag_weight
            _close(out.aux_loss / weight, io["instance_loss"], f"{fid} tier-1 loss")
        else:
            _close(out.extras["instance_loss"], io["instance_loss"], f"{fid} instance loss")


def _reference_token_attention(fid: str, ref: torch.Tensor, n_tokens: int, model: Any) -> torch.Tensor:
    """The reference's attention as ``(b, k, t)`` over the aggregator's tokens."""
    name = fid.split("_")[1] if fid.startswith("millab_") else "clam"
    if name == "dsmil":
        return ref.transpose(1, 2)
    if name == "transformer":
        return ref[:, :1, 1:]
    if name == "transmil":
        return ref[:, :n_tokens].reshape(1, 1, n_tokens)
    return ref.reshape(1, -1, n_tokens)


@pytest.mark.parametrize("fid", FIXTURES)
def test_attention(fid: str) -> None:
    meta, io, model = _load(fid)
    ref = io["attention"]
    with torch.no_grad():
        out = model(io["x"], label=io["label"], return_attention=True, return_routing=True)
    if fid.startswith("millab_dftd"):  # reference (pseudo-bags, 1) vs medmoe (b, pseudo-bags)
        _close(out.extras["tier2_attention"], ref.reshape(1, -1), f"{fid} tier-2 attention")
        return
    if fid.startswith("millab_wikg"):  # dense (b, t, t) top-k softmax vs medmoe's (b, t, k) neighbours
        picked = torch.gather(ref, 2, out.extras["neighbour_index"])
        _close(out.extras["neighbour_weights"], picked, f"{fid} neighbour weights")
        return
    mammoth = meta["medmoe_name"].endswith("mammoth")
    n_tokens = out.routing.slot_composition.shape[-1] if mammoth else io["x"].shape[1]
    tokens = _reference_token_attention(fid, ref, n_tokens, model)
    if not mammoth:
        _close(out.attention, tokens, f"{fid} attention")
        return
    if model.attention_kind == "pre-softmax":
        tokens = tokens.softmax(dim=-1)
    _close(out.attention, out.routing.patch_scores(tokens), f"{fid} attention (slots carried to patches)")
