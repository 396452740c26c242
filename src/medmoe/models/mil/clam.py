"""CLAM — clustering-constrained attention MIL (Lu et al., 2021), single- and multi-branch.

Registered once as ``clam``; the config field ``multi_branch`` picks the variant:

* ``multi_branch=False`` (CLAM-SB, MIL-Lab's ``clam``): one gated attention branch and
  ``Linear(embed_dim, C)``. The configs carry MIL-Lab's names and meanings: ``base`` and
  ``base_subtyping`` use the smooth top-1 SVM instance loss, ``base_ce`` and ``base_ce_subtyping``
  cross-entropy; ``base_mammoth`` is the MAMMOTH fork's (SVM loss, Mammoth patch embedding) and
  ``base_ce_mammoth`` medmoe's cross-entropy counterpart.
* ``multi_branch=True`` (CLAM-MB, original CLAM repository): one attention branch and one
  ``Linear(embed_dim, 1)`` bag classifier per class. Config ``base_mb`` (cross-entropy; medmoe's own name).

The smooth top-1 SVM is written in-house (:class:`medmoe.nn.losses.SmoothTop1SVM`), so both losses run on
CPU and GPU without MIL-Lab's CUDA-only ``smooth-topk`` dependency.

Unlike MIL-Lab's CLAM, the forward pass does not need ``return_attention=True`` when a label is given
(MIL-Lab raises ``KeyError: 'attention'`` then), and takes batches of bags through a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...nn.backend import make_linear
from ...nn.checks import check_positive_fields
from ...nn.losses import SmoothTop1SVM
from ...nn.pooling import AttentionPool
from ...registry import register_model
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["CLAM", "CLAMConfig"]

_INSTANCE_LOSSES = ("ce", "svm")


@dataclass
class CLAMConfig(MILConfig):
    """CLAM hyper-parameters (MIL-Lab ``clam/base`` defaults: smooth top-1 SVM instance loss).

    Attributes:
        multi_branch: CLAM-MB (one attention branch + bag classifier per class) instead of CLAM-SB.
        gate: gated attention (tanh * sigmoid) or plain tanh attention.
        attention_dim: hidden width of the attention network (384).
        k_sample: patches pseudo-labelled per side for the instance loss (8). Bags (or slot sets) with
            fewer real tokens use ``k = min(k_sample, n)``; with ``n < 2k`` the top and bottom sets overlap.
        subtyping: mutually exclusive classes: the top-k patches of every *other* class's branch are
            also pseudo-labelled negative, and the instance loss is averaged over all classes.
        instance_loss_fn: ``'ce'`` (cross-entropy) or ``'svm'`` (smooth top-1 SVM, tau = alpha = 1).
        bag_weight: weight of the bag loss; the instance loss gets ``1 - bag_weight`` (0.7 / 0.3).
    """

    multi_branch: bool = False
    gate: bool = True
    attention_dim: int = 384
    k_sample: int = 8
    subtyping: bool = False
    instance_loss_fn: str = "svm"
    bag_weight: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_fields(self, "attention_dim", "k_sample")
        if self.instance_loss_fn not in _INSTANCE_LOSSES:
            raise ValueError(
                f"CLAMConfig.instance_loss_fn must be one of {_INSTANCE_LOSSES}, "
                f"got {self.instance_loss_fn!r}"
            )
        if not 0.0 <= float(self.bag_weight) <= 1.0:
            raise ValueError(f"CLAMConfig.bag_weight must be in [0, 1], got {self.bag_weight}")


@register_model("clam")
class CLAM(MILModel):
    """CLAM-SB / CLAM-MB with an instance-level clustering loss, batched through a padding mask.

    Bag branch: ``patch_embed -> AttentionPool (k = 1 or C branches) -> classifier``, as ABMIL.

    Instance branch (only when ``label`` is given, in training or evaluation, as MIL-Lab): for each bag
    (looping over the batch, using only its real tokens) and each class ``c``, with ``a`` the raw
    attention of branch ``c`` (CLAM-MB) or of the single branch (CLAM-SB):

    * ``c`` = the bag's label: the top-k tokens by ``a`` get pseudo-label 1 and the bottom-k get 0 for
      the binary instance classifier ``instance_classifiers[c]``;
    * otherwise, if ``subtyping``: the top-k tokens get pseudo-label 0 for ``instance_classifiers[c]``.

    The bag's instance loss is the sum of these terms, divided by ``C`` when ``subtyping`` (otherwise there
    is one term); the batch's is the mean over bags. ``k = min(k_sample, n_real)``. With Mammoth and
    ``keep_slots`` the tokens are slots, so top/bottom-k pick slots (as in the MAMMOTH fork).

    Outputs: ``logits (b, C)``; ``slide_features (b, embed_dim)`` (SB) or ``(b, C * embed_dim)`` (MB);
    with ``label``: ``aux_loss = (1 - bag_weight) * instance_loss``, ``bag_loss_weight = bag_weight`` and
    ``extras['instance_loss']`` (unweighted, detached, for logging).

    ``attention_kind = "pre-softmax"``: ``attention (b, k, n)`` is the raw attention logits (``-inf`` at
    padded patches); with a slot-token embedding (Mammoth ``keep_slots``) it is the post-softmax slot
    weights mapped to patches (``extras['attention_kind']`` says which).
    """

    config_class: ClassVar[type[MILConfig]] = CLAMConfig
    attention_kind: ClassVar[str] = "pre-softmax"
    requires_label_for_aux: ClassVar[bool] = True

    def __init__(self, config: CLAMConfig) -> None:
        super().__init__(config)
        self.config: CLAMConfig
        c, d = config.num_classes, config.embed_dim
        self.global_attn = AttentionPool(
            d, config.attention_dim, dropout=config.dropout, gated=config.gate,
            num_branches=c if config.multi_branch else 1,
        )
        if config.multi_branch:
            self.classifiers = nn.ModuleList([make_linear(d, 1) for _ in range(c)])
        else:
            self.classifier = make_linear(d, c)
        self.instance_classifiers = nn.ModuleList([make_linear(d, 2) for _ in range(c)])
        self.instance_loss_fn: nn.Module = (
            SmoothTop1SVM(2) if config.instance_loss_fn == "svm" else nn.CrossEntropyLoss()
        )
        initialize_weights(self)

    # ------------------------------------------------------------------ instance loss
    def _check_label(self, label: Tensor, batch: int) -> Tensor:
        label = torch.as_tensor(label)
        if label.ndim == 0:
            label = label.reshape(1)
        if label.ndim == 2 and label.shape[1] == 1:
            label = label[:, 0]
        if label.shape != (batch,) or label.is_floating_point() or label.is_complex():
            raise ValueError(
                f"CLAM needs one integer class label per bag, shape ({batch},); got {tuple(label.shape)} "
                f"{label.dtype}"
            )
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"CLAM labels must be in [0, {self.num_classes - 1}], got values in [{lo}, {hi}]"
            )
        return label

    def bag_instance_loss(self, tokens: Tensor, scores: Tensor, label: int) -> Tensor:
        """Instance loss of one bag.

        Args:
            tokens: ``(t, d)`` the bag's real tokens.
            scores: ``(k, t)`` raw attention logits of the branches (k = 1 for CLAM-SB).
            label: the bag's class.

        Returns:
            Scalar loss.
        """
        k = min(self.config.k_sample, tokens.shape[0])
        total = tokens.new_zeros(())
        for c, classifier in enumerate(self.instance_classifiers):
            a = scores[c] if self.config.multi_branch else scores[0]
            if c == label:
                top = a.topk(k).indices
                bottom = (-a).topk(k).indices
                picked = torch.cat([top, bottom])
                targets = torch.cat([torch.ones(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)])
            elif self.config.subtyping:
                picked = a.topk(k).indices
                targets = torch.zeros(k, dtype=torch.long)
            else:
                continue
            logits = classifier(tokens[picked])
            total = total + self.instance_loss_fn(logits, targets.to(tokens.device))
        if self.config.subtyping:
            total = total / self.num_classes
        return total

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
    ) -> MILOutput:
        """Classify bags ``x: (b, n, in_dim)`` with optional bool ``mask: (b, n)`` (True = real patch).

        Args:
            label: optional ``(b,)`` class indices; when given the instance loss is returned in
                ``aux_loss``.
        """
        x, mask = self.check_input(x, mask)
        if label is not None:
            label = self._check_label(label, x.shape[0])
        emb = self.embed(x, mask, return_routing=return_routing, return_attention=return_attention)
        pooled, scores, weights = self.global_attn(emb.tokens, emb.mask)
        if self.config.multi_branch:
            logits = torch.cat([clf(pooled[:, c]) for c, clf in enumerate(self.classifiers)], dim=1)
            slide = pooled.flatten(1)
        else:
            slide = pooled[:, 0]
            logits = self.classifier(slide)
        out = MILOutput(logits=logits, slide_features=slide)

        if label is not None:
            losses = []
            for j, y in enumerate(label.tolist()):
                tokens, bag_scores = emb.tokens[j], scores[j]
                if emb.mask is not None:
                    real = emb.mask[j]
                    tokens, bag_scores = tokens[real], bag_scores[:, real]
                losses.append(self.bag_instance_loss(tokens, bag_scores, y))
            inst = torch.stack(losses).mean()
            out.aux_loss = (1.0 - self.config.bag_weight) * inst
            out.bag_loss_weight = float(self.config.bag_weight)
            out.extras["instance_loss"] = inst.detach()

        if return_attention:
            self.attach_attention(out, emb, scores, weights)
        if return_routing:
            out.routing = emb.routing
        return out
