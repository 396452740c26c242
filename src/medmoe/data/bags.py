"""Bags of instance features: the :class:`Bag` item, batching with padding, and an in-memory dataset.

Every bag dataset in :mod:`medmoe.data` is a :class:`torch.utils.data.Dataset` whose ``__getitem__``
returns a :class:`Bag` and which exposes ``labels``, ``bag_ids``, ``groups``, ``num_classes``,
``feature_dim`` and ``class_names`` (see :class:`BagDataset`). :func:`collate_bags` turns a list of
bags of different sizes into one zero-padded :class:`BagBatch` with a boolean mask (True = real
instance), the input format of every MIL model (``model(batch.x, mask=batch.mask)``).
"""

from __future__ import annotations

import copy
import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "Bag",
    "BagBatch",
    "BagDataset",
    "InMemoryBags",
    "Standardize",
    "SubsampledCollate",
    "collate_bags",
    "feature_mean_std",
]


@dataclass
class Bag:
    """One bag (a slide, a patient, a classic-MIL bag).

    Attributes:
        features: ``(n, d)`` float32 instance features.
        label: bag label, an int in ``[0, num_classes)``.
        bag_id: unique id of the bag (slide id, case id or benchmark bag id).
        coords: ``(n, 2)`` patch coordinates (level-0 pixels, x/y as written by TRIDENT/CLAM) or None.
        group: patient/case id used for patient-level splits; equals ``bag_id`` when unknown.
    """

    features: Tensor
    label: int
    bag_id: str
    coords: Tensor | None = None
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.bag_id

    @property
    def num_instances(self) -> int:
        """Number of instances ``n``."""
        return int(self.features.shape[0])


