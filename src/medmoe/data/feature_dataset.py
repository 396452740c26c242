"""The bag dataset of a TRIDENT/CLAM feature folder plus a labels CSV: :class:`FeatureFolderBags`.

The feature files are read by :mod:`~medmoe.data.feature_files` (layout, header checks, one file per
slide) and the CSV by :mod:`~medmoe.data.label_table` (classes with ``label``, survival with ``time_col``,
multi-label with ``label_cols``). This module joins the two: each CSV row meets its slide's file, slides
become bags (one per slide, or one per patient with ``patient_mode='concat'``), and bags are read when
they are asked for.

Bags are read lazily in ``__getitem__``: a 1,000-slide cohort is never fully loaded. At construction
only the labels CSV and the folder listing are read, plus, with ``check_shapes=True`` (default), the
shape metadata of each file (the ``features`` dataset header for ``.h5``, a memory-mapped load for
``.pt``), which is what lets empty bags be skipped and mixed feature dims be reported up front.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..errors import InputError
from .bags import Bag, BagDataset
from .feature_files import (
    feature_file_shape,
    feature_files,
    match_feature_files,
    read_feature_file,
    trident_features_dir,
)
from .label_table import LabelTable, format_ids, label_kind, read_label_table
from .splits import Split, split_from_column

__all__ = ["FeatureFolderBags"]


@dataclass
class _Entry:
    bag_id: str
    slide_ids: list[str]
    paths: list[Path]
    label: int
    group: str
    split: str | None


class FeatureFolderBags(BagDataset):
    """Bags from a TRIDENT/CLAM feature folder and a labels CSV (see the module docstring; the files are
    described in :mod:`~medmoe.data.feature_files`, the CSV kinds in :mod:`~medmoe.data.label_table`).

    Args:
        features_dir: folder holding ``<slide_id>.h5`` / ``<slide_id>.pt`` files.
        labels_csv: CSV with ``slide_id``, ``label`` and optionally ``case_id``, ``split``.
        patient_mode: ``'separate'`` = one bag per slide (group = ``case_id`` when given);
            ``'concat'`` = one bag per ``case_id``, concatenating the patches of all its slides
            (early fusion; needs ``case_id``; all slides of a case must share label and split).
        cache_in_memory: keep bags in memory after their first read (per process: every DataLoader
            worker holds its own cache).
        nonfinite: ``'error'`` raises a ValueError naming the slide when its features hold NaN/inf;
            ``'zero'`` replaces them by 0 with a warning.
        label_map: optional ``{raw label: int}`` (e.g. to share one numbering between cohorts).
        check_shapes: read every file's shape metadata at construction, to skip empty bags (with a
            warning) and raise on mixed feature dims before training starts. With False nothing is
            opened until ``__getitem__`` and those problems surface there.
        slide_col, label_col, case_col, split_col: CSV column names.
        time_col: follow-up time column: makes a survival dataset (see :mod:`~medmoe.data.label_table`).
        event_col: event column of a survival CSV (1 = observed, 0 = censored); when the CSV lacks it
            but has ``censorship``, events are ``1 - censorship``.
        label_cols: several 0/1 columns: makes a multi-label dataset (see :mod:`~medmoe.data.label_table`).
        class_names: the classes of a trained model (its checkpoint's ``class_names``): labels are mapped
            through them, so an external cohort holding only some classes keeps the model's numbering. A
            value the model does not know, or numbers against named classes (or the reverse), raise.

    Warns:
        UserWarning: CSV slides without a feature file, feature files without a CSV row, empty bags
            (all skipped, listing up to 10 ids and the count).

    Raises:
        ValueError / FeatureFileError: bad CSV, unreadable file (named), mixed feature dims, no bags.
    """

    def __init__(
        self,
        features_dir: str | os.PathLike,
        labels_csv: str | os.PathLike,
        patient_mode: Literal["separate", "concat"] = "separate",
        cache_in_memory: bool = False,
        nonfinite: Literal["error", "zero"] = "error",
        label_map: Mapping[str, int] | None = None,
        check_shapes: bool = True,
        slide_col: str = "slide_id",
        label_col: str = "label",
        case_col: str = "case_id",
        split_col: str = "split",
        time_col: str | None = None,
        event_col: str = "event",
        label_cols: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        kind = label_kind(label_col, label_map, class_names, time_col, event_col, label_cols)
        if patient_mode not in ("separate", "concat"):
            raise ValueError(f"patient_mode must be 'separate' or 'concat', got {patient_mode!r}")
        if nonfinite not in ("error", "zero"):
            raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
        self.features_dir = Path(features_dir)
        self.labels_csv = Path(labels_csv)
        self.time_col = time_col
        self.patient_mode = patient_mode
        self.cache_in_memory = cache_in_memory
        self.nonfinite = nonfinite
        self._cache: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._dim: int | None = None
        self._shapes: dict[str, tuple[int, int]] = {}

        from .file_checks import require_folder

        require_folder(self.features_dir, "feature folder")
        self.features_dir = trident_features_dir(self.features_dir)
        table = read_label_table(
            self.labels_csv, kind, slide_col=slide_col, case_col=case_col, split_col=split_col
        )
        self._class_names = table.class_names
        matched = self._match_files(table)
        keep = [i for i, s in enumerate(table.slide_ids) if s in matched]
        if check_shapes:
            keep = self._check_shapes(table.slide_ids, keep, matched)
        if patient_mode == "separate":
            entries = []
            for i in keep:
                sid = table.slide_ids[i]
                entries.append(
                    _Entry(
                        sid, [sid], [matched[sid]], table.labels[i], table.patient(i), table.splits[i] or None
                    )
                )
        else:
            entries = self._patient_entries(table, keep, matched, case_col)
        if not entries:
            raise ValueError(
                f"no usable bags: none of the {len(table.slide_ids)} slides in {self.labels_csv} has a non-empty "
                f"feature file in {self.features_dir}"
            )
        self._entries = entries
        if table.targets is not None:
            self._multilabel = {e.bag_id: table.targets[e.slide_ids[0]] for e in entries}
            self._label_names = table.label_names
        if time_col is not None:
            time_of = dict(zip(table.slide_ids, table.times))
            self._survival = {
                e.bag_id: (float(time_of[e.slide_ids[0]]), int(e.label))  # type: ignore[arg-type]
                for e in entries
            }

    # --- construction helpers ------------------------------------------------------------------
    def _match_files(self, table: LabelTable) -> dict[str, Path]:
        """``{slide id: feature file}`` of the CSV's slides; warns about slides without a file and files
        without a row (both skipped)."""
        files = self._scan_folder()
        matched, missing = match_feature_files(table.slide_ids, files)
        used_stems = {p.stem for p in matched.values()}
        extra = sorted(s for s in files if s not in used_stems)
        if missing:
            warnings.warn(
                f"{self.labels_csv}: slides without a feature file in {self.features_dir} (skipped) "
                f"{format_ids(missing)}",
                UserWarning,
                stacklevel=3,
            )
        if extra:
            warnings.warn(
                f"{self.features_dir}: feature files without a row in {self.labels_csv} (ignored) "
                f"{format_ids(extra)}",
                UserWarning,
                stacklevel=3,
            )
        return matched

    def _check_shapes(self, slide_ids: list[str], keep: list[int], matched: dict[str, Path]) -> list[int]:
        """Read every kept slide's ``(n, d)`` from its header: drops empty slides (with a warning), raises on
        mixed feature dims, and records the dim; returns the rows still kept."""
        empty: list[str] = []
        dims: dict[int, list[str]] = defaultdict(list)
        for i in keep:
            n, d = feature_file_shape(matched[slide_ids[i]])
            self._shapes[slide_ids[i]] = (n, d)
            if n == 0:
                empty.append(slide_ids[i])
            else:
                dims[d].append(slide_ids[i])
        if empty:
            warnings.warn(
                f"{self.features_dir}: slides with 0 patches (skipped) {format_ids(empty)}",
                UserWarning,
                stacklevel=3,
            )
            empty_set = set(empty)
            keep = [i for i in keep if slide_ids[i] not in empty_set]
        if len(dims) > 1:
            detail = "; ".join(f"dim {d}: {format_ids(ids, 5)}" for d, ids in sorted(dims.items()))
            raise ValueError(
                f"{self.features_dir}: slides have different feature dims ({detail}); all slides must "
                "come from one feature extractor: re-extract or remove the odd ones"
            )
        if dims:
            self._dim = next(iter(dims))
        return keep

    def _patient_entries(
        self, table: LabelTable, keep: list[int], matched: dict[str, Path], case_col: str
    ) -> list[_Entry]:
        """One bag per patient (``patient_mode='concat'``): its slides' files in CSV order."""
        if not table.has_cases:
            raise ValueError(
                f"patient_mode='concat' needs a {case_col!r} column in {self.labels_csv}; add it or use "
                "patient_mode='separate'"
            )
        by_case: dict[str, list[int]] = {}
        for i in keep:
            by_case.setdefault(table.patient(i), []).append(i)
        entries: list[_Entry] = []
        conflicts: list[str] = []
        for case, idx in by_case.items():
            labs = {(table.labels[i], table.times[i]) for i in idx}
            spl = {table.splits[i] for i in idx}
            if len(labs) > 1 or len(spl) > 1:
                conflicts.append(case)
                continue
            entries.append(
                _Entry(
                    case,
                    [table.slide_ids[i] for i in idx],
                    [matched[table.slide_ids[i]] for i in idx],
                    table.labels[idx[0]],
                    case,
                    table.splits[idx[0]] or None,
                )
            )
        if conflicts:
            raise InputError(
                f"{{patient_mode}}: cases whose slides have different labels, survival times or splits "
                f"{format_ids(conflicts)}; fix {self.labels_csv} or use {{patient_mode__other}}",
                patient_mode="concat",
                patient_mode__other="separate",
            )
        return entries

    def _scan_folder(self) -> dict[str, Path]:
        return feature_files(self.features_dir)

    # --- dataset protocol ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def _select(self, indices: list[int]) -> None:
        self._entries = [self._entries[i] for i in indices]

    def _read(self, entry: _Entry) -> tuple[Tensor, Tensor | None]:
        cached = self._cache.get(entry.bag_id)
        if cached is not None:
            return cached
        feats: list[Tensor] = []
        coords: list[Tensor | None] = []
        for sid, path in zip(entry.slide_ids, entry.paths):
            f, c = read_feature_file(path)  # type: ignore[misc]
            if f.shape[0] == 0:
                raise ValueError(
                    f"slide {sid!r} ({path}) has 0 patches; construct the dataset with check_shapes=True to "
                    "skip empty slides"
                )
            if self._dim is None:
                self._dim = int(f.shape[1])
            elif f.shape[1] != self._dim:
                raise ValueError(
                    f"slide {sid!r} ({path}) has feature dim {f.shape[1]} but the dataset has {self._dim}; all "
                    "slides must come from one feature extractor"
                )
            # One reduction instead of an element-wise isfinite pass (far cheaper: docs/performance.md): a
            # NaN/inf anywhere makes the sum non-finite; only then (or on float overflow) look closer.
            bad = None if bool(torch.isfinite(f.sum())) else ~torch.isfinite(f)
            if bad is not None and bad.any():
                if self.nonfinite == "error":
                    raise InputError(
                        f"slide {sid!r} ({path}) has {int(bad.sum())} NaN/inf feature values in "
                        f"{int(bad.any(1).sum())} patch(es); re-extract it, drop it from the labels CSV, or "
                        "pass {nonfinite}",
                        nonfinite="zero",
                    )
                warnings.warn(
                    f"slide {sid!r}: replaced {int(bad.sum())} NaN/inf feature values by 0",
                    UserWarning,
                    stacklevel=4,
                )
                f = torch.where(bad, torch.zeros((), dtype=f.dtype), f)
            feats.append(f)
            coords.append(c)
        x = feats[0] if len(feats) == 1 else torch.cat(feats, 0)
        crd: Tensor | None
        if all(c is not None for c in coords):
            crd = coords[0] if len(coords) == 1 else torch.cat(coords, 0)  # type: ignore[arg-type]
        else:
            crd = None
        if self.cache_in_memory:
            self._cache[entry.bag_id] = (x, crd)
        return x, crd

    def _get(self, index: int) -> Bag:
        entry = self._entries[index]
        x, crd = self._read(entry)
        return Bag(features=x, label=entry.label, bag_id=entry.bag_id, coords=crd, group=entry.group)

    # --- properties ----------------------------------------------------------------------------
    @property
    def labels(self) -> list[int]:
        return [e.label for e in self._entries]

    @property
    def bag_ids(self) -> list[str]:
        return [e.bag_id for e in self._entries]

    @property
    def groups(self) -> list[str]:
        return [e.group for e in self._entries]

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def feature_dim(self) -> int:
        """Feature dim ``d`` (read from the first file's metadata when not known yet)."""
        if self._dim is None:
            self._dim = feature_file_shape(self._entries[0].paths[0])[1]
        return self._dim

    @property
    def split_values(self) -> list[str | None]:
        """The CSV's ``split`` value per bag (None when absent)."""
        return [e.split for e in self._entries]

    def predefined_split(self) -> Split | None:
        """The :class:`~medmoe.data.splits.Split` given by the CSV's ``split`` column (None without one)."""
        values = self.split_values
        if all(v is None for v in values):
            return None
        return split_from_column(values, bag_ids=self.bag_ids)

    def slide_ids(self, index: int) -> list[str]:
        """Slide ids making up bag ``index`` (one in ``'separate'`` mode)."""
        return list(self._entries[index].slide_ids)

    def slide_paths(self, index: int) -> list[Path]:
        """Feature files making up bag ``index``."""
        return list(self._entries[index].paths)

    @property
    def num_instances(self) -> list[int]:
        """Patches per bag, from the files' shape metadata (read on first use when
        ``check_shapes=False``; no feature data is loaded)."""
        for e in self._entries:
            for sid, path in zip(e.slide_ids, e.paths):
                if sid not in self._shapes:
                    self._shapes[sid] = feature_file_shape(path)
        return [sum(self._shapes[s][0] for s in e.slide_ids) for e in self._entries]
