"""Patient-level, label-stratified k-fold splits, saved as JSON with bag ids and hashed for checkpoints.

Protocol of :func:`stratified_group_kfold` (``k`` folds, ``val_folds=1``):

* every group (patient / case) is assigned to exactly one of ``k`` folds, so all bags of a patient
  land in the same fold (no patient leaks between train, val and test);
* groups are stratified by their label (the majority label of their bags): within each class, groups
  are shuffled with ``seed``, sorted by size (largest first) and each one goes to the fold that holds
  the fewest bags of that class so far (ties broken at random) — every fold gets at least one group
  of each class, and bag counts per class are balanced;
* split ``i`` uses fold ``i`` as test, the next ``val_folds`` folds (cyclically) as validation, and the
  remaining ``k - 1 - val_folds`` folds as training. With ``k=5``: 60 / 20 / 20 %; with ``k=10``:
  80 / 10 / 10 %. ``val_folds=0`` gives an empty validation set (the classic Musk/Elephant protocol,
  10-fold CV repeated 5 times with seeds 0..4).

The same ``(labels, groups, k, seed)`` always gives the same splits; different seeds give different
splits. :func:`save_splits` writes bag ids (and indices) to JSON; :func:`split_hash` is the sha256 of
the canonical JSON of the folds, stored inside checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import random
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Split",
    "holdout_split",
    "load_splits",
    "multilabel_group_kfold",
    "save_splits",
    "split_from_column",
    "split_hash",
    "stratified_group_kfold",
]

logger = logging.getLogger(__name__)

_FORMAT = "medmoe.splits/v1"


@dataclass
class Split:
    """Indices of one fold's train / val / test bags (sorted ascending, disjoint).

    Attributes:
        train, val, test: bag indices into the dataset the split was made for.
        bag_ids: the bag ids of that dataset (indexed by the lists above), when known; they are what
            :func:`save_splits` writes, so a split can be re-applied to a re-ordered dataset.
    """

    train: list[int]
    val: list[int]
    test: list[int]
    bag_ids: list[str] | None = field(default=None, repr=False, compare=False)

    def ids(self, part: str) -> list[str]:
        """Bag ids of ``part`` (``'train'``, ``'val'`` or ``'test'``); needs ``bag_ids``."""
        if self.bag_ids is None:
            raise ValueError("this Split has no bag_ids; pass bag_ids= to stratified_group_kfold")
        return [self.bag_ids[i] for i in getattr(self, part)]


def _group_table(
    labels: Sequence[int], groups: Sequence[str]
) -> tuple[dict[str, list[int]], dict[str, int], list[str]]:
    """Bags per group, majority label per group, and groups in first-appearance order."""
    members: dict[str, list[int]] = defaultdict(list)
    order: list[str] = []
    for i, g in enumerate(groups):
        g = str(g)
        if g not in members:
            order.append(g)
        members[g].append(i)
    glabel: dict[str, int] = {}
    mixed: list[str] = []
    for g in order:
        counts = Counter(int(labels[i]) for i in members[g])
        # majority label, ties to the smallest label: deterministic
        best = max(sorted(counts), key=lambda c: counts[c])
        glabel[g] = best
        if len(counts) > 1:
            mixed.append(g)
    if mixed:
        logger.info(
            "%d group(s) hold bags of different labels (stratified by their majority label): %s",
            len(mixed),
            mixed[:10],
        )
    return members, glabel, order


def stratified_group_kfold(
    labels: Sequence[int],
    groups: Sequence[str] | None,
    k: int,
    seed: int = 0,
    *,
    val_folds: int = 1,
    bag_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Split]:
    """Patient-level stratified k-fold cross-validation splits (see the module docstring).

    Args:
        labels: one int label per bag.
        groups: one patient/case id per bag (bags of one group stay together); None = each bag alone.
        k: number of folds (>= 2; >= ``2 + val_folds`` when there is a validation set).
        seed: shuffling seed; the same seed gives the same splits.
        val_folds: folds used as validation in each split (0 = no validation set).
        bag_ids: optional bag ids, kept in each :class:`Split` for :func:`save_splits`.
        class_names: optional name of each label value, used only to name rare classes in errors.

    Returns:
        ``k`` splits; split ``i`` tests on fold ``i``.

    Raises:
        ValueError: when a class has fewer groups than ``k`` (lower ``k``) or arguments are inconsistent.

    Warns:
        UserWarning: when a class is absent from a split's train or val part (possible only when
            groups mix labels).
    """
    n = len(labels)
    groups, k = _check_fold_args(n, groups, k, val_folds, bag_ids)
    members, glabel, order = _group_table(labels, groups)
    by_class: dict[int, list[str]] = defaultdict(list)
    for g in order:
        by_class[glabel[g]].append(g)
    # groups holding at least one bag of each class (a mixed group counts for each of its labels)
    holders: dict[int, set[str]] = defaultdict(set)
    for i, g in enumerate(groups):
        holders[int(labels[i])].add(str(g))
    few = {c: len(gs) for c, gs in sorted(holders.items()) if len(gs) < k}
    if few:
        raise ValueError(_too_few_groups_message(few, holders, k, val_folds, class_names))

    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    fold_total = [0] * k
    for c in sorted(by_class):
        gs = list(by_class[c])
        rng.shuffle(gs)
        gs.sort(key=lambda g: len(members[g]), reverse=True)  # stable: shuffled order within a size
        fold_class = [0] * k
        for g in gs:
            size = len(members[g])
            # fewest bags of this class, then fewest bags overall, then random
            keys = [(fold_class[f], fold_total[f], rng.random()) for f in range(k)]
            f = min(range(k), key=lambda j: keys[j])
            fold_of[g] = f
            fold_class[f] += size
            fold_total[f] += size

    splits = _splits_from_folds(fold_of, members, k, val_folds, bag_ids)
    num_classes = max(int(y) for y in labels) + 1 if n else 0
    for i, split in enumerate(splits):
        _warn_missing_classes(split, labels, num_classes, i)
    return splits


def _too_few_groups_message(
    few: dict[int, int], holders: dict[int, set[str]], k: int, val_folds: int,
    class_names: Sequence[str] | None = None,
) -> str:
    """Why ``k`` stratified folds cannot be made, naming the rare classes and (some of) their groups.

    Lowering ``k`` is advised only when a usable ``k`` exists (at least ``2 + val_folds``); a class with
    fewer groups than that is more often a stray label value (a typo) than a real class."""
    floor = 2 + max(val_folds, 0)
    parts = []
    for c, m in few.items():
        names = sorted(holders[c])
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        label = f"class {c}" if not class_names or c >= len(class_names) else f"class {class_names[c]!r}"
        parts.append(f"{label}: {m} group(s) ({shown})")
    detail = "; ".join(parts)
    smallest = min(few.values())
    head = (f"cannot make {k} stratified folds: {detail} (groups = patients/cases). Every fold needs at "
            "least one group of each class; ")
    if smallest >= floor:
        return head + f"lower k to at most {smallest}, or merge/drop the rare class"
    return head + (f"no k >= {floor} works with so few: check those label values for typos, or merge/drop "
                   "the rare class")


def _check_fold_args(
    n: int, groups: Sequence[str] | None, k: int, val_folds: int, bag_ids: Sequence[str] | None
) -> tuple[list[str], int]:
    """Validated ``(groups, k)`` of a k-fold request over ``n`` bags (groups default to one per bag)."""
    groups = [str(i) for i in range(n)] if groups is None else list(groups)
    if len(groups) != n:
        raise ValueError(f"got {n} labels but {len(groups)} groups; give one group per bag")
    if bag_ids is not None and len(bag_ids) != n:
        raise ValueError(f"got {n} labels but {len(bag_ids)} bag_ids")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an int >= 2, got {k!r}") from None
    if k < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    if val_folds < 0 or k < 2 + val_folds:
        raise ValueError(
            f"k={k} folds cannot hold one test fold, {val_folds} validation fold(s) and a training part; "
            f"use k >= {2 + max(val_folds, 0)} or val_folds=0"
        )
    return groups, k


def _splits_from_folds(
    fold_of: dict[str, int], members: dict[str, list[int]], k: int, val_folds: int, bag_ids: Sequence[str] | None
) -> list[Split]:
    """Split ``i`` tests on fold ``i``, validates on the next ``val_folds`` folds, trains on the rest."""
    fold_bags: list[list[int]] = [[] for _ in range(k)]
    for g, f in fold_of.items():
        fold_bags[f].extend(members[g])
    ids = None if bag_ids is None else [str(b) for b in bag_ids]
    splits: list[Split] = []
    for i in range(k):
        val_f = [(i + 1 + j) % k for j in range(val_folds)]
        test = sorted(fold_bags[i])
        val = sorted(b for f in val_f for b in fold_bags[f])
        train = sorted(b for f in range(k) if f != i and f not in val_f for b in fold_bags[f])
        splits.append(Split(train=train, val=val, test=test, bag_ids=ids))
    return splits


def multilabel_group_kfold(
    targets: Sequence[Sequence[int]],
    groups: Sequence[str] | None,
    k: int,
    seed: int = 0,
    *,
    val_folds: int = 1,
    bag_ids: Sequence[str] | None = None,
) -> list[Split]:
    """Patient-level k-fold splits stratified on several yes/no labels at once (iterative stratification,
    Sechidis, Tsoumakas & Vlahavas, ECML 2011), for multi-label bags.

    A group (patient) has the labels any of its bags has. Until every group with a label is placed: take
    the label with the fewest bags still to place, shuffle (``seed``) its groups and give each to the
    fold that still wants the most bags of that label (then the most bags overall, then at random); a
    fold wants ``1/k`` of each label's bags and of all bags. Groups without any label fill the folds that
    want the most bags. Splits are built from the folds as in :func:`stratified_group_kfold`.

    Args:
        targets: ``(N, L)`` 0/1 values per bag (nested sequences, array or tensor).
        groups, k, seed, val_folds, bag_ids: as :func:`stratified_group_kfold`.

    Warns:
        UserWarning: a label present in fewer than ``k`` groups (some test folds cannot score it).
    """
    rows = [[int(v) for v in r] for r in (targets.tolist() if hasattr(targets, "tolist") else targets)]
    n = len(rows)
    groups, k = _check_fold_args(n, groups, k, val_folds, bag_ids)
    width = len(rows[0]) if rows else 0
    if any(len(r) != width for r in rows) or any(v not in (0, 1) for r in rows for v in r):
        raise ValueError("multi-label targets must be an (N, L) table of 0/1 values")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[str(g)].append(i)
    order = list(members)
    glabels = {g: {j for i in members[g] for j in range(width) if rows[i][j]} for g in order}
    rare = [j for j in range(width) if sum(j in glabels[g] for g in order) < k]
    if rare:
        warnings.warn(
            f"label(s) {rare} are present in fewer than k={k} patients; some test folds cannot score them "
            "(their AUROC is left out of the macro mean there)",
            UserWarning,
            stacklevel=2,
        )
    rng = random.Random(seed)
    size = {g: len(members[g]) for g in order}
    want_label = [[sum(size[g] for g in order if j in glabels[g]) / k for j in range(width)] for _ in range(k)]
    want_total = [n / k] * k
    fold_of: dict[str, int] = {}
    left = [g for g in order if glabels[g]]
    while left:
        counts = {j: sum(size[g] for g in left if j in glabels[g]) for j in range(width)}
        label = min((j for j in counts if counts[j] > 0), key=lambda j: (counts[j], j))
        chosen = [g for g in left if label in glabels[g]]
        rng.shuffle(chosen)
        for g in chosen:
            f = max(range(k), key=lambda m: (want_label[m][label], want_total[m], rng.random()))
            fold_of[g] = f
            for j in glabels[g]:
                want_label[f][j] -= size[g]
            want_total[f] -= size[g]
        placed = set(chosen)
        left = [g for g in left if g not in placed]
    empty = [g for g in order if not glabels[g]]
    rng.shuffle(empty)
    for g in empty:
        f = max(range(k), key=lambda m: (want_total[m], rng.random()))
        fold_of[g] = f
        want_total[f] -= size[g]
    return _splits_from_folds(fold_of, members, k, val_folds, bag_ids)


def _warn_missing_classes(split: Split, labels: Sequence[int], num_classes: int, fold: int) -> None:
    for part in ("train", "val"):
        idx = getattr(split, part)
        if part == "val" and not idx:
            continue
        present = {int(labels[j]) for j in idx}
        missing = [c for c in range(num_classes) if c not in present and c in set(map(int, labels))]
        if missing:
            warnings.warn(
                f"split {fold}: class(es) {missing} absent from the {part} part; metrics for them will be "
                "undefined. Use fewer folds or check patients whose bags have different labels",
                UserWarning,
                stacklevel=3,
            )


def holdout_split(items: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded random train / validation split of ``items`` (e.g. segmentation cases).

    ``round(len(items) * val_fraction)`` items (at least one) go to validation after a shuffle with
    ``random.Random(seed)``; with fewer than two items or ``val_fraction <= 0`` everything is training.

    Returns:
        ``(train, val)``: the items in their shuffled order.
    """
    if len(items) < 2 or val_fraction <= 0:
        return list(items), []
    order = list(items)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction))
    return order[n_val:], order[:n_val]


