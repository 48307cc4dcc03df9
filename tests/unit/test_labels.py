"""Labels as data: `adray labels import` against a scored results root, the labels / latest_labels views,
bad files refused whole, and evaluation taking ground truth from labels where the manifest has none.

The scored root is the evaluation tests' fixture: a synthetic MVTec AD set, one committed run of two
detectors written through the results schema (tests/unit/test_evaluation_e2e.py).
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_evaluation_e2e import build_scored_dataset

from adray.cli import main
from adray.evaluation import EvalConfig, evaluate
from adray.labels import FILE_COLUMNS, LabelsError, import_labels, label_files, latest_labels
from adray.pipeline.query import connect
from adray.schemas import validate_table


@pytest.fixture
def scored(tmp_path):
    return build_scored_dataset(tmp_path)


def _write_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FILE_COLUMNS))  # the review page's export header
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in FILE_COLUMNS})
    return str(path)


def _test_items(scored, category: str, label: int) -> pd.DataFrame:
    items = scored["items"]
    pick = (items["split"] == "test") & (items["category"] == category) & (items["label"] == label)
    return items[pick].sort_values("item_id").reset_index(drop=True)


def test_import_csv_by_item_id_or_uri_appends_one_file(scored, tmp_path):
    anom, good = _test_items(scored, "carpet", 1), _test_items(scored, "carpet", 0)
    rows = [
        {"item_id": anom.item_id[0], "label": "anomalous", "defect_type": "hole", "labelled_by": "ana",
         "mask_uri": anom.gt_mask_uri[0], "labelled_at": "2024-05-01T10:00:00Z"},
        {"uri": good.uri[0], "label": " Normal "},  # by uri only; case and blanks ignored; time = now
    ]  # fmt: skip
    res = import_labels(_write_csv(tmp_path / "l.csv", rows), scored["results"])
    assert (res.n_rows, res.n_items, res.n_anomalous) == (2, 2, 1)
    files = label_files(scored["results"])
    assert files == [res.url] and Path(res.url).name.startswith("labels-") and res.url.endswith(".parquet")
    stored = pq.read_table(res.url)
    validate_table(stored, "labels")
    got = stored.to_pandas().set_index("item_id")
    assert got.loc[good.item_id[0], "uri"] == good.uri[0]  # resolved from the uri
    assert got.loc[good.item_id[0], "label"] == "normal"
    assert got.loc[anom.item_id[0], "labelled_at"] == pd.Timestamp("2024-05-01T10:00:00Z")
    assert got.loc[anom.item_id[0], "mask_uri"] == anom.gt_mask_uri[0]
    assert sorted(got["source_row"]) == [1, 2]


def test_import_parquet_with_timestamp_column(scored, tmp_path):
    good = _test_items(scored, "bottle", 0)
    path = tmp_path / "l.parquet"
    naive = datetime(2024, 5, 2, 8, 30)  # no zone: read as UTC
    pq.write_table(
        pa.table({"item_id": list(good.item_id[:3]), "label": ["normal"] * 3, "labelled_at": [naive] * 3}),
        path,
    )
    import_labels(str(path), scored["results"])
    latest = latest_labels(scored["results"]).to_pandas()
    assert sorted(latest["item_id"]) == sorted(good.item_id[:3])
    assert (latest["labelled_at"] == pd.Timestamp("2024-05-02T08:30:00Z")).all()


def test_latest_label_wins_and_earlier_labels_stay(scored, tmp_path):
    item = _test_items(scored, "carpet", 0).item_id[0]
    first = [{"item_id": item, "label": "normal", "labelled_at": "2024-05-01T10:00:00Z"}]
    second = [{"item_id": item, "label": "anomalous", "labelled_at": "2024-05-03T10:00:00Z"}]
    older = [{"item_id": item, "label": "normal", "labelled_at": "2024-04-01T10:00:00Z"}]  # imported last
    for i, rows in enumerate((first, second, older)):
        import_labels(_write_csv(tmp_path / f"{i}.csv", rows), scored["results"])
    con = connect(scored["results"])
    assert con.execute("SELECT count(*) FROM labels WHERE item_id = ?", [item]).fetchone()[0] == 3
    assert con.execute("SELECT label FROM latest_labels WHERE item_id = ?", [item]).fetchall() == [
        ("anomalous",)
    ]
    # rows of one item at different times in one file are history, not duplicates
    both = [
        {"item_id": item, "label": "anomalous", "labelled_at": "2024-06-01T00:00:00Z"},
        {"item_id": item, "label": "normal", "labelled_at": "2024-06-02T00:00:00Z"},
    ]
    import_labels(_write_csv(tmp_path / "both.csv", both), scored["results"])
    assert latest_labels(scored["results"]).column("label").to_pylist() == ["normal"]


def _bad_case(case: str, scored, tmp_path) -> tuple[list[dict], set[int], list[str]]:
    """Rows of a bad file, the rows that must be named and text the error must hold."""
    good = _test_items(scored, "bottle", 0)
    ok = [{"item_id": i, "label": "normal"} for i in good.item_id[:2]]
    if case == "unknown item":
        bad = [{"item_id": "0123456789abcdef", "label": "normal"}, {"uri": "/no/such.png", "label": "normal"}]
        return ok + bad, {3, 4}, ["unknown items", "'0123456789abcdef'", "'/no/such.png'"]
    if case == "duplicate":
        return ok + [dict(ok[0])], {3}, ["duplicate rows", "as row 1"]
    if case == "unknown label":
        return ok + [{"item_id": good.item_id[2], "label": "defect"}], {3}, ["unknown labels", "'defect'"]
    if case == "missing mask":
        missing = str(tmp_path / "masks" / "nope.png")
        row = {"item_id": good.item_id[2], "label": "anomalous", "mask_uri": missing}
        return ok + [row], {3}, ["masks that do not exist", missing]
    if case == "item_id and uri disagree":
        row = {"item_id": good.item_id[2], "uri": good.uri[3], "label": "normal"}
        return ok + [row], {3}, ["different items"]
    raise AssertionError(case)


CASES = ["unknown item", "duplicate", "unknown label", "missing mask", "item_id and uri disagree"]


@pytest.mark.parametrize("case", CASES)
def test_bad_file_is_refused_whole_naming_its_rows(scored, tmp_path, case):
    root = scored["results"]
    import_labels(
        _write_csv(tmp_path / "before.csv", [{"item_id": scored["loud"], "label": "anomalous"}]), root
    )
    before = {f: Path(f).read_bytes() for f in label_files(root)}
    rows, bad_rows, texts = _bad_case(case, scored, tmp_path)
    path = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(LabelsError) as err:
        import_labels(path, root)
    assert err.value.rows == bad_rows
    message = str(err.value)
    for n in bad_rows:
        assert f"row {n} (" in message
    for text in texts:
        assert text in message
    assert "nothing imported" in message and "\n" not in message
    after = {f: Path(f).read_bytes() for f in label_files(root)}
    assert after == before  # the labels table is unchanged
    assert not [p for p in (Path(root) / "labels").iterdir() if p.name not in {Path(f).name for f in before}]


def test_cli_import_error_is_one_line_exit_2_and_list_prints_latest(scored, tmp_path, capsys):
    root = scored["results"]
    bad = _write_csv(tmp_path / "bad.csv", [{"item_id": "ffffffffffffffff", "label": "normal"}])
    assert main(["labels", "import", bad, "--output", root]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adray labels: error: labels file") and "row 1 (item_id='ffffffffffffffff')" in err
    assert label_files(root) == []
    good = _write_csv(
        tmp_path / "ok.csv", [{"item_id": scored["weak"], "label": "anomalous", "labelled_by": "bo"}]
    )
    assert main(["labels", "import", good, "--output", root]) == 0
    assert "imported 1 label(s) of 1 item(s) (1 anomalous)" in capsys.readouterr().out
    assert main(["labels", "list", "--output", root]) == 0
    out = capsys.readouterr().out
    assert scored["weak"] in out and "anomalous" in out and "bo" in out and "(1 row)" in out


def test_missing_columns_and_empty_files_are_user_errors(scored, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("name,verdict\na,normal\n")
    with pytest.raises(LabelsError, match="missing columns: item_id or uri, label"):
        import_labels(str(path), scored["results"])
    path.write_text(",".join(FILE_COLUMNS) + "\n")
    with pytest.raises(LabelsError, match="no rows"):
        import_labels(str(path), scored["results"])


def test_query_command_shows_latest_labels(scored, tmp_path, capsys):
    root = scored["results"]
    rows = [{"item_id": scored["loud"], "label": "anomalous", "defect_type": "blob"}]
    import_labels(_write_csv(tmp_path / "l.csv", rows), root)
    sql = "SELECT item_id, label, defect_type FROM latest_labels"
    assert main(["query", "--output", root, sql]) == 0
    out = capsys.readouterr().out
    assert scored["loud"] in out and "blob" in out and "(1 row)" in out
    assert main(["query", "--output", root]) == 0
    assert "latest_labels: item_id VARCHAR" in capsys.readouterr().out


def test_evaluate_takes_ground_truth_from_labels_where_the_manifest_has_none(scored, tmp_path):
    """Drop the carpet test items' labels and masks from the manifest, import them as labels: the metrics
    equal those of the full manifest; without the import those items are unlabelled."""
    items = scored["items"]
    carpet = items[(items["category"] == "carpet") & (items["split"] == "test")]
    bare = pq.read_table(scored["manifest"]).to_pandas()
    drop = bare["item_id"].isin(carpet["item_id"])
    bare.loc[drop, ["label", "gt_mask_uri", "defect_type"]] = None
    bare_uri = str(tmp_path / "bare.parquet")
    pq.write_table(pa.Table.from_pandas(bare, preserve_index=False), bare_uri)
    config = EvalConfig(pixel_size=0, worst=2)
    full = evaluate(scored["results"], scored["manifest"], config=config)
    before = evaluate(scored["results"], bare_uri, config=config)
    assert "carpet" not in before["detectors"]["winclip"]["categories"]
    rows = [
        {"item_id": r.item_id, "label": "anomalous" if r.label == 1 else "normal",
         "defect_type": r.defect_type if r.label == 1 else "", "mask_uri": r.gt_mask_uri or ""}
        for r in carpet.itertuples()
    ]  # fmt: skip
    import_labels(_write_csv(tmp_path / "carpet.csv", rows), scored["results"])
    after = evaluate(scored["results"], bare_uri, config=config)
    n_used = len(carpet) - 1  # one carpet item failed to score
    assert after["labels"]["used"] == {"bgad": n_used, "winclip": n_used}
    for det in ("winclip", "bgad"):
        got, want = (
            after["detectors"][det]["categories"]["carpet"],
            full["detectors"][det]["categories"]["carpet"],
        )
        for metric in ("image_auroc", "aupr", "f1_max", "pixel_auroc", "aupro", "n_normal", "n_anomalous"):
            assert got[metric] == pytest.approx(want[metric]), (det, metric)
        assert after["join"]["unlabelled"][det] == full["join"]["unlabelled"][det]


def test_schemas_readme_label_queries_run(scored, tmp_path):
    """The SQL block of schemas/README.md's labels section runs and counts what was imported."""
    text = (Path(__file__).resolve().parents[2] / "schemas" / "README.md").read_text()
    block = text.split("\n## labels\n", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    statements = [s.strip() for s in block.split(";") if s.strip()]
    item = scored["loud"]
    rows = [
        {"item_id": item, "label": "normal", "labelled_at": "2024-05-01T00:00:00Z"},
        {"item_id": item, "label": "anomalous", "labelled_at": "2024-05-02T00:00:00Z"},
    ]
    import_labels(_write_csv(tmp_path / "l.csv", rows), scored["results"])
    con = connect(scored["results"])
    by_label = con.execute(statements[0]).fetchall()
    assert [(r[0], r[1], r[2]) for r in by_label] == [("bottle", "anomalous", 2)]  # one item, two detectors
    assert con.execute(statements[1]).fetchall() == [(item, 2, "normal -> anomalous")]
