"""The one contract every MIL model follows: :class:`MILConfig` in, :class:`MILOutput` out.

``forward(x, mask=None, *, label=None, return_attention=False, return_routing=False)`` with
``x: (b, n, in_dim)`` and an optional bool ``mask: (b, n)`` (True = real instance). Padding never
changes a bag's output; models that are per-bag by nature loop over the bags inside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from ...nn.checks import check_positive_fields
from ...nn.embed import create_patch_embed
from ...nn.patch_embedding import EmbeddedPatches, PatchEmbedding
from ...nn.routing import Routing, check_mask, drop_full_mask

__all__ = ["MILConfig", "MILModel", "MILOutput"]


@dataclass
class MILConfig:
    """Hyper-parameters shared by every MIL model (model configs subclass it and add their own).

    Attributes:
        in_dim: instance feature size (set from the encoder name by ``create_model``).
        num_classes: number of bag classes.
        embed_dim: width of the patch embedding's output.
        dropout: dropout used by the aggregator.
        patch_embed: ``linear`` | ``mlp`` | ``mammoth`` | ``soft_moe``.
        patch_embed_args: extra keyword arguments for :func:`medmoe.nn.create_patch_embed`
            (for Mammoth: ``num_experts``, ``num_slots``, ``num_heads``, ``slot_dim``, ...).
    """

    in_dim: int = 1024
    num_classes: int = 2
    embed_dim: int = 512
    dropout: float = 0.25
    patch_embed: str = "linear"
    patch_embed_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_positive_fields(self, "in_dim", "num_classes", "embed_dim")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class MILOutput:
    """What every MIL model returns.

    Attributes:
        logits: ``(b, num_classes)``.
        attention: ``(b, k, n)`` scores over the *input patches* (k = attention branches or classes), or
            ``None`` when not requested / not defined. The model's ``attention_kind`` says whether they
            are pre-softmax logits or post-softmax weights.
        instance_logits: ``(b, n, num_classes)`` per-patch class logits where the model has them.
        slide_features: ``(b, d)`` bag embedding fed to the classifier.
        aux_loss: scalar auxiliary loss (CLAM instance loss, DTFD tier-1 loss), already weighted; the
            trainer adds it to ``bag_loss_weight * task_loss`` (see :meth:`total_loss`).
        bag_loss_weight: weight of the bag-level task loss (CLAM/DTFD use 0.7).
        routing: MoE routing summary when ``return_routing=True`` and the patch embedding routes.
        extras: model-specific tensors (documented per model).
    """

    logits: Tensor
    attention: Tensor | None = None
    instance_logits: Tensor | None = None
    slide_features: Tensor | None = None
    aux_loss: Tensor | None = None
    bag_loss_weight: float = 1.0
    routing: Routing | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def total_loss(self, task_loss: Tensor) -> Tensor:
        """``bag_loss_weight * task_loss + aux_loss`` (``aux_loss`` omitted when ``None``)."""
        loss = self.bag_loss_weight * task_loss
        return loss if self.aux_loss is None else loss + self.aux_loss


class MILModel(nn.Module):
    """Base class of MIL models.

    Subclasses build their aggregator in ``__init__`` (after calling ``super().__init__(config)``, which
    creates ``self.patch_embed``) and implement :meth:`forward`. Helpers:

    * :meth:`embed` — runs the patch embedding with validation; returns :class:`EmbeddedPatches`.
    * :meth:`to_patch_attention` — carries token scores back to the input patches when the embedding
      changes the token count (Mammoth with ``keep_slots``).
    """

    config_class: ClassVar[type[MILConfig]] = MILConfig
    family: ClassVar[str] = "mil"  # the model family recorded in checkpoints (medmoe.registry.FAMILIES)
    attention_kind: ClassVar[str] = "none"  # "pre-softmax", "post-softmax", "instance-logits" or "none"
    requires_label_for_aux: ClassVar[bool] = False

    def __init__(self, config: MILConfig, *, build_patch_embed: bool = True) -> None:
        super().__init__()
        if not isinstance(config, MILConfig):
            raise ValueError(f"expected a MILConfig, got {type(config).__name__}")
        self.config = config
        self.patch_embed: PatchEmbedding | nn.Module
        if build_patch_embed:
            self.patch_embed = create_patch_embed(
                config.patch_embed, config.in_dim, config.embed_dim, **dict(config.patch_embed_args)
            )
        else:
            self.patch_embed = nn.Identity()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_input(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Validate ``x: (b, n, in_dim)`` (an unbatched ``(n, in_dim)`` bag is accepted) and the mask."""
        if x.ndim == 2:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        if x.ndim != 3:
            raise ValueError(f"{type(self).__name__} expects features (b, n, d), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.config.in_dim:
            raise ValueError(
                f"{type(self).__name__} was built for {self.config.in_dim}-d features but got {x.shape[-1]}-d; "
                f"pick the matching encoder name (e.g. 'abmil.base.uni' = 1024) or pass in_dim={x.shape[-1]}"
            )
        if x.shape[1] == 0:
            raise ValueError("a bag needs at least one instance; got n = 0")
        return x, drop_full_mask(check_mask(x, mask))

    def embed(
        self, x: Tensor, mask: Tensor | None, *, return_routing: bool = False, return_attention: bool = False
    ) -> EmbeddedPatches:
        """Run the patch embedding.

        Routing is computed when ``return_routing`` is set, or when ``return_attention`` is set and the
        embedding's tokens are not the patches (it is then needed by :meth:`to_patch_attention`).
        """
        pe = self.patch_embed
        if isinstance(pe, PatchEmbedding):
            need = return_routing or (return_attention and not pe.preserves_tokens)
            return pe.embed(x, mask, return_routing=need)
        return EmbeddedPatches(pe(x), mask, None)

    def attach_attention(
        self, out: MILOutput, emb: EmbeddedPatches, scores: Tensor, weights: Tensor | None = None
    ) -> None:
        """Store token attention in ``out.attention`` as ``(b, k, n)`` scores over the input patches.

        Args:
            out: the output being built.
            emb: the patch embedding's result.
            scores: ``(b, k, t)`` pre-softmax token scores.
            weights: ``(b, k, t)`` post-softmax weights (a softmax of ``scores`` when ``None``).

        When the tokens are the patches the pre-softmax scores are kept (``-inf`` at padded patches);
        otherwise (Mammoth's slot tokens) the post-softmax weights are carried to the patches through
        the routing. ``out.extras['attention_kind']`` says which.
        """
        if getattr(self.patch_embed, "preserves_tokens", True):
            if emb.mask is not None:
                scores = scores.masked_fill(~emb.mask.unsqueeze(1), float("-inf"))
            out.attention = scores
            out.extras["attention_kind"] = "pre-softmax"
        else:
            if weights is None:
                weights = scores.float().softmax(dim=-1).to(scores.dtype)
            out.attention = self.to_patch_attention(emb, weights)
            out.extras["attention_kind"] = "post-softmax"

    @staticmethod
    def to_patch_attention(emb: EmbeddedPatches, token_scores: Tensor | None) -> Tensor | None:
        """``(b, k, t)`` token scores -> ``(b, k, n)`` patch scores (identity when tokens are patches)."""
        if token_scores is None:
            return None
        return emb.patch_scores(token_scores)

    def forward(  # pragma: no cover - abstract
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        label: Tensor | None = None,
        return_attention: bool = False,
        return_routing: bool = False,
    ) -> MILOutput:
        raise NotImplementedError