def split_from_column(values: Sequence[str | None], bag_ids: Sequence[str] | None = None) -> Split:
    """A single :class:`Split` from a per-bag ``split`` column (``train``/``val``/``test``).

    Accepted spellings (case-insensitive): ``train``/``training``; ``val``/``valid``/``validation``;
    ``test``/``testing``. Empty values raise.
    """
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    alias = {
        "train": "train",
        "training": "train",
        "val": "val",
        "valid": "val",
        "validation": "val",
        "test": "test",
        "testing": "test",
    }
    bad: list[str] = []
    for i, v in enumerate(values):
        key = alias.get(str(v).strip().lower()) if v is not None else None
        if key is None:
            bad.append(f"{i}:{v!r}")
            continue
        parts[key].append(i)
    if bad:
        raise ValueError(
            f"split column has values other than train/val/test for {len(bad)} bag(s) (index:value) "
            f"{bad[:10]}; fix the labels CSV"
        )
    return Split(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        bag_ids=None if bag_ids is None else [str(b) for b in bag_ids],
    )


def _has_ids(splits: Sequence[Split], bag_ids: Sequence[str] | None) -> bool:
    return bag_ids is not None or (len(splits) > 0 and all(s.bag_ids is not None for s in splits))


def _payload(splits: Sequence[Split], bag_ids: Sequence[str] | None) -> dict[str, Any]:
    """Canonical content: per fold, bag ids of train/val/test when known, else indices."""
    by_id = _has_ids(splits, bag_ids)
    folds = []
    for s in splits:
        ids = (list(bag_ids) if bag_ids is not None else s.bag_ids) if by_id else None
        if ids is not None:
            folds.append({p: [str(ids[i]) for i in getattr(s, p)] for p in ("train", "val", "test")})
        else:
            folds.append({p: [int(i) for i in getattr(s, p)] for p in ("train", "val", "test")})
    return {"by": "bag_id" if by_id else "index", "folds": folds}


