"""The one labels-CSV parser (classes, survival, multi-label) and the slide-id-to-file matching."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pandas")

from medmoe.data.feature_files import match_feature_files
from medmoe.data.label_table import (
    ClassLabels,
    MultiLabels,
    SurvivalLabels,
    format_ids,
    label_kind,
    read_label_table,
)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_three_kinds_share_the_slide_case_and_split_columns(tmp_path):
    csv = _csv(
        tmp_path / "l.csv",
        "slide_id,case_id,split,label,time,censorship,tumor,necrosis\n"
        "a.svs,p1,train,normal,3.5,0,1,0\n"
        "b,p1,train,tumor,1,1,1,1\n"
        "c,,test,normal,0,0,0,0\n",
    )
    classes = read_label_table(csv, ClassLabels())
    survival = read_label_table(csv, SurvivalLabels("time"))
    multi = read_label_table(csv, MultiLabels(("tumor", "necrosis")))
    for table in (classes, survival, multi):
        assert table.slide_ids == ["a.svs", "b", "c"]
        assert table.cases == ["p1", "p1", ""] and table.splits == ["train", "train", "test"]
        assert [table.patient(i) for i in range(3)] == ["p1", "p1", "c"] and table.has_cases
    assert classes.labels == [0, 1, 0] and classes.class_names == ["normal", "tumor"]
    assert classes.times == [None] * 3 and classes.targets is None and classes.label_names == ()
    # censorship = 1 - event; the labels are the events
    assert survival.labels == [1, 0, 1] and survival.class_names == ["censored", "event"]
    assert survival.times == [3.5, 1.0, 0.0]
    assert multi.targets == {"a.svs": (1, 0), "b": (1, 1), "c": (0, 0)}
    assert multi.label_names == ("tumor", "necrosis")
    assert [multi.class_names[y] for y in multi.labels] == ["tumor", "tumor+necrosis", "(none)"]


@pytest.mark.parametrize(
    "kind, columns",
    [(ClassLabels(), "label"), (SurvivalLabels("time"), "time,event"), (MultiLabels(("tumor",)), "tumor")],
)
def test_shared_checks_say_the_same_for_every_kind(tmp_path, kind, columns):
    values = ",".join(["1"] * len(columns.split(",")))
    dup = _csv(tmp_path / "dup.csv", f"slide_id,{columns}\na,{values}\nb,{values}\na,{values}\n")
    with pytest.raises(ValueError, match=r"dup.csv: duplicated 'slide_id' values 1: a$"):
        read_label_table(dup, kind)
    empty_id = _csv(tmp_path / "id.csv", f"slide_id,{columns}\na,{values}\n ,{values}\n")
    with pytest.raises(ValueError, match=r"rows \[1\] have an empty 'slide_id'"):
        read_label_table(empty_id, kind)
    header_only = _csv(tmp_path / "h.csv", f"slide_id,{columns}\n")
    with pytest.raises(ValueError, match="has a header but no rows; add one row per slide"):
        read_label_table(header_only, kind)
    with pytest.raises(ValueError, match="is empty; it needs a header"):
        read_label_table(_csv(tmp_path / "e.csv", ""), kind)
    with pytest.raises(ValueError, match="labels CSV .* does not exist"):
        read_label_table(tmp_path / "gone.csv", kind)


def test_missing_columns_are_named_per_kind(tmp_path):
    csv = _csv(tmp_path / "l.csv", "slide_id,other\na,1\n")
    with pytest.raises(
        ValueError, match=r"lacks column\(s\) \['label'\].*Required: 'slide_id', 'label'; optional"
    ):
        read_label_table(csv, ClassLabels())
    with pytest.raises(
        ValueError, match=r"\['event', 'time'\].*'slide_id', 'time', 'event' \(or 'censorship'"
    ):
        read_label_table(csv, SurvivalLabels("time"))
    with pytest.raises(
        ValueError, match=r"\['tumor'\].*A multi-label CSV needs 'slide_id' and one 0/1 column"
    ):
        read_label_table(csv, MultiLabels(("tumor",)))


def test_label_kind_picks_one_kind_and_refuses_two():
    assert label_kind() == ClassLabels("label", None, None)
    assert label_kind(class_names=["a", "b"]) == ClassLabels("label", None, ("a", "b"))
    assert label_kind(time_col="t", event_col="e") == SurvivalLabels("t", "e")
    assert label_kind(label_cols=" tumor ") == MultiLabels(("tumor",))
    with pytest.raises(ValueError, match="class_names .* cannot be combined"):
        label_kind(class_names=["a"], time_col="t")
    with pytest.raises(ValueError, match="label_cols must name one or more distinct"):
        label_kind(label_cols=["a", "a"])
    with pytest.raises(ValueError, match="label_cols \\(multi-label\\) cannot be combined"):
        label_kind(label_cols=["a"], label_map={"x": 0})
    with pytest.raises(ValueError, match="a survival CSV \\(time_col\\) has events, not classes"):
        label_kind(time_col="t", label_map={"x": 0})


def test_slide_ids_meet_their_files_with_or_without_the_slide_extension(tmp_path):
    files = {"a": tmp_path / "a.h5", "b": tmp_path / "b.pt", "c.svs": tmp_path / "c.svs.h5"}
    matched, missing = match_feature_files(["a.svs", "b", "c.svs", "d.ndpi", "a.txt"], files)
    assert matched == {"a.svs": files["a"], "b": files["b"], "c.svs": files["c.svs"]}
    assert missing == ["d.ndpi", "a.txt"]


def test_format_ids_counts_and_shortens():
    assert format_ids(["a", "b"]) == "2: a, b"
    assert format_ids([str(i) for i in range(12)], limit=3) == "12: 0, 1, 2 (+9 more)"


def test_survival_time_column_is_found_in_the_header_or_named_as_a_setting(tmp_path) -> None:
    """The first of TIME_COLUMNS in the header; none of them: an InputError naming the ``time_col`` setting
    (``--time-col`` on the command line), never a guess."""
    from medmoe.data.label_table import TIME_COLUMNS, survival_time_column
    from medmoe.errors import InputError

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("slide_id,event,os_months,months\ns1,1,3.0,3.0\n")
    assert survival_time_column(csv_path, None) == "os_months"
    assert survival_time_column(csv_path, "months") == "months"
    csv_path.write_text("slide_id,event,follow_up\ns1,1,3.0\n")
    with pytest.raises(InputError) as caught:
        survival_time_column(csv_path, None)
    assert "name yours with time_col" in str(caught.value) and all(c in str(caught.value) for c in TIME_COLUMNS)
