"""DTFD-MIL: double-tier feature distillation (Zhang et al., CVPR 2022), MIL-Lab flavour ("DFTD").

Per bag with ``n`` real instances and ``G = num_group`` pseudo-bags:

1. Split the instances into ``G`` pseudo-bags (``numpy.array_split`` sizes: the first ``n % G`` groups
   get one more). In training the order is a fresh random permutation; in eval it is deterministic
   (see ``eval_split``). Bags with fewer than ``G`` instances give fewer (non-empty) pseudo-bags.
2. Tier 1, per pseudo-bag: ``h = patch_embed(x_g)`` (``DimReduction`` = Linear + ReLU followed by
   ``num_residuals`` residual blocks; Mammoth replaces the whole ``DimReduction`` and runs **per
   pseudo-bag**, as in the MAMMOTH fork, giving ``E*S`` slot tokens per pseudo-bag), gated attention
   scores ``a = w^T (tanh(V h) * sigmoid(U h))`` **without softmax** (as MIL-Lab), pseudo-feature
   ``f_g = sum a * h``, tier-1 logits ``classifier(f_g)`` (dropout + Linear) and Grad-CAM instance
   logits ``(a * h) W^T``.
3. Distillation: ``MaxMinS`` keeps the ``ipg`` instances with the highest and the ``ipg`` with the lowest
   CAM probability of the last class, ``MaxS`` the highest only, ``AFS`` the pseudo-feature ``f_g``;
   ``ipg = max(1, total_instance // num_group)``.
4. Tier 2: gated attention (no softmax, no dropout) over the distilled features of all pseudo-bags,
   ``z = sum a * f``, ``logits = Linear(z)``.

Loss (MIL-Lab): ``bag_weight * CE(tier-2 logits) + (1 - bag_weight) * mean_g CE(tier-1 logits_g)``.
The second term is returned as ``aux_loss`` (only when ``label`` is given) and ``bag_loss_weight =
bag_weight``, so ``out.total_loss(ce(out.logits, label))`` is the reference loss.

Differences from the reference:

* ``ipg = max(1, total_instance // num_group)``. The reference computes ``4 // 8 = 0`` with its shipped
  config, and its ``sort_idx[-0:]`` then sends *every* instance to tier 2.
* Deterministic eval (``eval_split``): ``'seeded'`` (default) uses a fixed permutation from a generator
  seeded with ``eval_seed`` (pseudo-bags look like the random training ones, and the same bag always
  gives the same output), ``'ordered'`` splits the instances in their given order (contiguous chunks),
  ``'random'`` reshuffles on every call like the reference.
* Batches of bags work (pseudo-bags of all bags are embedded as one padded batch); ``label`` is optional.
* With an MoE patch embedding the residual blocks are not built (Mammoth replaces ``DimReduction``).
* The per-pseudo-bag Mammoth calls are batched into one call over all pseudo-bags (same maths as the
  reference's loop, which embeds each pseudo-bag separately).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ...nn.backend import make_dropout, make_linear
from ...nn.pooling import AttentionPool
from ...nn.routing import Routing, drop_full_mask
from ...registry import register_model, register_model_alias
from ._init import initialize_weights
from .base import MILConfig, MILModel, MILOutput

__all__ = ["DTFD", "DTFDConfig"]

_DISTILL = ("MaxMinS", "MaxS", "AFS")
_EVAL_SPLITS = ("seeded", "ordered", "random")


@dataclass
class DTFDConfig(MILConfig):
    """DTFD-MIL hyper-parameters (defaults = MIL-Lab ``dftd/base.yaml``).

    Attributes:
        embed_dim: width of the instance embedding (512).
        dropout: dropout before the tier-1 classifier (0.25).
        attention_dim: hidden width of both gated attentions (128).
        attention_drop: dropout inside the tier-1 gated attention (0.25).
        num_residuals: residual blocks after the Linear + ReLU embedding (4; ignored with MoE embeddings).
        distill: ``MaxMinS``, ``MaxS`` or ``AFS`` (attention-pooled feature).
        num_group: pseudo-bags per bag (8).
        total_instance: instances kept per bag by ``MaxS``/``MaxMinS`` (``ipg = max(1, total // group)``
            per pseudo-bag and side).
        bag_weight: weight of the tier-2 (bag) loss; the tier-1 loss gets ``1 - bag_weight``.
        eval_split: ``seeded`` (default), ``ordered`` or ``random`` (reference: reshuffles in eval).
        eval_seed: seed of the ``seeded`` eval permutation.
    """

    embed_dim: int = 512
    dropout: float = 0.25
    attention_dim: int = 128
    attention_drop: float = 0.25
    num_residuals: int = 4
    distill: str = "MaxMinS"
    num_group: int = 8
    total_instance: int = 4
    bag_weight: float = 0.7
    eval_split: str = "seeded"
    eval_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("attention_dim", 1), ("num_group", 1), ("num_residuals", 0), ("total_instance", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"DTFDConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.distill not in _DISTILL:
            raise ValueError(f"DTFDConfig.distill must be one of {_DISTILL}, got {self.distill!r}")
        if self.eval_split not in _EVAL_SPLITS:
            raise ValueError(f"DTFDConfig.eval_split must be one of {_EVAL_SPLITS}, got {self.eval_split!r}")
        if not 0.0 <= float(self.attention_drop) < 1.0:
            raise ValueError(f"DTFDConfig.attention_drop must be in [0, 1), got {self.attention_drop}")
        if not 0.0 <= float(self.bag_weight) <= 1.0:
            raise ValueError(f"DTFDConfig.bag_weight must be in [0, 1], got {self.bag_weight}")
        if not isinstance(self.eval_seed, int) or isinstance(self.eval_seed, bool):
            raise ValueError(f"DTFDConfig.eval_seed must be an integer, got {self.eval_seed!r}")

    @property
    def instance_per_group(self) -> int:
        """Instances kept per pseudo-bag and side by ``MaxS``/``MaxMinS``: ``max(1, total // group)``."""
        return max(1, self.total_instance // self.num_group)


class _Classifier(nn.Module):
    """MIL-Lab ``Classifier_1fc``: ``Dropout -> Linear``; ``(..., L) -> (..., C)``."""

    def __init__(self, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = make_dropout(dropout)
        self.fc = make_linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(x))


class _ResidualBlock(nn.Module):
    """``x + ReLU(W2 ReLU(W1 x))`` with bias-free linears (MIL-Lab ``residual_block``); ``(..., L)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            make_linear(dim, dim, bias=False), nn.ReLU(), make_linear(dim, dim, bias=False), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@dataclass
class _PseudoBags:
    """Pseudo-bags of a batch: ``index (P, m)`` instance positions (0 at padding), ``mask (P, m)``,
    ``bag (P,)`` owning bag and ``slot (P,)`` the pseudo-bag's number within its bag."""

    index: Tensor
    mask: Tensor
    bag: Tensor
    slot: Tensor


@torch.compiler.disable  # traced, randperm + the pseudo-bag slices trip an inductor pattern (torch 2.13)
def _permutation(n: int, seed: int | None = None) -> Tensor:
    """A random order of ``n`` instances: from PyTorch's default generator, or a fixed one per ``seed``."""
    if seed is None:
        return torch.randperm(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


@register_model("dtfd")
class DTFD(MILModel):
    """DTFD-MIL: two-tier MIL over random pseudo-bags with feature distillation.

    ``attention_kind = "pre-softmax"``: ``attention (b, 1, n)`` holds every patch's tier-1 gated
    attention score (raw, un-normalised: MIL-Lab uses them directly as pooling weights), carried back
    from slot tokens through each pseudo-bag's routing with Mammoth. ``instance_logits (b, n, C)`` are
    the tier-1 Grad-CAM logits (token-level embeddings only, else ``None``).

    ``extras``: ``pseudo_bag_logits (b, num_group, C)`` tier-1 logits and ``pseudo_bag_mask
    (b, num_group)`` (False for empty pseudo-bags of bags with fewer than ``num_group`` instances);
    with ``return_attention`` also ``tier2_attention (b, p)`` and ``tier2_mask (b, p)`` over the
    distilled pseudo-instances; with ``return_routing`` and an MoE embedding, ``group_routing`` (the
    per-pseudo-bag :class:`Routing`) and ``group_index (P, m)``/``group_bag (P,)`` locating its patches.
    ``routing.expert_assignment`` is scattered back to ``(b, n, E)``; its ``slot_composition`` is
    ``None`` (every pseudo-bag has its own slots).
    """

    config_class: ClassVar[type[MILConfig]] = DTFDConfig
    attention_kind: ClassVar[str] = "pre-softmax"
    requires_label_for_aux: ClassVar[bool] = True

    def __init__(self, config: DTFDConfig) -> None:
        super().__init__(config)
        self.config: DTFDConfig = config
        dim = config.embed_dim
        moe = bool(getattr(self.patch_embed, "is_moe", False))
        self.residuals = nn.Sequential(*[_ResidualBlock(dim) for _ in range(0 if moe else config.num_residuals)])
        self.attention = AttentionPool(dim, config.attention_dim, dropout=config.attention_drop, gated=True)
        self.classifier = _Classifier(dim, config.num_classes, config.dropout)
        self.tier2_attention = AttentionPool(dim, config.attention_dim, dropout=0.0, gated=True)
        self.tier2_classifier = make_linear(dim, config.num_classes)
        initialize_weights(self)

    # ------------------------------------------------------------------ pseudo-bags
    def _order(self, n: int, device: torch.device) -> Tensor:
        """Order of a bag's ``n`` real instances before the split (random in training)."""
        if self.training or self.config.eval_split == "random":
            return _permutation(n).to(device)
        if self.config.eval_split == "ordered":
            return torch.arange(n, device=device)
        return _permutation(n, self.config.eval_seed).to(device)

    def split(self, mask: Tensor | None, b: int, n: int, device: torch.device) -> _PseudoBags:
        """Split every bag's real instances into at most ``num_group`` non-empty pseudo-bags.

        Args:
            mask: ``(b, n)`` bool or ``None``.

        Returns:
            :class:`_PseudoBags` with ``P <= b * num_group`` pseudo-bags of at most ``m = ceil(n_i / G)``.
        """
        groups: list[Tensor] = []
        bags: list[int] = []
        slots: list[int] = []
        for i in range(b):
            real = torch.arange(n, device=device) if mask is None else mask[i].nonzero().squeeze(-1)
            shuffled = real[self._order(real.numel(), device)]
            for j, chunk in enumerate(torch.tensor_split(shuffled, self.config.num_group)):
                if chunk.numel():
                    groups.append(chunk)
                    bags.append(i)
                    slots.append(j)
        lengths = torch.tensor([g.numel() for g in groups], device=device)
        index = pad_sequence(groups, batch_first=True, padding_value=0)
        gmask = torch.arange(index.shape[1], device=device).unsqueeze(0) < lengths.unsqueeze(1)
        return _PseudoBags(
            index, gmask, torch.tensor(bags, device=device), torch.tensor(slots, device=device)
        )

    def _distill_index(self, cam_prob: Tensor, tok_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Tokens kept by ``MaxS``/``MaxMinS`` per pseudo-bag.

        Args:
            cam_prob: ``(P, t)`` CAM probability of the last class.
            tok_mask: ``(P, t)`` real tokens or ``None``.

        Returns:
            ``(index (P, s), valid (P, s))`` with ``s = ipg`` (MaxS) or ``2 * ipg`` (MaxMinS); the top
            and bottom sets overlap in pseudo-bags with fewer than ``2 * ipg`` tokens, as the reference.
        """
        p, t = cam_prob.shape
        ipg = self.config.instance_per_group
        if tok_mask is not None:
            cam_prob = cam_prob.masked_fill(~tok_mask, float("-inf"))
            count = tok_mask.sum(1, keepdim=True)
        else:
            count = torch.full((p, 1), t, device=cam_prob.device)
        order = torch.sort(cam_prob, dim=1, descending=True, stable=True).indices  # real tokens first
        rank = torch.arange(ipg, device=cam_prob.device).unsqueeze(0)
        top_pos, top_ok = rank.expand(p, -1), rank < count
        bottom_pos = count - ipg + rank
        bottom_ok = bottom_pos >= 0
        if self.config.distill == "MaxMinS":
            pos, ok = torch.cat([top_pos, bottom_pos], 1), torch.cat([top_ok, bottom_ok], 1)
        else:
            pos, ok = top_pos, top_ok
        pos = pos.clamp(0, t - 1)
        return order.gather(1, pos), ok

    # ------------------------------------------------------------------ forward
    # Longer than 100 lines on purpose: it follows the reference's two-tier step (pseudo-bags, tier-1 scores,
    # distillation, tier-2 attention) in order, so that each block can be read against the paper and the
    # parity fixtures; about a third of it is the docstring.
    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
    ) -> MILOutput:
        """Classify bags.

        Args:
            x: ``(b, n, in_dim)`` instance features (or an unbatched ``(n, in_dim)`` bag).
            mask: optional bool ``(b, n)``, True = real instance.
            label: optional ``(b,)`` class indices; enables the tier-1 ``aux_loss``.
            return_attention: return the tier-1 scores over patches ``(b, 1, n)`` (and tier-2 weights).
            return_routing: return the patch embedding's routing (MoE embeddings only).

        Returns:
            :class:`MILOutput` with tier-2 ``logits (b, C)``, ``slide_features (b, D)``,
            ``aux_loss = (1 - bag_weight) * mean CE(tier-1)`` when ``label`` is given and
            ``bag_loss_weight = bag_weight``.
        """
        x, mask = self.check_input(x, mask)
        b, n, _ = x.shape
        cfg = self.config
        if label is not None:
            label = torch.as_tensor(label, device=x.device).reshape(-1).long()
            if label.numel() != b:
                raise ValueError(f"label must hold one class index per bag ({b}), got shape {tuple(label.shape)}")
        pb = self.split(mask, b, n, x.device)
        num_pb = pb.index.shape[0]
        xg = x[pb.bag.unsqueeze(1), pb.index]  # (P, m, in_dim)
        gmask = drop_full_mask(pb.mask)
        emb = self.embed(xg, gmask, return_routing=return_routing, return_attention=return_attention)
        tokens = self.residuals(emb.tokens)  # (P, t, D)
        tok_mask = emb.mask
        if tok_mask is not None:  # padded tokens (of junk features) must not leak, not even as inf * 0
            tokens = tokens.masked_fill(~tok_mask.unsqueeze(-1), 0.0)

        # Tier 1: un-normalised gated attention per pseudo-bag.
        scores = self.attention.scores(tokens).squeeze(1)  # (P, t) raw gated-attention scores
        if tok_mask is not None:
            scores = scores.masked_fill(~tok_mask, 0.0)
        weighted = tokens * scores.unsqueeze(-1)  # (P, t, D)
        pseudo_feat = weighted.sum(1)  # (P, D)
        sub_logits = self.classifier(pseudo_feat)  # (P, C)
        cam = weighted @ self.classifier.fc.weight.t()  # (P, t, C) Grad-CAM instance logits

        # Distillation.
        if cfg.distill == "AFS":
            distilled, valid = pseudo_feat.unsqueeze(1), torch.ones(num_pb, 1, dtype=torch.bool, device=x.device)
        else:
            with torch.no_grad():
                idx, valid = self._distill_index(torch.softmax(cam.detach(), -1)[..., -1], tok_mask)
            distilled = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (P, s, D)

        # Tier 2 over the distilled pseudo-instances of each bag.
        s, dim = distilled.shape[1], distilled.shape[2]
        g = cfg.num_group
        t2_in = distilled.new_zeros(b, g, s, dim)
        t2_in[pb.bag, pb.slot] = distilled
        t2_mask = torch.zeros(b, g, s, dtype=torch.bool, device=x.device)
        t2_mask[pb.bag, pb.slot] = valid
        t2_in, t2_mask = t2_in.reshape(b, g * s, dim), t2_mask.reshape(b, g * s)
        t2_scores = self.tier2_attention.scores(t2_in).squeeze(1).masked_fill(~t2_mask, 0.0)  # (b, g*s)
        slide = (t2_scores.unsqueeze(-1) * t2_in).sum(1)  # (b, D)
        logits = self.tier2_classifier(slide)

        pb_logits = sub_logits.new_zeros(b, g, sub_logits.shape[-1])
        pb_logits[pb.bag, pb.slot] = sub_logits
        pb_mask = torch.zeros(b, g, dtype=torch.bool, device=x.device)
        pb_mask[pb.bag, pb.slot] = True
        extras: dict[str, Any] = {"pseudo_bag_logits": pb_logits, "pseudo_bag_mask": pb_mask}

        aux_loss = None
        if label is not None:
            ce = F.cross_entropy(sub_logits, label[pb.bag], reduction="none")  # (P,)
            per_bag = torch.zeros(b, dtype=ce.dtype, device=x.device).index_add(0, pb.bag, ce)
            per_bag = per_bag / pb_mask.sum(1).to(ce.dtype)
            aux_loss = (1.0 - cfg.bag_weight) * per_bag.mean()

        real = pb.mask  # (P, m) real instance positions of each pseudo-bag
        rows, cols = pb.bag.unsqueeze(1).expand_as(pb.index)[real], pb.index[real]

        attention = None
        if return_attention:
            patch_scores = emb.patch_scores(scores.detach().unsqueeze(1)).squeeze(1)  # (P, m)
            attention = patch_scores.new_zeros(b, n)
            attention[rows, cols] = patch_scores[real]
            attention = attention.unsqueeze(1)
            extras["tier2_attention"], extras["tier2_mask"] = t2_scores.detach(), t2_mask

        instance_logits = None
        if getattr(self.patch_embed, "preserves_tokens", True):  # tokens are the patches
            instance_logits = cam.new_zeros(b, n, cam.shape[-1])
            instance_logits[rows, cols] = cam[real]

        routing = None
        if return_routing and emb.routing is not None:
            assign = emb.routing.expert_assignment  # (P, m, E)
            full = assign.new_zeros(b, n, assign.shape[-1])
            full[rows, cols] = assign[real]
            routing = Routing(expert_assignment=full)
            extras.update(group_routing=emb.routing, group_index=pb.index, group_bag=pb.bag)

        return MILOutput(
            logits=logits,
            attention=attention,
            instance_logits=instance_logits,
            slide_features=slide,
            aux_loss=aux_loss,
            bag_loss_weight=float(cfg.bag_weight),
            routing=routing,
            extras=extras,
        )


# MIL-Lab names this model ``dftd``: accepted as an alias (not listed twice by ``list_models``).
register_model_alias("dftd", "dtfd")