def split_hash(splits: Sequence[Split], bag_ids: Sequence[str] | None = None) -> str:
    """sha256 (hex) of the canonical JSON of the folds (bag ids when known, else indices).

    Stable across processes and platforms; equal for splits and their :func:`save_splits` /
    :func:`load_splits` round trip. Store it in checkpoints to detect a changed data split.
    """
    payload = _payload(splits, bag_ids)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_splits(
    splits: Sequence[Split], path: str | os.PathLike, bag_ids: Sequence[str] | None = None
) -> Path:
    """Write splits to JSON (atomically: temp file + rename).

    The file holds, per fold, the bag ids of train/val/test (from ``bag_ids`` or each split's
    ``bag_ids``) and the indices, plus the :func:`split_hash`. Without any bag ids only indices are
    written (a warning says so): such a file is tied to the dataset's order.
    """
    path = Path(path)
    splits = list(splits)
    if not _has_ids(splits, bag_ids):
        warnings.warn(
            "saving splits without bag ids: the file only holds indices and breaks if the dataset order "
            "changes; pass bag_ids=dataset.bag_ids",
            UserWarning,
            stacklevel=2,
        )
    payload = _payload(splits, bag_ids)
    doc = {
        "format": _FORMAT,
        "by": payload["by"],
        "num_folds": len(splits),
        "hash": split_hash(splits, bag_ids),
        "folds": [
            {**f, "indices": {p: [int(i) for i in getattr(s, p)] for p in ("train", "val", "test")}}
            for f, s in zip(payload["folds"], splits)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_splits(path: str | os.PathLike, bag_ids: Sequence[str] | None = None) -> list[Split]:
    """Read splits written by :func:`save_splits`.

    Args:
        path: the JSON file.
        bag_ids: the ids of the dataset to apply the splits to. When given and the file holds ids,
            indices are recomputed from the ids (the dataset may be re-ordered; every id in the file
            must exist in ``bag_ids``). When omitted, the stored indices are used.

    Raises:
        ValueError: unreadable file, wrong format, or ids missing from ``bag_ids``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"split file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"split file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or "folds" not in doc:
        raise ValueError(f"{str(path)!r} is not a medmoe split file (expected format {_FORMAT!r})")
    by_id = doc.get("by") == "bag_id"
    splits: list[Split] = []
    if by_id and bag_ids is not None:
        ids = [str(b) for b in bag_ids]
        pos = {b: i for i, b in enumerate(ids)}
        missing: list[str] = []
        for f in doc["folds"]:
            parts = {}
            for p in ("train", "val", "test"):
                missing.extend(b for b in f[p] if b not in pos)
                parts[p] = sorted(pos[b] for b in f[p] if b in pos)
            splits.append(Split(**parts, bag_ids=ids))
        if missing:
            raise ValueError(
                f"{len(set(missing))} bag id(s) in {str(path)!r} are not in the dataset, e.g. "
                f"{sorted(set(missing))[:10]}; the split file belongs to another cohort"
            )
        return splits
    for f in doc["folds"]:
        idx = f.get("indices") if by_id else {p: f[p] for p in ("train", "val", "test")}
        if idx is None:
            raise ValueError(f"{str(path)!r} holds no indices; pass bag_ids= to map its bag ids")
        stored_ids: list[str] | None = None
        if by_id:
            n = 1 + max([i for p in ("train", "val", "test") for i in idx[p]], default=-1)
            table: list[str | None] = [None] * n
            for p in ("train", "val", "test"):
                for i, b in zip(idx[p], f[p]):
                    table[int(i)] = str(b)
            stored_ids = table if all(t is not None for t in table) else None  # type: ignore[assignment]
        splits.append(
            Split(
                train=[int(i) for i in idx["train"]],
                val=[int(i) for i in idx["val"]],
                test=[int(i) for i in idx["test"]],
                bag_ids=stored_ids,
            )
        )
    return splits
