"""Labels CSVs: one parser for the three kinds (classes, survival, multi-label) and the checked table it returns.

Every kind shares one layout: a ``slide_id`` column (required), ``case_id`` (the patient, optional) and
``split`` (``train``/``val``/``test``, optional). :func:`read_label_table` reads the CSV, finds the
columns, checks the shared parts (empty or duplicated slide ids, rows without a label) with one set of
messages, and hands each row's raw label to the kind:

* :class:`ClassLabels` — a ``label`` column. String labels are mapped to ints in sorted order
  (``class_names`` keeps the strings); integer labels are used as they are (``num_classes = max + 1``;
  they must run 0..C-1 without gaps), unless ``label_map`` is given. A column mixing numbers and names is
  refused, naming the odd values and their lines. Given a trained model's ``class_names`` (evaluation,
  prediction), labels are mapped through those instead.
* :class:`SurvivalLabels` — a follow-up time column and an event column (``event``: 1 = event observed,
  0 = censored), or CLAM/PORPOISE's ``censorship`` column (1 = censored) when there is no event column; no
  ``label`` column is needed. The labels are then the event indicators (classes ``censored`` / ``event``,
  so folds are stratified by event) and the times are in :attr:`LabelTable.times`.
* :class:`MultiLabels` — one 0/1 column per label (e.g. ``tumor``, ``necrosis``, ``inflammation``), no
  ``label`` column needed. The 0/1 rows are in :attr:`LabelTable.targets`; the class labels are the label
  combinations (``"tumor+necrosis"``, ``"(none)"``), so folds are stratified by them.

:func:`label_kind` turns :class:`~medmoe.data.FeatureFolderBags`' label arguments into one of the three.
``pandas`` (the ``mil`` extra) is imported only when a CSV is read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "TIME_COLUMNS",
    "ClassLabels",
    "LabelKind",
    "LabelTable",
    "MultiLabels",
    "SurvivalLabels",
    "format_ids",
    "label_kind",
    "parse_class_labels",
    "read_label_table",
    "survival_time_column",
]

#: Follow-up time columns looked for (in this order) when a survival labels CSV's time column is not named.
TIME_COLUMNS = ("time", "survival_months", "survival_time", "os_months", "months", "days")


def survival_time_column(labels: str | Path, time_col: str | None) -> str:
    """``time_col``, or the first of :data:`TIME_COLUMNS` in the header of the ``labels`` CSV.

    Raises:
        medmoe.errors.InputError: the CSV cannot be read, or names none of :data:`TIME_COLUMNS` (the message
            names the ``time_col`` setting, ``--time-col`` on the command line).
    """
    if time_col:
        return time_col
    import csv

    from ..errors import SETTING, InputError

    try:
        with open(labels, newline="") as fh:
            header = [c.strip() for c in next(csv.reader(fh), [])]
    except OSError as err:
        raise InputError(f"cannot read labels CSV {labels}: {err}") from err
    found = next((c for c in TIME_COLUMNS if c in header), None)
    if found is None:
        raise InputError(f"{labels} has no follow-up time column ({', '.join(TIME_COLUMNS)}); its columns are "
                         f"{header}; name yours with {{time_col}}", time_col=SETTING)
    return found


def format_ids(ids: Sequence[str], limit: int = 10) -> str:
    """``'3: a, b, c'``: how many ids and the first ``limit`` of them (``' (+N more)'`` beyond), for messages."""
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return f"{len(ids)}: {shown}{more}"


@dataclass(frozen=True)
class LabelTable:
    """The checked rows of a labels CSV, one per slide, in CSV order.

    Attributes:
        path: the CSV.
        slide_ids: the ``slide_id`` of each row (stripped, non-empty, unique).
        labels: the class of each row, an int in ``[0, len(class_names))``: the class (:class:`ClassLabels`),
            the event indicator (:class:`SurvivalLabels`: 0 censored, 1 event) or the label combination
            (:class:`MultiLabels`).
        class_names: the name of each class.
        cases: the ``case_id`` (patient) of each row, ``''`` where the CSV has none.
        splits: the ``split`` of each row, ``''`` where the CSV has none.
        times: the follow-up time of each row (survival), else ``None`` each.
        targets: ``{slide id: (0/1 per label)}`` (multi-label), else None.
        label_names: the multi-label columns, in order (empty for the other kinds).
    """

    path: Path
    slide_ids: list[str]
    labels: list[int]
    class_names: list[str]
    cases: list[str]
    splits: list[str]
    times: list[float | None]
    targets: dict[str, tuple[int, ...]] | None = None
    label_names: tuple[str, ...] = ()

    @property
    def has_cases(self) -> bool:
        """Whether any row names its patient (``case_id``)."""
        return any(self.cases)

    def patient(self, row: int) -> str:
        """The patient of ``row``: its ``case_id``, or its slide id when the CSV names none."""
        return self.cases[row] or self.slide_ids[row]


class LabelKind(Protocol):
    """What one kind of labels CSV adds to the shared parser (:func:`read_label_table`)."""

    def label_column(self, df: Any, csv: Path, slide_col: str) -> str:
        """The column holding each row's raw label; it may check columns of its own and add this one to ``df``."""
        ...

    def columns(self, label_col: str) -> tuple[str, ...]:
        """The columns besides ``slide_id`` that must exist (``label_col`` first)."""
        ...

    def requirement(self, slide_col: str) -> str:
        """The required columns as the missing-column message names them (``"'slide_id', 'label'"``)."""
        ...

    def finish(self, table: LabelTable, raw: list[str], label_col: str, df: Any) -> LabelTable:
        """``table`` (shared columns checked; labels still empty) with the labels parsed from ``raw`` (the
        stripped values of ``label_col``, one per row)."""
        ...


