"""The one table formatter: odd values (None, nan, long strings, wide and combining
characters, pipes, control characters) keep the columns aligned and the text plain."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from recall_bench.tables import Column, cell, format_table, width

ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=60),
    st.sampled_from(["字字", "é", "e\u0301", "a|b", "x\ny", "\x1b[31mred", "   ", ""]),
)
COLUMNS = [Column("name", "a"), Column("value", "b", ".3f"), Column("wide 字", "c", ",")]


def test_a_small_table_reads_as_expected() -> None:
    rows = [
        {"mode": "in-weight", "n": 256, "recall": 0.99712, "bits": None},
        {"mode": "in-tool", "n": 16384, "recall": math.nan, "bits": 1234.5},
    ]
    columns = [("mode", "mode"), ("facts", "n"), ("recall", "recall", ".3f")]
    columns += [("bits", "bits", ",.0f")]
    assert format_table(rows, columns) == (
        "mode       facts  recall   bits\n"
        "---------  -----  ------  -----\n"
        "in-weight    256   0.997      -\n"
        "in-tool    16384     nan  1,234"
    )
    assert format_table(rows, columns, markdown=True).splitlines()[:3] == [
        "| mode | facts | recall | bits |",
        "| :--- | ---: | ---: | ---: |",
        "| in-weight | 256 | 0.997 | - |",
    ]


def test_cells_of_odd_values() -> None:
    assert cell(None) == "-" and cell(True) == "yes" and cell(False) == "no"
    assert cell(math.nan, ".3f") == "nan" and cell(-math.inf, ",.0f") == "-inf"
    assert cell(12345678, ",") == "12,345,678" and cell("a\tb\n") == "a?b?"
    assert cell("x" * 50, limit=10) == "x" * 9 + "~"
    assert width("字字") == 4 and width("e\u0301") == 1 and width("abc") == 3


def test_columns_may_be_functions_and_set_their_alignment() -> None:
    rows = [{"a": 1, "b": 2}, {"a": 10, "b": 20}]
    columns = [Column("sum", lambda r: r["a"] + r["b"]), Column("a", "a", right=False)]
    assert format_table(rows, columns).splitlines()[2:] == ["  3  1", " 30  10"]
    assert format_table(rows, columns, header=False).splitlines() == [" 3  1", "30  10"]


@given(st.lists(st.fixed_dictionaries({"a": ODD, "b": ODD, "c": ODD}), max_size=6))
def test_plain_tables_stay_aligned_and_plain(rows: list[dict]) -> None:
    text = format_table(rows, COLUMNS, limit=30)
    lines = text.split("\n")
    assert len(lines) == len(rows) + 2 and "\x1b" not in text and "\t" not in text
    rule = lines[1].split("  ")
    assert all(set(r) == {"-"} for r in rule) and len(rule) == len(COLUMNS)
    for line in lines:  # every cell fits under its dashes: no line is wider than the rule
        assert width(line) <= width(lines[1])
    for row, line in zip(rows, lines[2:], strict=True):
        for key, column in zip("abc", COLUMNS, strict=True):
            assert cell(row[key], column.fmt, 30) in line


@given(st.lists(st.fixed_dictionaries({"a": ODD, "b": ODD, "c": ODD}), max_size=6))
def test_markdown_rows_have_one_cell_per_column(rows: list[dict]) -> None:
    lines = format_table(rows, COLUMNS, markdown=True).split("\n")
    assert len(lines) == len(rows) + 2
    for line in lines:
        unescaped = line.replace("\\\\", "").replace("\\|", "")
        assert unescaped.count("|") == len(COLUMNS) + 1


def test_consolidation_table_shows_the_base_and_the_last_step() -> None:
    """Step 0 of the first method as `base`, the last step of every method, nothing between."""
    from recall_bench.experiments import consolidate_report

    point = {"recall_without_store": 0.5, "bits_moved": 1234.0, "recall_through_store": 0.9}
    point |= {"old_recall_kept": 1.0, "tool_recall_fresh": 0.8}
    rows = [
        {**point, "method": m, "n_facts": 64, "step": s}
        for m in ("own-answers", "true-facts")
        for s in (0, 50, 100)
    ]
    summary = {"params": {"total": 1000}, "rows": rows, "plots": ["a.png"], "wall_s": 3.0}
    lines = consolidate_report.format_table(summary).splitlines()
    assert lines[0] == "consolidation: 1,000-parameter model"
    assert lines[-1].startswith("plots: a.png")
    shown = [line.split()[:3] for line in lines[3:-1]]
    assert shown == [["base", "64", "0"], ["own-answers", "64", "100"], ["true-facts", "64", "100"]]
    assert lines[3].split()[4] == "1,234" and lines[3].split()[-1] == "-"  # no general measured


def test_edit_table_is_markdown_with_a_cell_per_column() -> None:
    from recall_bench.experiments import edits_report

    names = (*edits_report.SHOWN, *edits_report.GROUP_METRICS, *edits_report.GENERAL)
    row = {"method": "rome", "k": 4, **dict.fromkeys(names, 0.25), "general_mc_kept": None}
    row |= {"wall_s_per_edit": 0.0123, "flops_per_edit": 1.2e9, "bytes_per_edit": 4096.0}
    head, rule, line = edits_report.format_table([row]).splitlines()
    assert head.count("|") == rule.count("|") == line.count("|") == 16
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["rome", "4", "0.250"] and cells[-3:] == ["0.012", "1.2e+09", "4096"]
    assert cells[-6] == "-"  # general_mc_kept not measured
