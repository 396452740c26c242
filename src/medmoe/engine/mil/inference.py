"""Bags in, logits out: the loaders, shards and forward passes that training, prediction and slide
embeddings share.

* :func:`with_feature_stats` — a bag dataset whose features are standardised with a checkpoint's
  ``feature_stats`` (appended to the dataset's own transform);
* :func:`bag_loader` — a ``DataLoader`` over given bag indices, in that order, padded and masked by the collate;
* :func:`shard_indices` — one process's share of an epoch's bag order (DDP);
* :func:`infer_logits` — float32 logits ``(n, C)`` of every bag of a dataset, in dataset order (sharded over
  processes and gathered when a multi-process Fabric is given).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ...data.bags import Standardize, collate_bags

if TYPE_CHECKING:  # pragma: no cover
    from lightning_fabric import Fabric

__all__ = ["ChainedTransform", "bag_loader", "infer_logits", "shard_indices", "with_feature_stats"]


class ChainedTransform:
    """Apply ``first`` then ``second`` (picklable for DataLoader workers)."""

    def __init__(self, first: Callable[[Tensor], Tensor], second: Callable[[Tensor], Tensor]) -> None:
        self.first, self.second = first, second

    def __call__(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))


def with_feature_stats(dataset: Any, stats: dict[str, Any] | None) -> Any:
    """``dataset`` with :class:`~medmoe.data.bags.Standardize` (``stats = {'mean': (d,), 'std': (d,)}``)
    appended to its transform; unchanged when ``dataset`` or ``stats`` is ``None``."""
    if dataset is None or stats is None:
        return dataset
    std = Standardize(
        torch.as_tensor(stats["mean"], dtype=torch.float32),
        torch.as_tensor(stats["std"], dtype=torch.float32),
    )
    current = getattr(dataset, "transform", None)
    return dataset.with_transform(std if current is None else ChainedTransform(current, std))


def bag_loader(
    dataset: Any,
    indices: Sequence[int],
    batch_size: int,
    num_workers: int,
    seed: int,
    collate: Callable[[Sequence[Any]], Any] = collate_bags,
) -> DataLoader:
    """A loader over ``dataset[indices]`` in the given order, ``batch_size`` bags per batch (``collate``
    pads and masks them); ``seed`` seeds the workers' generator."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(indices),
        collate_fn=collate,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=False,
    )


def shard_indices(order: list[int], rank: int, world: int, pad: bool) -> list[int]:
    """Rank ``rank``'s bags ``order[rank::world]``; with ``pad``, wrapped to ``ceil(n / world)`` so every
    rank takes the same number of steps."""
    if world == 1:
        return list(order)
    shard = order[rank::world]
    if pad:
        per_rank = math.ceil(len(order) / world)
        k = 0
        while len(shard) < per_rank:
            shard.append(order[k % len(order)])
            k += 1
    return shard


@torch.no_grad()
def infer_logits(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    fabric: Fabric | None = None,
    progress: Any = None,
    description: str = "eval",
) -> tuple[Tensor, Tensor]:
    """Float32 logits ``(n, C)`` and labels ``(n,)`` of every bag on the CPU, in dataset order
    (DDP-sharded and gathered when ``fabric`` runs several processes; under ``fabric``'s precision)."""
    n = len(dataset)
    world = fabric.world_size if fabric is not None else 1
    rank = fabric.global_rank if fabric is not None else 0
    shard = shard_indices(list(range(n)), rank, world, pad=True)
    was_training = model.training
    model.eval()
    logit_parts: list[Tensor] = []
    loader = bag_loader(dataset, shard, batch_size, num_workers, seed=0)
    task = progress.add_task(description, total=len(loader), info="") if progress is not None else None
    for batch in loader:
        batch = batch.to(device)
        x = batch.x
        if fabric is not None:
            x = fabric.strategy.precision.convert_input(x)
            with fabric.autocast():
                out = model(x, batch.mask)
        else:
            out = model(x, batch.mask)
        logit_parts.append(out.logits.float())
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    model.train(was_training)
    logits = torch.cat(logit_parts, 0)
    if world > 1:
        assert fabric is not None
        gathered = fabric.all_gather(logits)  # (world, ceil(n / world), C)
        full = torch.empty(n, logits.shape[1], device=logits.device)
        for r in range(world):
            count = len(range(r, n, world))
            full[r::world] = gathered[r, :count]
        logits = full
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    return logits.float().cpu(), labels