# ------------------------------------------------------------------------------------------------
# the shared parser
# ------------------------------------------------------------------------------------------------
def _read_csv(csv: Path) -> Any:
    """The CSV as a ``pandas.DataFrame`` of strings (no NA conversion), column names stripped."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover
        raise ImportError("reading the labels CSV needs pandas: pip install 'medmoe[mil]'") from e
    from .file_checks import require_file

    require_file(csv, "labels CSV")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"labels CSV {csv} is empty; it needs a header (slide_id,label) and one row per slide"
        ) from None
    except Exception as e:
        raise ValueError(f"cannot read labels CSV {csv}: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df


def read_label_table(
    csv: str | os.PathLike,
    kind: LabelKind,
    *,
    slide_col: str = "slide_id",
    case_col: str = "case_id",
    split_col: str = "split",
) -> LabelTable:
    """Read and check a labels CSV of any kind.

    Args:
        csv: the CSV file.
        kind: :class:`ClassLabels`, :class:`SurvivalLabels` or :class:`MultiLabels` (see :func:`label_kind`).
        slide_col, case_col, split_col: column names of the slide id, the patient and the split.

    Raises:
        ValueError: the file is missing, empty or unreadable; a required column is missing (the message lists
            the columns it has); slide ids are empty or duplicated; rows lack a label; or the kind refuses a
            value (each message names the rows).
    """
    csv = Path(csv)
    df = _read_csv(csv)
    label_col = kind.label_column(df, csv, slide_col)
    need = [c for c in (slide_col, *kind.columns(label_col)) if c not in df.columns]
    if need:
        raise ValueError(
            f"labels CSV {csv} lacks column(s) {need}; it has {list(df.columns)}. "
            f"Required: {kind.requirement(slide_col)}; optional: {case_col!r}, {split_col!r}"
        )
    if len(df) == 0:
        raise ValueError(f"labels CSV {csv} has a header but no rows; add one row per slide")
    slide_ids = [s.strip() for s in df[slide_col].tolist()]
    raw = [s.strip() for s in df[label_col].tolist()]
    empty_id = [i for i, s in enumerate(slide_ids) if not s]
    if empty_id:
        raise ValueError(f"{csv}: rows {empty_id[:10]} have an empty {slide_col!r}")
    no_label = [slide_ids[i] for i, r in enumerate(raw) if r == "" or r.lower() in ("nan", "na", "none")]
    if no_label:
        raise ValueError(
            f"{csv}: slides without a label (column {label_col!r}) {format_ids(no_label)}; fill them in "
            "or drop the rows"
        )
    seen: set[str] = set()
    dup = sorted({s for s in slide_ids if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
    if dup:
        raise ValueError(f"{csv}: duplicated {slide_col!r} values {format_ids(dup)}")
    cases = [s.strip() for s in df[case_col].tolist()] if case_col in df.columns else [""] * len(df)
    splits = [s.strip() for s in df[split_col].tolist()] if split_col in df.columns else [""] * len(df)
    table = LabelTable(
        path=csv,
        slide_ids=slide_ids,
        labels=[],
        class_names=[],
        cases=cases,
        splits=splits,
        times=[None] * len(df),
    )
    return kind.finish(table, raw, label_col, df)


def label_kind(
    label_col: str = "label",
    label_map: Mapping[str, int] | None = None,
    class_names: Sequence[str] | None = None,
    time_col: str | None = None,
    event_col: str = "event",
    label_cols: Sequence[str] | str | None = None,
) -> ClassLabels | SurvivalLabels | MultiLabels:
    """The kind of labels CSV that :class:`~medmoe.data.FeatureFolderBags`' arguments ask for: multi-label
    with ``label_cols``, survival with ``time_col``, else classes.

    Raises:
        ValueError: arguments of two kinds at once (``class_names`` with ``label_map``, ``time_col`` or
            ``label_cols``; ``label_cols`` with ``time_col`` or ``label_map``; ``time_col`` with ``label_map``)
            or ``label_cols`` that are not distinct names.
    """
    if class_names is not None and (label_map is not None or time_col is not None or label_cols is not None):
        raise ValueError(
            "class_names (a trained model's classes) cannot be combined with label_map, time_col "
            "or label_cols"
        )
    if label_cols is not None:
        cols = [str(c).strip() for c in ([label_cols] if isinstance(label_cols, str) else label_cols)]
        if not cols or len(set(cols)) != len(cols):
            raise ValueError(f"label_cols must name one or more distinct 0/1 columns, got {cols}")
        if time_col is not None or label_map is not None:
            raise ValueError("label_cols (multi-label) cannot be combined with time_col or label_map")
        return MultiLabels(tuple(cols))
    if time_col is not None:
        if label_map is not None:
            raise ValueError(
                "label_map numbers class labels; a survival CSV (time_col) has events, not classes"
            )
        return SurvivalLabels(time_col, event_col)
    return ClassLabels(label_col, label_map, None if class_names is None else tuple(class_names))


def _zero_one(raw: str) -> float:
    """``'1'``, ``'0.0'`` -> 1.0, 0.0; anything else -> NaN (or the number, which the caller refuses)."""
    try:
        return float(str(raw).strip())
    except ValueError:
        return float("nan")


# ------------------------------------------------------------------------------------------------
# classes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassLabels:
    """A ``label`` column of class names or class numbers (see the module docstring).

    Args:
        label_col: the label column.
        label_map: optional ``{raw label: int}`` (e.g. to share one numbering between cohorts).
        class_names: the classes of a trained model: labels are mapped through them (a value the model does
            not know, or numbers against named classes or the reverse, raise).
    """

    label_col: str = "label"
    label_map: Mapping[str, int] | None = None
    class_names: tuple[str, ...] | None = None

    def label_column(self, df: Any, csv: Path, slide_col: str) -> str:
        return self.label_col

    def columns(self, label_col: str) -> tuple[str, ...]:
        return (label_col,)

    def requirement(self, slide_col: str) -> str:
        return ", ".join(map(repr, (slide_col, self.label_col)))

    def finish(self, table: LabelTable, raw: list[str], label_col: str, df: Any) -> LabelTable:
        labels, names = parse_class_labels(raw, self.label_map, table.path, table.slide_ids, self.class_names)
        return dataclasses.replace(table, labels=labels, class_names=names)


def _as_int(s: str) -> int | None:
    """``'3'``, ``'3.0'`` -> 3; anything else (``'tumor'``, ``'2.5'``) -> None."""
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def _where(values: Sequence[str], raw: Sequence[str], slide_ids: Sequence[str] | None) -> str:
    """``'7' (line 5: slide_004), 'banana' (line 9: slide_008)``: each odd value with its first rows
    (CSV line numbers, the header being line 1)."""
    parts = []
    for v in list(values)[:10]:
        rows = [i for i, r in enumerate(raw) if r == v]
        shown = ", ".join(f"line {i + 2}" + (f": {slide_ids[i]}" if slide_ids else "") for i in rows[:3])
        more = f" +{len(rows) - 3} more" if len(rows) > 3 else ""
        parts.append(f"{v!r} ({shown}{more})")
    extra = f" and {len(values) - 10} more" if len(values) > 10 else ""
    return ", ".join(parts) + extra


def _map_to_classes(
    raw: list[str], class_names: Sequence[str], csv: Path, slide_ids: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    """Labels mapped through a trained model's ``class_names``: by name, or a number to the class whose name
    is the same number (``'1.0'`` -> ``'1'``). Numbers against named classes (or names against numbered ones)
    are ambiguous and raise, as does any value the model does not know."""
    names = [str(c) for c in class_names]
    index = {n: i for i, n in enumerate(names)}
    numeric = {_as_int(n): i for i, n in enumerate(names) if _as_int(n) is not None}
    out: list[int] = []
    unknown: list[str] = []
    for r in raw:
        if r in index:
            out.append(index[r])
        elif _as_int(r) is not None and _as_int(r) in numeric:
            out.append(numeric[_as_int(r)])  # type: ignore[index]
        else:
            out.append(-1)
            if r not in unknown:
                unknown.append(r)
    if not unknown:
        return out, names
    shown = ", ".join(map(repr, names))
    if all(_as_int(u) is not None for u in unknown) and not numeric:
        raise ValueError(
            f"{csv}: labels are numbers ({_where(unknown, raw, slide_ids)}) but the checkpoint's classes are named "
            f"({shown}); a number could mean any of them, so write the class names in the label column"
        )
    if all(_as_int(u) is None for u in unknown) and len(numeric) == len(names):
        raise ValueError(
            f"{csv}: labels are names ({_where(unknown, raw, slide_ids)}) but the checkpoint was trained on numbered "
            f"classes ({shown}); write the class numbers in the label column"
        )
    raise ValueError(
        f"{csv}: label values the checkpoint does not know: {_where(unknown, raw, slide_ids)}; its classes are "
        f"{shown}; fix or drop those rows"
    )


def parse_class_labels(
    raw: list[str],
    label_map: Mapping[str, int] | None,
    csv: Path,
    slide_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[list[int], list[str]]:
    """Class labels as ints plus the class names (see the module docstring).

    Args:
        raw: the stripped label of each row.
        label_map: optional ``{raw label: int}``.
        csv: the CSV (named in messages).
        slide_ids: the slide id of each row (named in messages), or None.
        class_names: a trained model's classes: the labels are mapped through them.

    Raises:
        ValueError: no rows; labels outside ``label_map`` or unknown to ``class_names``; numbers mixed with
            names; negative class numbers or numbers with gaps (each message names the values and lines).
    """
    if not raw:
        raise ValueError(f"labels CSV {csv} has a header but no rows; add one row per slide")
    if class_names is not None:
        return _map_to_classes(raw, class_names, csv, slide_ids)
    if label_map is not None:
        lm = {str(k).strip(): int(v) for k, v in label_map.items()}
        unknown = sorted({r for r in raw if r not in lm})
        if unknown:
            raise ValueError(
                f"{csv}: labels not in label_map: {_where(unknown, raw, slide_ids)}; add them to label_map"
            )
        num = max(lm.values()) + 1
        names = [str(c) for c in range(num)]
        for k, v in sorted(lm.items(), key=lambda kv: kv[0], reverse=True):
            names[v] = k
        return [lm[r] for r in raw], names

    ints = [_as_int(r) for r in raw]
    numbers = sorted({r for r, i in zip(raw, ints) if i is not None})
    words = sorted({r for r, i in zip(raw, ints) if i is None})
    if numbers and words:  # a stray value: the minority kind is the odd one out
        count_numbers = sum(i is not None for i in ints)
        odd, kind, other = (
            (numbers, "numbers", words)
            if count_numbers <= len(raw) - count_numbers
            else (words, "names", numbers)
        )
        raise ValueError(
            f"{csv}: the label column mixes class numbers and class names; the odd {kind} "
            f"{_where(odd, raw, slide_ids)} stand among {', '.join(map(repr, other[:10]))}: fix or drop those rows"
        )
    if words:
        names = sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        return [index[r] for r in raw], names
    vals = [int(i) for i in ints]  # type: ignore[arg-type]
    negative = sorted({r for r, v in zip(raw, vals) if v < 0})
    if negative:
        raise ValueError(
            f"{csv}: class numbers must be >= 0 (0, 1, ...); negative labels {_where(negative, raw, slide_ids)}"
        )
    num = max(vals) + 1
    present = sorted(set(vals))
    unused = sorted(set(range(num)) - set(vals))
    if unused:
        # classes 0..m are used contiguously; values above the first gap are the stray ones
        first_gap = unused[0]
        stray = sorted({r for r, v in zip(raw, vals) if v > first_gap}, key=lambda r: _as_int(r) or 0)
        raise ValueError(
            f"{csv}: class numbers must run 0..C-1 without gaps, but {unused[:10]} never occur; the labels above "
            f"the gap are {_where(stray, raw, slide_ids)} (present: {present[:10]}): fix those rows, or "
            "number the classes 0..C-1 (Python: pass label_map)"
        )
    return vals, [str(c) for c in range(num)]


# ------------------------------------------------------------------------------------------------
# survival
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SurvivalLabels:
    """A follow-up time column and an event (or CLAM/PORPOISE ``censorship``) column (see the module docstring).

    Args:
        time_col: the follow-up time column (finite numbers >= 0, any unit).
        event_col: the event column (1 = observed, 0 = censored); when the CSV lacks it but has
            ``censorship``, events are ``1 - censorship``.
    """

    time_col: str
    event_col: str = "event"

    def label_column(self, df: Any, csv: Path, slide_col: str) -> str:
        if self.event_col not in df.columns and "censorship" in df.columns:
            return "censorship"
        return self.event_col

    def columns(self, label_col: str) -> tuple[str, ...]:
        return (label_col, self.time_col)

    def requirement(self, slide_col: str) -> str:
        required = ", ".join(map(repr, (slide_col, self.time_col, self.event_col)))
        return f"{required} (or 'censorship' instead of the event column)"

    def finish(self, table: LabelTable, raw: list[str], label_col: str, df: Any) -> LabelTable:
        raw_times = [s.strip() for s in df[self.time_col].tolist()]
        times = _parse_survival(table.path, table.slide_ids, raw_times, raw, label_col)
        if label_col == "censorship":
            raw = ["0" if r == "1" else "1" for r in raw]
        return dataclasses.replace(
            table, labels=[int(r) for r in raw], class_names=["censored", "event"], times=times
        )


def _parse_survival(
    csv: Path, slide_ids: list[str], raw_times: list[str], raw_events: list[str], event_col: str
) -> list[float | None]:
    """Times as floats; checks times (finite, >= 0) and events (0/1), naming the bad slides.
    Normalises ``raw_events`` in place to ``'0'`` / ``'1'``."""
    times: list[float | None] = []
    bad_time: list[str] = []
    for sid, r in zip(slide_ids, raw_times):
        try:
            t = float(r)
        except ValueError:
            t = float("nan")
        if not (t >= 0 and t != float("inf")):
            bad_time.append(f"{sid}={r!r}")
        times.append(t)
    if bad_time:
        raise ValueError(
            f"{csv}: survival times must be finite numbers >= 0; bad rows {format_ids(bad_time)}"
        )
    bad_event: list[str] = []
    for i, (sid, r) in enumerate(zip(slide_ids, raw_events)):
        v = _zero_one(r)
        if v not in (0.0, 1.0):
            bad_event.append(f"{sid}={r!r}")
        else:
            raw_events[i] = str(int(v))
    if bad_event:
        raise ValueError(f"{csv}: column {event_col!r} must hold 0 or 1; bad rows {format_ids(bad_event)}")
    return times


# ------------------------------------------------------------------------------------------------
# multi-label
# ------------------------------------------------------------------------------------------------
#: The column :class:`MultiLabels` adds to the CSV's frame: each row's label combination.
_COMBINATION = "__label_combination__"


@dataclass(frozen=True)
class MultiLabels:
    """One 0/1 column per label (see the module docstring).

    Args:
        label_cols: the label columns (distinct names), in order.
    """

    label_cols: tuple[str, ...]

    def label_column(self, df: Any, csv: Path, slide_col: str) -> str:
        """Check the 0/1 ``label_cols`` and add each row's label combination (``"a+b"``, ``"(none)"``) to
        ``df``; returns the combination column's name."""
        label_cols = list(self.label_cols)
        missing = [c for c in [slide_col, *label_cols] if c not in df.columns]
        if missing:
            raise ValueError(
                f"labels CSV {csv} lacks column(s) {missing}; it has {list(df.columns)}. "
                f"A multi-label CSV needs {slide_col!r} and one 0/1 column per label"
            )
        values: dict[str, list[int]] = {}
        bad: list[str] = []
        for col in label_cols:
            parsed = []
            for sid, raw in zip(df[slide_col].tolist(), df[col].tolist()):
                v = _zero_one(raw)
                if v not in (0.0, 1.0):
                    bad.append(f"{str(sid).strip()}:{col}={raw!r}")
                parsed.append(int(v) if v in (0.0, 1.0) else 0)
            values[col] = parsed
        if bad:
            raise ValueError(f"{csv}: multi-label columns must hold 0 or 1; bad cells {format_ids(bad)}")
        rows = [tuple(values[c][i] for c in label_cols) for i in range(len(df))]
        df[_COMBINATION] = ["+".join(c for c, v in zip(label_cols, row) if v) or "(none)" for row in rows]
        return _COMBINATION

    def columns(self, label_col: str) -> tuple[str, ...]:
        return (label_col,)

    def requirement(self, slide_col: str) -> str:
        return ", ".join(map(repr, (slide_col, _COMBINATION)))

    def finish(self, table: LabelTable, raw: list[str], label_col: str, df: Any) -> LabelTable:
        labels, names = parse_class_labels(raw, None, table.path, table.slide_ids)
        # the cells were checked to be 0 or 1 by label_column
        cells = zip(*(df[c].tolist() for c in self.label_cols))
        targets = {sid: tuple(int(_zero_one(v)) for v in row) for sid, row in zip(table.slide_ids, cells)}
        return dataclasses.replace(
            table, labels=labels, class_names=names, targets=targets, label_names=self.label_cols
        )
