"""The decisions loop on the local Ray cluster: a synthetic archive scored zero-shot (every row decided,
with its source), then with a tiny fitted BGAD (held-out-normal thresholds, defect regions in mm² from
the manifest's per-item pixel size), then three labels imported and read back through latest_labels; the
review page for the root leaves the labelled items out, and `adray evaluate` on a manifest without their
labels takes them from the imports (metrics.json counts the label-derived rows).

Localisation is *not* asserted: the tiny BGAD this test can afford on CPU (random ``test_efficientnet``,
a few meta-epochs) does not find the synthetic defects (largest-region IoU with the true mask 0.0 on every
defective item, measured while writing this test), so the regions are checked for consistency with the
stored maps instead; ``test_decisions_regions.py`` checks localisation with a tiny M3DM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from adray import catalog, storage, synthetic
from adray.io.masks import decode_map_png16
from adray.pipeline import ScoreConfig, score_archive
from adray.pipeline.query import connect
from adray.regions import region_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.tiny_bgad import fit_tiny_bgad  # noqa: E402

pytestmark = pytest.mark.integration
PIXEL_MM = 0.25


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp("loop"))
    data = storage.join_url(root, "mvtec")
    synthetic.generate_mvtec_ad(
        data, categories=("bottle",), image_size=48, n_train=8, n_test_good=2, n_test_per_defect=1, seed=0
    )
    table, _ = catalog.build_manifest(data, "mvtec")
    table = table.append_column("pixel_size_mm", pa.array([PIXEL_MM] * table.num_rows, pa.float64()))
    manifest = storage.join_url(root, "manifest.parquet")
    catalog.write_manifest(table, manifest)
    return data, manifest


def _rows(root: str, run_id: str) -> list[dict]:
    cur = connect(root).execute("SELECT * FROM results WHERE run_id = ? ORDER BY item_id", [run_id])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _config(manifest: str, out: str, detectors: list[str], **kw) -> ScoreConfig:
    base = dict(input=manifest, output=out, detectors=detectors, max_pixels=10**6, batch_size=8)
    return ScoreConfig(**{**base, **kw})


def test_zero_shot_then_fitted_bgad_then_labels(ray_session, archive, tmp_path):
    from adray.labels import import_labels

    data, manifest = archive
    out = str(tmp_path / "results")
    zero = dict(weights="random", detector_options={"model_name": "adray-tiny-clip"}, run_id="zero")
    score_archive(_config(manifest, out, ["winclip"], **zero))
    rows = [r for r in _rows(out, "zero") if r["status"] == "ok"]
    assert len(rows) == 6  # test split: 2 good + 1 per defect type (4)
    assert all(r["is_anomalous"] is not None for r in rows)
    assert {r["threshold_source"] for r in rows} == {"uncalibrated_prompt_prob_0.5"}

    fit_rows = catalog.build_manifest(data, "auto", categories=["bottle"])[0].to_pylist()
    artifact = str(tmp_path / "models" / "bgad-bottle")
    fit_tiny_bgad(fit_rows, num_anomalies=0, calibration_fraction=0.25).save(artifact)
    score_archive(_config(manifest, out, [artifact], run_id="bgad"))
    rows = [r for r in _rows(out, "bgad") if r["status"] == "ok"]
    assert len(rows) == 6 and {r["threshold_source"] for r in rows} == {"heldout_normals_fpr_0.01"}
    assert all(r["is_anomalous"] is not None and r["pixel_threshold"] is not None for r in rows)
    assert sum(r["region_count"] for r in rows) > 0
    for r in rows:
        assert r["region_count"] >= len(r["regions"])
        if not r["regions"]:
            continue
        amap = decode_map_png16(storage.read_bytes(r["mask_uri"]), r["map_min"], r["map_max"])
        largest = r["regions"][0]
        assert largest["area_px"] == max(g["area_px"] for g in r["regions"])
        assert largest["area_mm2"] == pytest.approx(largest["area_px"] * PIXEL_MM**2)
        # the stored map is a 16-bit PNG: its region is the recorded one up to quantisation
        mask = region_mask(amap, r["pixel_threshold"], largest)
        assert abs(int(mask.sum()) - largest["area_px"]) <= max(2, largest["area_px"] // 10)

    labelled = rows[:3]
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "item_id,label,defect_type\n"
        + "".join(f"{r['item_id']},{'anomalous' if r['label'] else 'normal'},\n" for r in labelled)
    )
    import_labels(str(csv), out)
    got = connect(out).execute("SELECT item_id, label FROM latest_labels ORDER BY item_id").fetchall()
    want = sorted((r["item_id"], "anomalous" if r["label"] else "normal") for r in labelled)
    assert got == want
    assert np.isfinite([r["image_score"] for r in rows]).all()
    _review_skips_labelled(out, rows, {r["item_id"] for r in labelled})
    _evaluate_uses_labels(manifest, out, tmp_path, {r["item_id"] for r in labelled}, rows[0]["detector"])


def _review_skips_labelled(root: str, rows: list[dict], labelled: set[str]) -> None:
    """The review page for the root shows the unlabelled items and none of the labelled ones."""
    from adray.review.page import PageConfig, build_review
    from adray.review.select import Selection

    page = build_review(root, Selection(per_category=50, sample=10), PageConfig(thumb_size=32, workers=2))
    assert page.labelled_items == len(labelled) and page.unreadable == 0
    assert all(i not in page.html for i in labelled)
    assert all(r["item_id"] in page.html for r in rows if r["item_id"] not in labelled)


def _evaluate_uses_labels(manifest: str, root: str, tmp_path, labelled: set[str], detector: str) -> None:
    """`adray evaluate` on a manifest without labels for the labelled items takes them from the imports."""
    import json

    import pyarrow.parquet as pq

    from adray.cli import run_command

    table = pq.read_table(manifest)
    keep = [
        None if i in labelled else v for i, v in zip(table["item_id"].to_pylist(), table["label"].to_pylist())
    ]
    table = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array(keep, table["label"].type)
    )
    unlabelled = str(tmp_path / "unlabelled.parquet")
    pq.write_table(table, unlabelled)
    report = str(tmp_path / "report")
    argv = [
        "--results",
        root,
        "--input",
        unlabelled,
        "--report",
        report,
        "--run-id",
        "bgad",
        "--dataset",
        "none",
    ]
    assert run_command("evaluate", argv) == 0
    doc = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert doc["labels"]["n_items"] == len(labelled)
    assert doc["labels"]["used"] == {detector: len(labelled)}