@dataclass
class BagBatch:
    """A padded batch of bags.

    Attributes:
        x: ``(b, n_max, d)`` float32 features, zero beyond each bag's length.
        mask: ``(b, n_max)`` bool, True = real instance.
        label: ``(b,)`` int64 labels.
        bag_ids: the ``b`` bag ids, in batch order.
        coords: ``(b, n_max, 2)`` coordinates (zero-padded) when every bag has them, else None.
        groups: the ``b`` group (patient) ids.
    """

    x: Tensor
    mask: Tensor
    label: Tensor
    bag_ids: list[str]
    coords: Tensor | None = None
    groups: list[str] | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BagBatch:
        """A copy with every tensor moved to ``device``."""
        return BagBatch(
            x=self.x.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            label=self.label.to(device, non_blocking=non_blocking),
            bag_ids=list(self.bag_ids),
            coords=None if self.coords is None else self.coords.to(device, non_blocking=non_blocking),
            groups=None if self.groups is None else list(self.groups),
        )

    def pin_memory(self) -> BagBatch:
        """Pinned-memory copy (called by ``DataLoader(pin_memory=True)``)."""
        return BagBatch(
            x=self.x.pin_memory(),
            mask=self.mask.pin_memory(),
            label=self.label.pin_memory(),
            bag_ids=self.bag_ids,
            coords=None if self.coords is None else self.coords.pin_memory(),
            groups=self.groups,
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def lengths(self) -> Tensor:
        """``(b,)`` int64 number of real instances per bag."""
        return self.mask.sum(dim=1)


def collate_bags(bags: Sequence[Bag]) -> BagBatch:
    """Pad a list of bags into one :class:`BagBatch` (use as ``DataLoader(collate_fn=collate_bags)``).

    Args:
        bags: ``b`` bags with features ``(n_i, d)`` (same ``d``, every ``n_i >= 1``).

    Returns:
        A batch with ``x (b, n_max, d)`` zero-padded, ``mask (b, n_max)`` True on real instances,
        ``label (b,)`` long, ``coords (b, n_max, 2)`` when every bag has coordinates (else None).

    Raises:
        ValueError: on an empty list, an empty bag, a non-2-D feature tensor or mixed feature dims.
    """
    if len(bags) == 0:
        raise ValueError("collate_bags got an empty list; give it at least one Bag")
    dims = set()
    for bag in bags:
        if bag.features.dim() != 2:
            raise ValueError(
                f"bag {bag.bag_id!r} has features of shape {tuple(bag.features.shape)}; expected (n, d)"
            )
        if bag.features.shape[0] == 0:
            raise ValueError(f"bag {bag.bag_id!r} has 0 instances; drop it from the dataset before batching")
        dims.add(int(bag.features.shape[1]))
    if len(dims) != 1:
        raise ValueError(
            f"bags in one batch have different feature dims {sorted(dims)}; all bags must come from the "
            "same feature extractor"
        )
    d = dims.pop()
    b = len(bags)
    lengths = [int(bag.features.shape[0]) for bag in bags]
    n_max = max(lengths)
    if b == 1:  # nothing to pad: a view, not a copy (40 MB per 10k x 1024 bag)
        x = bags[0].features.to(torch.float32).unsqueeze(0)
        mask = torch.ones(1, n_max, dtype=torch.bool)
    else:
        x = torch.zeros(b, n_max, d, dtype=torch.float32)
        mask = torch.zeros(b, n_max, dtype=torch.bool)
        for i, bag in enumerate(bags):
            x[i, : lengths[i]] = bag.features.to(torch.float32)
            mask[i, : lengths[i]] = True
    coords: Tensor | None = None
    if all(bag.coords is not None for bag in bags):
        dtype = functools.reduce(torch.promote_types, [bag.coords.dtype for bag in bags])  # type: ignore[union-attr]
        coords = torch.zeros(b, n_max, 2, dtype=dtype)
        for i, bag in enumerate(bags):
            c = bag.coords
            assert c is not None
            if tuple(c.shape) != (lengths[i], 2):
                raise ValueError(
                    f"bag {bag.bag_id!r} has coords of shape {tuple(c.shape)} but {lengths[i]} instances; "
                    f"expected ({lengths[i]}, 2)"
                )
            coords[i, : lengths[i]] = c.to(dtype)
    label = torch.tensor([int(bag.label) for bag in bags], dtype=torch.long)
    return BagBatch(
        x=x,
        mask=mask,
        label=label,
        bag_ids=[bag.bag_id for bag in bags],
        coords=coords,
        groups=[bag.group for bag in bags],
    )


class SubsampledCollate:
    """:func:`collate_bags` after cutting every bag with more than ``max_instances`` instances down to a random
    ``max_instances`` of them (their order, and their coordinates, kept).

    The subset of a bag depends only on ``seed`` and the bag id, not on batch composition, worker or
    rank, so an epoch is reproducible (and a resumed run draws what the uninterrupted one drew); a new
    ``seed`` per epoch gives new subsets. Picklable for DataLoader workers.
    """

    def __init__(self, max_instances: int, seed: int) -> None:
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.max_instances = int(max_instances)
        self.seed = int(seed)

    def subsample(self, bag: Bag) -> Bag:
        n = bag.num_instances
        if n <= self.max_instances:
            return bag
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(bag.bag_id.encode())) % (2**63))
        keep = torch.randperm(n, generator=g)[: self.max_instances].sort().values
        return Bag(
            features=bag.features[keep],
            label=bag.label,
            bag_id=bag.bag_id,
            coords=None if bag.coords is None else bag.coords[keep],
            group=bag.group,
        )

    def __call__(self, bags: Sequence[Bag]) -> BagBatch:
        return collate_bags([self.subsample(bag) for bag in bags])


