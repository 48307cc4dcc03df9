"""The one text-table printer (issue 15 item 7d) and the tables printed through it."""

from __future__ import annotations

import duckdb
import pytest

from adray.pipeline.query import format_result
from adray.tables import cell, text_table


def test_columns_are_as_wide_as_their_widest_cell_and_nothing_is_cut():
    uri = "s3://bucket/a/very/long/path/to/item_0001.png"
    out = text_table(["uri", "score", "n"], [[uri, 0.123456, 3], ["b", None, 12]])
    assert out.splitlines() == [
        f"{'uri':<{len(uri)}}  score   n ",
        f"{'-' * len(uri)}  ------  --",
        f"{uri}  0.1235  3 ",
        f"{'b':<{len(uri)}}  NULL    12",
    ]
    assert text_table(["a"], [["x"]], rule=False) == "a\nx"


def test_a_ragged_row_is_refused_and_cells_format_once():
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        text_table(["a", "b"], [[1, 2], [3]])
    assert (cell(None), cell(None, none="-"), cell(2.0), cell(1e-7), cell("x")) == (
        "NULL",
        "-",
        "2",
        "1e-07",
        "x",
    )


def test_adray_query_prints_every_value_in_full_and_says_when_rows_are_left_out():
    con = duckdb.connect()
    rel = con.sql(
        "SELECT 'item_' || i AS item_id, i / 3 AS score, NULL AS note FROM range(4) t(i) ORDER BY i"
    )
    out = format_result(rel, max_rows=3).splitlines()
    assert out[0].split() == ["item_id", "score", "note"] and set(out[1]) == {"-", " "}
    assert out[2].split() == ["item_0", "0", "NULL"] and out[4].split() == ["item_2", "0.6667", "NULL"]
    assert out[-1] == "(3 rows, more not shown)" and len(out) == 6
    assert format_result(None) == "(no result)"
