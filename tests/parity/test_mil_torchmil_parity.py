"""Parity with ``torchmil`` (1.0.2) where a torchmil model computes the same function as ours.

Weights are copied from the torchmil module into ours and outputs (and input gradients) compared in fp32.

What coincides and what does not:

* **ABMIL** (gated and plain) — same maths: ``feat_ext`` = our ``patch_embed`` (Linear + ReLU), torchmil's
  ``AttentionPool`` = our gated/plain attention. torchmil's score layer has no bias (MIL-Lab's has one);
  a constant shift does not change the softmax, so logits and slide features match exactly and the raw
  attention matches up to that bias. torchmil is binary-only (one logit), so we compare ``num_classes=1``.
* **CLAM-SB instance loss** — torchmil's top/bottom-k selection (masked, ``k = min(k_sample, n)``) and
  its per-bag ``in + out`` sum equal our ``subtyping`` instance loss times 2 (we average over the 2
  classes, as MIL-Lab/CLAM; torchmil sums) times the batch size (we average bags). Compared with a
  cross-entropy instance loss plugged into torchmil's CLAM, because torchmil's own ``SmoothTop1SVM`` is
  not the paper's loss: it is called with ``(m, 1)`` targets, which broadcast its margin matrix to
  ``(m, m, C)`` (for one sample ``[0.3, 0.1]`` with label 0 it returns 0.8 instead of
  ``log(1 + e^0.8) = 1.171``). Our SVM is checked by hand in ``tests/models/test_clam.py``. torchmil's
  bag head is one logit (binary) where CLAM has ``C``, so bag logits are not compared.
* **DSMIL** — only the instance stream and the critical-instance attention coincide (``q`` linear,
  ``softmax(q_i . q_crit / sqrt(a))``). torchmil's bag stream uses identity values, no LayerNorm and a
  Linear head, while MIL-Lab (ours) uses ``v = Linear``, LayerNorm and ``Conv1d(C, C, d)`` and averages
  bag and max-instance logits inside ``forward``. torchmil also ignores the mask when choosing the
  critical instance, so the comparison uses unpadded bags.
* **MeanMIL / MaxMIL** — torchmil has no such models; its ``MeanPool`` / ``MaxPool`` coincide with our
  pooled slide features.
* TransMIL, DTFD and the other torchmil models differ in architecture from MIL-Lab's and are not compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import medmoe

tm_models = pytest.importorskip("torchmil.models")
tm_nn = pytest.importorskip("torchmil.nn")

pytestmark = pytest.mark.parity

IN_DIM, EMBED, ATT = 21, 16, 8
ATOL = 1e-5


def copy_linear(dst: torch.nn.Linear, src: torch.nn.Linear) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if dst.bias is not None:
            if src.bias is not None:
                dst.bias.copy_(src.bias)
            else:
                dst.bias.zero_()


class _CrossEntropyColumnTarget(torch.nn.Module):
    """Cross-entropy taking torchmil's ``(m, 1)`` float targets."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target[:, 0].long())


def feat_ext() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(IN_DIM, EMBED), torch.nn.ReLU())


def padded(sizes: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(sizes), max(sizes), IN_DIM, generator=g)
    mask = torch.zeros(len(sizes), max(sizes), dtype=torch.bool)
    for j, n in enumerate(sizes):
        mask[j, :n] = True
    return x, mask