class Standardize:
    """Feature transform ``(x - mean) / std`` for ``(n, d)`` features; picklable for DataLoader workers.

    Args:
        mean: ``(d,)`` per-feature mean.
        std: ``(d,)`` per-feature standard deviation (values below ``eps`` are replaced by 1).
    """

    def __init__(self, mean: Tensor, std: Tensor, eps: float = 1e-6) -> None:
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(
                f"mean and std must both be (d,), got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        self.mean = mean.to(torch.float32)
        self.std = torch.where(std.abs() < eps, torch.ones_like(std), std).to(torch.float32)

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std


class BagDataset(Dataset):
    """Base class of bag datasets: the shared properties, ``subset`` and ``with_transform``.

    Subclasses implement ``__len__``, :meth:`_get` (returns a :class:`Bag` before the transform), and
    :meth:`_select` (keep a list of indices, in place on a shallow copy).
    """

    transform: Callable[[Tensor], Tensor] | None = None
    #: ``{bag_id: (time, event)}`` for survival datasets (see :meth:`with_survival`), else None.
    _survival: dict[str, tuple[float, int]] | None = None
    #: ``{bag_id: (0/1 per label)}`` for multi-label datasets (see :meth:`with_multilabel`), else None.
    _multilabel: dict[str, tuple[int, ...]] | None = None
    _label_names: tuple[str, ...] = ()

    # --- to implement -------------------------------------------------------------------------
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get(self, index: int) -> Bag:  # pragma: no cover - abstract
        raise NotImplementedError

    def _select(self, indices: list[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def labels(self) -> list[int]:  # pragma: no cover - abstract
        """Bag labels, one int per bag."""
        raise NotImplementedError

    @property
    def bag_ids(self) -> list[str]:  # pragma: no cover - abstract
        """Unique bag ids, one per bag."""
        raise NotImplementedError

    @property
    def groups(self) -> list[str]:  # pragma: no cover - abstract
        """Patient/case id per bag (equal to the bag id when unknown)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Bag:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"bag index {index} out of range for a dataset of {n} bags")
        bag = self._get(int(index) % n)
        if self.transform is not None:
            bag.features = self.transform(bag.features)
        return bag

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: Sequence[int]) -> BagDataset:
        """A dataset of the same kind holding only ``indices`` (in that order); keeps ``num_classes``
        and ``class_names`` even when a class is absent from the subset."""
        n = len(self)
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"subset indices {bad[:10]} are out of range for a dataset of {n} bags")
        new = copy.copy(self)
        new._select(idx)
        return new

    def with_transform(self, transform: Callable[[Tensor], Tensor] | None) -> BagDataset:
        """A shallow copy whose bags' ``(n, d)`` features go through ``transform`` (e.g. :class:`Standardize`)."""
        new = copy.copy(self)
        new.transform = transform
        return new

    def with_survival(self, times: Sequence[float], events: Sequence[int]) -> BagDataset:
        """A shallow copy carrying a censored survival target per bag, for ``TrainConfig(task='survival')``.

        Args:
            times: follow-up time per bag (any unit, >= 0), in dataset order.
            events: 1 where the event (death, progression) was observed at ``time``, 0 where the
                patient was censored then. (CLAM/PORPOISE CSVs store ``censorship = 1 - event``.)

        The targets follow the bags through :meth:`subset` (they are keyed by bag id). The labels are
        unchanged; use the events as labels to stratify folds by event (what
        :class:`~medmoe.data.FeatureFolderBags` does with ``time_col``).
        """
        ids = self.bag_ids
        times, events = list(times), list(events)
        if len(times) != len(ids) or len(events) != len(ids):
            raise ValueError(f"got {len(times)} times and {len(events)} events for {len(ids)} bags")
        if len(set(ids)) != len(ids):
            raise ValueError("survival targets are keyed by bag id, but this dataset's bag ids are not unique")
        targets: dict[str, tuple[float, int]] = {}
        for bag_id, t, e in zip(ids, times, events):
            tf = float(t)
            if not tf >= 0 or tf == float("inf"):
                raise ValueError(f"bag {bag_id!r}: survival time must be a finite number >= 0, got {t!r}")
            if e not in (0, 1, True, False):
                raise ValueError(f"bag {bag_id!r}: event must be 0 (censored) or 1 (observed), got {e!r}")
            targets[bag_id] = (tf, int(e))
        new = copy.copy(self)
        new._survival = targets
        return new

    @property
    def is_survival(self) -> bool:
        """Whether the bags carry survival targets (:meth:`with_survival`)."""
        return self._survival is not None

    @property
    def survival_times(self) -> list[float]:
        """Follow-up time per bag, in dataset order (survival datasets only)."""
        return [t for t, _ in self._survival_targets()]

    @property
    def survival_events(self) -> list[int]:
        """1 = event observed, 0 = censored, per bag in dataset order (survival datasets only)."""
        return [e for _, e in self._survival_targets()]

    def _survival_targets(self) -> list[tuple[float, int]]:
        if self._survival is None:
            raise ValueError(
                f"{type(self).__name__} has no survival targets; build it with time/event columns "
                "(FeatureFolderBags(..., time_col='time')) or call dataset.with_survival(times, events)"
            )
        return [self._survival[b] for b in self.bag_ids]

    def with_multilabel(self, targets: Sequence[Sequence[int]], label_names: Sequence[str]) -> BagDataset:
        """A shallow copy carrying several yes/no labels per bag, for ``TrainConfig(task='multilabel')``.

        Args:
            targets: ``(N, L)`` 0/1 values (nested sequences, an array or a tensor), one row per bag in
                dataset order.
            label_names: the ``L`` label names (e.g. ``["tumor", "necrosis"]``), unique.

        The targets follow the bags through :meth:`subset` (they are keyed by bag id). The class labels are
        unchanged; they serve to stratify folds (:class:`~medmoe.data.FeatureFolderBags` with ``label_cols``
        uses the label combination, e.g. ``"tumor+necrosis"`` or ``"(none)"``).
        """
        ids = self.bag_ids
        names = [str(n) for n in label_names]
        rows = [list(r) for r in (targets.tolist() if hasattr(targets, "tolist") else targets)]
        if len(names) < 1 or len(set(names)) != len(names):
            raise ValueError(f"multi-label targets need at least one unique label name, got {names}")
        if len(rows) != len(ids):
            raise ValueError(f"got {len(rows)} target rows for {len(ids)} bags")
        if len(set(ids)) != len(ids):
            raise ValueError("multi-label targets are keyed by bag id, but this dataset's bag ids are not unique")
        table: dict[str, tuple[int, ...]] = {}
        for bag_id, row in zip(ids, rows):
            if len(row) != len(names) or any(v not in (0, 1, True, False) for v in row):
                raise ValueError(
                    f"bag {bag_id!r}: expected {len(names)} values of 0 or 1 (labels {names}), got {row!r}"
                )
            table[bag_id] = tuple(int(v) for v in row)
        new = copy.copy(self)
        new._multilabel = table
        new._label_names = tuple(names)
        return new

    @property
    def is_multilabel(self) -> bool:
        """Whether the bags carry several yes/no labels (:meth:`with_multilabel`)."""
        return self._multilabel is not None

    @property
    def label_names(self) -> list[str]:
        """Names of the multi-label targets (empty for other datasets)."""
        return list(self._label_names)

    @property
    def multilabel_targets(self) -> Tensor:
        """``(N, L)`` float32 0/1 targets in dataset order (multi-label datasets only)."""
        if self._multilabel is None:
            raise ValueError(
                f"{type(self).__name__} has no multi-label targets; build it with several 0/1 columns "
                "(FeatureFolderBags(..., label_cols=['a', 'b'])) or call dataset.with_multilabel(targets, names)"
            )
        return torch.tensor([self._multilabel[b] for b in self.bag_ids], dtype=torch.float32).reshape(
            len(self), len(self._label_names)
        )

    def class_counts(self) -> list[int]:
        """Number of bags per class, length ``num_classes``."""
        counts = [0] * self.num_classes
        for y in self.labels:
            counts[y] += 1
        return counts

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bags={len(self)}, num_classes={self.num_classes}, "
            f"class_counts={self.class_counts()})"
        )


class InMemoryBags(BagDataset):
    """Bags held in memory (synthetic data, tests, classic MIL benchmarks).

    Args:
        features: one ``(n_i, d)`` tensor per bag (converted to float32; every ``n_i >= 1``).
        labels: one int label per bag, in ``[0, num_classes)``.
        bag_ids: unique ids (default ``"0", "1", ...``).
        groups: patient/case id per bag (default: the bag id).
        class_names: names of the classes; its length sets ``num_classes`` (default ``max(labels)+1``
            classes named ``"0", "1", ...``).
        coords: optional ``(n_i, 2)`` coordinates per bag.
    """

    def __init__(
        self,
        features: Sequence[Tensor],
        labels: Sequence[int],
        bag_ids: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        coords: Sequence[Tensor | None] | None = None,
    ) -> None:
        n = len(features)
        if len(labels) != n:
            raise ValueError(f"got {n} feature tensors but {len(labels)} labels; give one label per bag")
        if n == 0:
            raise ValueError("InMemoryBags needs at least one bag")
        feats: list[Tensor] = []
        dims = set()
        for i, f in enumerate(features):
            f = torch.as_tensor(f)
            if f.dim() == 3 and f.shape[0] == 1:
                f = f[0]
            if f.dim() != 2:
                raise ValueError(f"bag {i} has features of shape {tuple(f.shape)}; expected (n, d)")
            dims.add(int(f.shape[1]))
            feats.append(f.to(torch.float32))
        if len(dims) != 1:
            raise ValueError(f"bags have different feature dims {sorted(dims)}; use one feature extractor")
        ids = [str(i) for i in range(n)] if bag_ids is None else [str(b) for b in bag_ids]
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} bag_ids for {n} bags")
        if len(set(ids)) != n:
            dup = sorted({b for b in ids if ids.count(b) > 1})
            raise ValueError(f"bag_ids must be unique; duplicated: {dup[:10]}")
        empty = [ids[i] for i, f in enumerate(feats) if f.shape[0] == 0]
        if empty:
            raise ValueError(f"{len(empty)} bag(s) have 0 instances: {empty[:10]}; remove them")
        grp = list(ids) if groups is None else [str(g) for g in groups]
        if len(grp) != n:
            raise ValueError(f"got {len(grp)} groups for {n} bags")
        labs = [int(y) for y in labels]
        if class_names is None:
            if min(labs) < 0:
                raise ValueError(f"labels must be >= 0, got {min(labs)}")
            names = [str(c) for c in range(max(labs) + 1)]
        else:
            names = [str(c) for c in class_names]
        bad = [y for y in labs if not 0 <= y < len(names)]
        if bad:
            raise ValueError(
                f"labels {sorted(set(bad))[:10]} are outside [0, {len(names)}) given {len(names)} class names"
            )
        crd: list[Tensor | None] = [None] * n
        if coords is not None:
            if len(coords) != n:
                raise ValueError(f"got {len(coords)} coords for {n} bags")
            for i, c in enumerate(coords):
                if c is None:
                    continue
                c = torch.as_tensor(c)
                if c.dim() == 3 and c.shape[0] == 1:
                    c = c[0]
                if tuple(c.shape) != (feats[i].shape[0], 2):
                    raise ValueError(
                        f"bag {ids[i]!r}: coords of shape {tuple(c.shape)} do not match "
                        f"{feats[i].shape[0]} instances; expected ({feats[i].shape[0]}, 2)"
                    )
                crd[i] = c
        self._features = feats
        self._labels = labs
        self._ids = ids
        self._groups = grp
        self._coords = crd
        self._class_names = names
        self._dim = dims.pop()

    def __len__(self) -> int:
        return len(self._features)

    def _get(self, index: int) -> Bag:
        return Bag(
            features=self._features[index],
            label=self._labels[index],
            bag_id=self._ids[index],
            coords=self._coords[index],
            group=self._groups[index],
        )

    def _select(self, indices: list[int]) -> None:
        self._features = [self._features[i] for i in indices]
        self._labels = [self._labels[i] for i in indices]
        self._ids = [self._ids[i] for i in indices]
        self._groups = [self._groups[i] for i in indices]
        self._coords = [self._coords[i] for i in indices]

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    @property
    def bag_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def groups(self) -> list[str]:
        return list(self._groups)

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def feature_dim(self) -> int:
        return self._dim

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def num_instances(self) -> list[int]:
        """Number of instances per bag."""
        return [int(f.shape[0]) for f in self._features]


def feature_mean_std(dataset: Dataset, indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation over all instances of the given bags.

    Compute it on the training bags only, then ``dataset.with_transform(Standardize(mean, std))``.

    Args:
        dataset: a bag dataset.
        indices: bags to use (default: all).

    Returns:
        ``mean (d,)`` and ``std (d,)``, float32 (accumulated in float64).
    """
    idx: Any = range(len(dataset)) if indices is None else indices  # type: ignore[arg-type]
    total = 0
    s: Tensor | None = None
    ss: Tensor | None = None
    for i in idx:
        f = dataset[int(i)].features.to(torch.float64)
        s = f.sum(0) if s is None else s + f.sum(0)
        ss = (f * f).sum(0) if ss is None else ss + (f * f).sum(0)
        total += f.shape[0]
    if s is None or ss is None or total == 0:
        raise ValueError("feature_mean_std needs at least one non-empty bag")
    mean = s / total
    var = (ss / total - mean * mean).clamp_min(0.0)
    return mean.to(torch.float32), var.sqrt().to(torch.float32)
