"""The strategy ladder end to end (issue 17): a four-category archive; `fit --detector auto` fits exactly
BGAD and M3DM; `score --detector auto` scores each category on its rung (results column ``strategy``);
labels for the zero-shot category's normals move it up to k-shot and `reinspect --detector auto`
re-scores only that category; a registered artifact that no longer exists makes its category fall back."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from adray import catalog
from adray.cli import run_command
from adray.evaluation import EvalConfig, evaluate
from adray.strategy.registry import list_models
from adray.synthetic import generate_mvtec_3d, generate_mvtec_ad

pytestmark = pytest.mark.integration

# BGAD fits in-process (--workers 0, Ray Train's local mode): the ladder is under test here, the Ray Train
# worker group is test_fit_bgad.py's (one group start less, ~20 s)
BGAD = "--backbone test_efficientnet --weights random --image-size 64 --flow-blocks 2 --epochs 1 "
BGAD += "--ml-epochs 0 --batch-size 8 --chunk-size 1024 --copy-paste-variants 0 --workers 0"
M3DM = "--mode xyz --tiny --weights random --point-weights random --workers 1"
WINCLIP = ["--weights", "random", "--detector-option", "model_name=adray-tiny-clip"]


def _null(table: pa.Table, mask: pa.Array, column: str) -> pa.Table:
    col = table[column]
    i = table.column_names.index(column)
    return table.set_column(i, column, pc.if_else(mask, pa.nulls(len(col), col.type), col))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    """carpet: test images only, unlabelled (zero-shot); nut: train normals, unlabelled test images
    (k-shot); bottle: normals + 12 test anomalies with masks (BGAD); cookie: point clouds (M3DM)."""
    base = tmp_path_factory.mktemp("ladder")
    generate_mvtec_ad(str(base / "2d"), categories=("carpet", "nut"), image_size=32, n_train=2,
                      n_test_good=2, n_test_per_defect=1, seed=0)  # fmt: skip
    # bottle: 4 defect types x 3 = 12 anomalies with masks (BGAD needs 10)
    generate_mvtec_ad(str(base / "2d"), categories=("bottle",), image_size=32, n_train=3, n_test_good=1,
                      n_test_per_defect=3, seed=1)  # fmt: skip
    generate_mvtec_3d(str(base / "3d"), categories=("cookie",), image_size=32, n_train=3, n_validation=2,
                      n_test_good=1, n_test_per_defect=1, defects=("dent",), seed=0)  # fmt: skip
    t2 = catalog.build_manifest(str(base / "2d"))[0]
    t3 = catalog.build_manifest(str(base / "3d"))[0]
    table = pa.concat_tables(
        [t2, t3.cast(t2.schema) if t3.schema != t2.schema else t3], promote_options="default"
    )
    cat = table["category"]
    table = table.filter(pc.invert(pc.and_(pc.equal(cat, "carpet"), pc.equal(table["split"], "train"))))
    unlabelled = pc.and_(pc.is_in(table["category"], pa.array(["carpet", "nut"])),
                         pc.equal(table["split"], "test"))  # fmt: skip
    for column in ("label", "defect_type", "gt_mask_uri"):
        table = _null(table, unlabelled, column)
    url = str(base / "manifest.parquet")
    catalog.write_manifest(table, url)
    return url


def _rows(root: str) -> pa.Table:
    from adray.pipeline.query import connect

    sql = "SELECT run_id, item_id, category, detector, strategy, status FROM results"
    return connect(root).sql(sql).to_arrow_table()


def test_the_ladder_end_to_end(ray_session, archive, tmp_path, capsys):
    root = str(tmp_path / "root")
    fit = [
        "--detector",
        "auto",
        "--input",
        archive,
        "--output",
        root,
        "--bgad-args",
        BGAD,
        "--m3dm-args",
        M3DM,
    ]
    assert run_command("fit", fit) == 0
    models = list_models(root)
    assert sorted((m.category, m.detector) for m in models) == [("bottle", "bgad"), ("cookie", "m3dm")]
    out = capsys.readouterr().out
    assert "carpet: zero-shot → no-fit" in out and "nut: k-shot → no-fit" in out
    assert run_command("fit", fit) == 0  # same data: nothing fitted again
    assert "bottle: supervised → skipped" in capsys.readouterr().out and len(list_models(root)) == 2

    score = ["--input", archive, "--output", root, "--detector", "auto", "--run-id", "first", *WINCLIP]
    assert run_command("score", score) == 0
    rows = _rows(root).to_pylist()
    got = {(r["category"], r["detector"], r["strategy"]) for r in rows}
    assert got == {("carpet", "winclip", "zero-shot"), ("nut", "winclip", "k-shot"),
                   ("bottle", "bgad", "supervised"), ("cookie", "m3dm", "multimodal")}  # fmt: skip
    assert all(r["status"] == "ok" for r in rows)
    first = json.loads((tmp_path / "root" / "runs" / "first.json").read_text())
    assert first["counts"]["not_applicable"] == 0  # categories handed to other detectors are not counted

    # labels for two of carpet's test images (normal) move it up to k-shot
    ids = sorted(r["item_id"] for r in catalog.read_manifest(archive).to_pylist()
                 if r["category"] == "carpet")[:2]  # fmt: skip
    labels = tmp_path / "labels.csv"
    pacsv.write_csv(pa.table({"item_id": ids, "label": ["normal", "normal"]}), labels)
    assert run_command("labels", ["import", str(labels), "--output", root]) == 0
    again = ["--input", archive, "--output", root, "--detector", "auto", "--run-id", "second", *WINCLIP]
    assert run_command("reinspect", again) == 0
    second = [r for r in _rows(root).to_pylist() if r["run_id"] == "second"]
    assert second and {(r["category"], r["strategy"]) for r in second} == {("carpet", "k-shot")}
    assert len(second) == sum(1 for r in rows if r["category"] == "carpet")

    # a registered artifact that is gone: the category falls back (a status line), no crash
    shutil.rmtree(next(m.uri for m in list_models(root) if m.category == "bottle"))
    third = ["--input", archive, "--output", root, "--detector", "auto", "--run-id", "third",
             "--category", "bottle", *WINCLIP]  # fmt: skip
    assert run_command("score", third) == 0
    third_rows = [r for r in _rows(root).to_pylist() if r["run_id"] == "third"]
    assert third_rows and {(r["detector"], r["strategy"]) for r in third_rows} == {("winclip", "k-shot")}

    # the evaluation says each category's rung and why, and finds BGAD's fit items through the registry
    # (the run records name only "auto"; the artifact itself is gone by now)
    doc = evaluate(root, archive, config=EvalConfig(pixel_size=0))
    cats = doc["strategies"]["categories"]
    assert cats["carpet"]["history"] == ["zero-shot", "k-shot"] and "WinCLIP+" in cats["carpet"]["why"]
    assert cats["bottle"]["history"] == ["supervised", "k-shot"] and set(cats["bottle"]["comparison"]) == {
        "supervised", "k-shot"}  # fmt: skip
    assert cats["cookie"]["strategy"] == "multimodal" and cats["nut"]["planned"]["strategy"] == "k-shot"
    assert any(k.startswith("registry ") for k in doc["fit_exclusions"]["sources"])
    assert doc["join"]["excluded_fit"]["bgad"] >= 12  # its anomalies with masks never count
