"""fit --detector auto's data rules (fit_table, fit_item_ids, the WinCLIP+ references of auto scoring) and
its failure isolation: one category's fit raising is its status line and exit 1, the others are fitted.

The failing fit is planted at our own seam (``adray.strategy.fitting._fit_bgad``, the call into the BGAD
fit); the category that succeeds gets a real artifact written and registered, so registration, the
status lines and the exit code are the real ones. Ray is not started (``ensure_ray`` is the seam)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from test_strategy_plan import _row, _write_labels, _write_manifest

from adray import schemas
from adray.cli import run_command
from adray.detectors.base import save_artifact
from adray.pipeline.auto import pick_normals
from adray.strategy import fitting
from adray.strategy.fitting import fit_item_ids, fit_table
from adray.strategy.registry import list_models


def _manifest(rows: list[dict]) -> pa.Table:
    schema = schemas.load_schema("manifest")
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def _labels(rows: list[tuple[str, str, str | None]]) -> pa.Table:
    return pa.table({"item_id": [r[0] for r in rows], "label": [r[1] for r in rows],
                     "mask_uri": pa.array([r[2] for r in rows], pa.string())})  # fmt: skip


ROWS = [
    _row("c", 0, "train", 0),
    _row("c", 1, "test", None),  # labelled normal -> a training normal
    _row("c", 2, "test", None),  # labelled anomalous with a mask -> a test anomaly with that mask
    _row("c", 3, "test", None),  # labelled anomalous without a mask
    _row("c", 4, "test", 1, gt_mask_uri="/gt/c4.png"),  # the manifest's label wins over the imported one
    _row("c", 5, "test", None),  # unlabelled
    _row("c", 6, "test", None, skip_status="empty"),  # unreadable: never in a fit
    _row("other", 0, "train", 0),
]
LABELS = [("c-test-001", "normal", None), ("c-test-002", "anomalous", "/gt/l2.png"),
          ("c-test-003", "anomalous", None), ("c-test-004", "normal", None)]  # fmt: skip


def test_fit_table_applies_the_latest_labels_and_keeps_the_manifest_label_first():
    manifest = _manifest(ROWS)
    table = fit_table(manifest, _labels(LABELS), "c")
    assert table.schema == manifest.schema
    got = {
        r["item_id"]: (r["split"], r["label"], r["defect_type"], r["gt_mask_uri"]) for r in table.to_pylist()
    }
    assert list(got) == sorted(got) and "c-test-006" not in got and "other-train-000" not in got
    assert got["c-test-001"] == ("train", 0, "good", None)
    assert got["c-test-002"] == ("test", 1, "labelled", "/gt/l2.png")
    assert got["c-test-003"] == ("test", 1, "labelled", None)
    assert got["c-test-004"] == ("test", 1, "scratch", "/gt/c4.png")
    assert got["c-test-005"] == ("test", None, None, None)
    assert fit_item_ids(table, "bgad") == ["c-test-001", "c-test-002", "c-test-004", "c-train-000"]
    without = fit_table(manifest, None, "c").to_pylist()
    assert [r["split"] for r in without if r["item_id"] == "c-test-001"] == ["test"]
    with pytest.raises(ValueError, match="no fit for detector"):
        fit_item_ids(table, "winclip")


def test_m3dm_fits_on_normal_items_with_a_point_cloud():
    rows = [_row("p", 0, "train", 0, pc_uri="/p0.tiff"), _row("p", 1, "train", 0),
            _row("p", 2, "validation", 0, pc_uri="/p2.tiff"), _row("p", 3, "test", 0, pc_uri="/p3.tiff")]  # fmt: skip
    assert fit_item_ids(fit_table(_manifest(rows), None, "p"), "m3dm") == ["p-train-000", "p-validation-002"]


def test_pick_normals_takes_train_and_labelled_normals_seeded_per_category():
    rows = [_row("c", i, "train", 0) for i in range(8)] + ROWS[1:6]
    manifest, labels = _manifest(rows), _labels(LABELS)
    picked = pick_normals(manifest, labels, "c", 4, seed=0)
    ids = [i for _, i in picked]
    assert len(ids) == 4 and ids == sorted(ids) and len(set(ids)) == 4
    assert set(ids) <= {f"c-train-{i:03d}" for i in range(8)} | {"c-test-001"}
    assert pick_normals(manifest, labels, "c", 4, seed=0) == picked  # reproducible
    more = _manifest(rows + [_row("d", i, "train", 0) for i in range(5)])
    assert pick_normals(more, labels, "c", 4, seed=0) == picked  # another category changes nothing
    assert any(pick_normals(manifest, labels, "c", 4, seed=s) != picked for s in range(1, 6))
    assert [i for _, i in pick_normals(manifest, labels, "c", 50, seed=0)] == sorted(
        [f"c-train-{i:03d}" for i in range(8)] + ["c-test-001"]
    )  # all of them when fewer than k, the anomalies and unlabelled items never


def test_one_failing_category_is_a_status_line_and_exit_1_while_the_others_are_fitted(
    tmp_path, monkeypatch, capsys
):
    rows = []
    for cat in ("bottle", "nut"):  # both supervised: 3 normals, 10 anomalies with masks
        rows += [_row(cat, i, "train", 0) for i in range(3)]
        rows += [_row(cat, i, "test", 1, gt_mask_uri=f"/gt/{cat}{i}.png") for i in range(10)]
    manifest = _write_manifest(tmp_path / "manifest.parquet", rows)
    root = tmp_path / "root"
    _write_labels(root, [{"item_id": "bottle-test-000", "label": "anomalous", "mask_uri": "/gt/x.png"}])
    calls = []

    def fit_bgad(category, train, out, n_anomalies, extra):
        calls.append(category)
        if category == "nut":
            raise RuntimeError("planted failure\nsecond line")
        save_artifact(out, detector="bgad", version=f"bgad-{category}", config={"model": {"category": category}},
                      tensors={"w": torch.zeros(1)}, metadata={})  # fmt: skip
        return {"loss": 0.5}, {"normal": 3, "anomalous": n_anomalies}

    monkeypatch.setattr(fitting, "_fit_bgad", fit_bgad)
    monkeypatch.setattr("adray.pipeline.cluster.ensure_ray", lambda *a, **k: None)
    code = run_command("fit", ["--detector", "auto", "--input", manifest, "--output", str(root)])
    out = capsys.readouterr().out
    assert code == 1 and calls == ["bottle", "nut"]
    assert "nut: supervised → failed (RuntimeError: planted failure)" in out
    assert "bottle: supervised → fitted" in out and "1 fitted, 0 skipped, 1 failed" in out
    assert [(m.category, m.detector, m.status) for m in list_models(str(root))] == [("bottle", "bgad", "ok")]