@pytest.mark.parametrize("gated", [True, False])
def test_abmil_matches_torchmil(gated: bool) -> None:
    torch.manual_seed(0)
    ref = tm_models.ABMIL(
        in_shape=(IN_DIM,), att_dim=ATT, att_act="tanh", gated=gated, feat_ext=feat_ext()
    ).eval()
    ours = medmoe.create_model(
        "abmil", num_classes=1, in_dim=IN_DIM, embed_dim=EMBED, attn_dim=ATT, gate=gated, dropout=0.0
    ).eval()
    copy_linear(ours.patch_embed[0], ref.feat_ext[0])
    copy_linear(ours.global_attn.attention_a[0], ref.pool.fc1.module)
    if gated:
        copy_linear(ours.global_attn.attention_b[0], ref.pool.fc_gated.module)
    copy_linear(ours.global_attn.attention_c, ref.pool.fc2)
    copy_linear(ours.classifier, ref.classifier.module)
    with torch.no_grad():
        ours.global_attn.attention_c.bias.fill_(0.37)  # softmax-invariant shift (torchmil has no bias)

    x, mask = padded([9, 4, 6])
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, att_ref = ref(x_ref, mask, return_att=True)
    out = ours(x_ours, mask, return_attention=True)
    torch.testing.assert_close(out.logits[:, 0], y_ref, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(
        (out.attention[:, 0] - 0.37)[mask], att_ref[mask], atol=ATOL, rtol=ATOL
    )
    y_ref.sum().backward()
    out.logits.sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(
        ours.global_attn.attention_a[0].weight.grad, ref.pool.fc1.module.weight.grad, atol=ATOL, rtol=ATOL
    )


def test_clam_instance_loss_matches_torchmil() -> None:
    torch.manual_seed(0)
    ref = tm_models.CLAM_SB(
        in_shape=(IN_DIM,), att_dim=ATT, gated=True, k_sample=3, feat_ext=feat_ext()
    ).eval()
    # torchmil calls inst_loss_fn(logits (m, 2), targets (m, 1) float); plug in a correct cross-entropy.
    ref.inst_loss_fn = _CrossEntropyColumnTarget()
    ours = medmoe.create_model(
        "clam.base_ce_subtyping", num_classes=2, in_dim=IN_DIM, embed_dim=EMBED, attention_dim=ATT, k_sample=3,
        dropout=0.0,
    ).eval()
    copy_linear(ours.patch_embed[0], ref.feat_ext[0])
    copy_linear(ours.global_attn.attention_a[0], ref.pool.fc1.module)
    copy_linear(ours.global_attn.attention_b[0], ref.pool.fc_gated.module)
    copy_linear(ours.global_attn.attention_c, ref.pool.fc2)
    for c in range(2):
        copy_linear(ours.instance_classifiers[c], ref.inst_classifiers[c].module)

    x, mask = padded([9, 2, 6], seed=3)  # the 2-patch bag exercises k = min(k_sample, n)
    labels = torch.tensor([1, 0, 1])
    emb = ref.feat_ext(x)
    z_ref, att_ref = ref.pool(emb, mask, return_att=True)
    loss_ref = ref.compute_inst_loss(att_ref, emb, labels, mask)
    out = ours(x, mask, label=labels)
    torch.testing.assert_close(out.slide_features, z_ref, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(out.extras["instance_loss"] * 2 * 3, loss_ref.detach(), atol=ATOL, rtol=ATOL)


def test_dsmil_attention_stream_matches_torchmil() -> None:
    torch.manual_seed(0)
    ref = tm_models.DSMIL(in_shape=(IN_DIM,), att_dim=ATT, feat_ext=feat_ext()).eval()
    ours = medmoe.create_model("dsmil", num_classes=1, in_dim=IN_DIM, embed_dim=EMBED, attn_dim=ATT).eval()
    copy_linear(ours.patch_embed[0], ref.feat_ext[0])
    copy_linear(ours.i_classifier.inst_classifier, ref.inst_classifier)
    copy_linear(ours.b_classifier.q, ref.q_nn)
    x = torch.randn(2, 11, IN_DIM)
    with torch.no_grad():
        _, att_ref, inst_ref = ref(x, return_att=True, return_inst_pred=True)
        out = ours(x, return_attention=True)
    torch.testing.assert_close(out.instance_logits[..., 0], inst_ref, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(out.attention[:, 0], att_ref[..., 0], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name,pool", [("meanmil", "MeanPool"), ("maxmil", "MaxPool")])
def test_pooling_matches_torchmil(name: str, pool: str) -> None:
    torch.manual_seed(0)
    ours = medmoe.create_model(name, num_classes=2, in_dim=IN_DIM, embed_dim=EMBED).eval()
    x, mask = padded([7, 3, 5], seed=1)
    with torch.no_grad():
        out = ours(x, mask)
        ref = getattr(tm_nn, pool)()(ours.patch_embed(x), mask)
    torch.testing.assert_close(out.slide_features, ref, atol=ATOL, rtol=ATOL)
