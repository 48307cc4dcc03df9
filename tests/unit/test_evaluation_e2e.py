"""evaluate on a real synthetic MVTec AD dataset with committed results written the way the pipeline writes them.

The fixture's "detector" is a stand-in on purpose (the test is about evaluation, not detection): its anomaly
map is the ground-truth mask blurred plus noise, with one anomalous item given a flat low map (a false negative) and
one normal item given a bright blob (a false positive). Maps go through the real 16-bit PNG codec, rows
through the results schema, the run record through its validator, the BGAD artifact through save_artifact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy import ndimage

from adray import metrics, storage
from adray.catalog import build_manifest, write_manifest
from adray.detectors.base import save_artifact
from adray.evaluation import EvalConfig, evaluate
from adray.io.images import read_mask
from adray.io.masks import decode_map_png16, encode_map_png16, mask_key
from adray.pipeline.rows import build_run_record, results_table, write_run_record
from adray.synthetic import generate_mvtec_ad

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.results_files import write_result_files  # noqa: E402

SIZE = 48
DETECTORS = ("winclip", "bgad")


def build_scored_dataset(root: Path) -> dict:
    """Synthetic data, manifest, results of two detectors in one committed run, a BGAD artifact."""
    data, out = str(root / "data"), str(root / "out")
    generate_mvtec_ad(
        data, categories=("carpet", "bottle"), image_size=SIZE, n_train=2, n_test_good=5, n_test_per_defect=2
    )
    table, _ = build_manifest(data)
    manifest_uri = str(root / "manifest.parquet")
    write_manifest(table, manifest_uri)
    items = table.to_pandas()
    test_anom = items[(items["split"] == "test") & (items["label"] == 1)].sort_values("item_id")
    test_good = items[(items["split"] == "test") & (items["label"] == 0)].sort_values("item_id")
    weak = test_anom[test_anom["category"] == "carpet"]["item_id"].iloc[0]
    loud = test_good[test_good["category"] == "bottle"]["item_id"].iloc[0]
    fitted_on = test_anom[test_anom["category"] == "bottle"]["item_id"].iloc[0]
    failed = test_good[test_good["category"] == "carpet"]["item_id"].iloc[-1]
    artifact = str(root / "artifacts" / "bgad-bottle")
    save_artifact(
        artifact,
        detector="bgad",
        version="bgad-v1",
        config={"category": "bottle"},
        tensors={"w": torch.zeros(1)},
        metadata={"anomaly_item_ids": {"bottle": [fitted_on]}},
    )
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {k: [] for k in results_table_fields()}
    for det in DETECTORS:
        version = f"{det}-v1"
        for row in items.itertuples(index=False):
            mask = (
                read_mask(storage.read_bytes(row.gt_mask_uri))
                if isinstance(row.gt_mask_uri, str)
                else np.zeros((SIZE, SIZE), bool)
            )
            amap = ndimage.gaussian_filter(mask.astype(np.float32), 1.5)
            amap += rng.random((SIZE, SIZE), dtype=np.float32) * 0.15
            if row.item_id == weak:  # a miss: below every normal item of its category
                amap = rng.random((SIZE, SIZE), dtype=np.float32) * 0.05
            if row.item_id == loud:
                amap[5:12, 5:12] += 0.9
            status = "corrupt" if row.item_id == failed else "ok"
            png, lo, hi = encode_map_png16(amap)
            mask_uri = storage.join_url(out, mask_key(version, row.item_id))
            storage.write_bytes(mask_uri, png)
            ok = status == "ok"
            values = dict(
                run_id="run-1", item_id=row.item_id, uri=row.uri, pc_uri=None, category=row.category,
                detector=det, detector_version=version, image_score=float(amap.max()) if ok else None,
                threshold=0.6 if det == "bgad" else None, is_anomalous=None,
                mask_uri=mask_uri if ok else None, map_min=lo if ok else None, map_max=hi if ok else None,
                status=status, error=None if ok else "corrupt: bad bytes", label=row.label,
                defect_type=row.defect_type, content_token=row.content_token,
                scored_at=pd_now(), latency_ms=1.0, date="2026-01-01", note=None,
            )  # fmt: skip
            for k, v in values.items():
                cols[k].append(v)
    full = results_table({k: v for k, v in cols.items() if v})  # columns this fixture leaves unset: null
    write_result_files(out, full, "run-1")
    record = build_run_record(
        run_id="run-1", started_at=pd_now(), finished_at=pd_now(), input_uri=manifest_uri, output=out,
        detectors=[{"name": "winclip", "version": "winclip-v1"}, {"name": "bgad", "version": "bgad-v1",
                   "artifact": artifact}],
        counts={"in": full.num_rows, "out": full.num_rows}, timings={"total_s": 1.0}, config={},
    )  # fmt: skip
    write_run_record(out, record)
    return {
        "results": out, "manifest": manifest_uri, "items": items, "weak": weak, "loud": loud,
        "fitted_on": fitted_on, "failed": failed, "artifact": artifact,
    }  # fmt: skip


def results_table_fields() -> list[str]:
    from adray.schemas import load_schema

    return load_schema("results").names


def pd_now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return build_scored_dataset(tmp_path_factory.mktemp("scored"))


@pytest.fixture(scope="module")
def doc(scored):
    return evaluate(scored["results"], scored["manifest"], config=EvalConfig(pixel_size=0, worst=4))


def test_evaluation_leaves_out_train_fit_and_failed_items(scored, doc):
    items = scored["items"]
    n_test = int((items["split"] == "test").sum())
    for det in DETECTORS:
        assert doc["join"]["excluded_fit"][det] == 1  # the BGAD anomaly, left out for every detector
        assert doc["join"]["excluded_train"][det] == int((items["split"] == "train").sum())
        assert doc["join"]["failed"][det] == 1
        assert doc["detectors"][det]["n_items"] == n_test - 2
    assert doc["fit_exclusions"]["n_items"] == 1
    assert any("anomaly_item_ids" in k for k in doc["fit_exclusions"]["sources"])
    bottle = doc["detectors"]["winclip"]["categories"]["bottle"]
    n_bottle_anom = int(((items["category"] == "bottle") & (items["label"] == 1)).sum())
    assert bottle["n_anomalous"] == n_bottle_anom - 1


def test_metrics_equal_the_metrics_module_on_the_same_items(scored, doc):
    items = scored["items"].set_index("item_id")
    results = pq.read_table(Path(scored["results"]) / "results" / "detector=winclip").to_pandas()
    keep = results[(results["status"] == "ok") & (results["item_id"] != scored["fitted_on"])]
    keep = keep[keep["item_id"].map(items["split"]) == "test"]
    for cat, rows in keep.groupby("category"):
        labels = rows["item_id"].map(items["label"]).to_numpy(int)
        scores = rows["image_score"].to_numpy(float)
        got = doc["detectors"]["winclip"]["categories"][cat]
        assert got["image_auroc"] == pytest.approx(metrics.image_auroc(labels, scores))
        assert got["aupr"] == pytest.approx(metrics.aupr(labels, scores))
        assert got["f1_max"] == pytest.approx(metrics.f1_max(labels, scores))
        masks, maps = [], []
        for r in rows.itertuples():
            maps.append(decode_map_png16(storage.read_bytes(r.mask_uri), r.map_min, r.map_max))
            gt = items.loc[r.item_id, "gt_mask_uri"]
            masks.append(read_mask(storage.read_bytes(gt)) if isinstance(gt, str) else None)
        pm = metrics.pixel_metrics(masks, maps)
        assert got["pixel_auroc"] == pytest.approx(pm.pixel_auroc)
        assert got["aupro"] == pytest.approx(pm.aupro)
    mean = doc["detectors"]["winclip"]["mean"]
    cats = doc["detectors"]["winclip"]["categories"].values()
    assert mean["aupro"] == pytest.approx(np.mean([c["aupro"] for c in cats]))


def test_worst_misses_are_the_planted_ones(scored, doc):
    det = doc["detectors"]["winclip"]
    assert det["worst_false_negatives"][0]["item_id"] == scored["weak"]
    assert det["worst_false_positives"][0]["item_id"] == scored["loud"]
    assert det["worst_false_negatives"][0]["severity"] > 0.5
    assert det["categories"]["carpet"]["image_auroc"] < 1.0


def test_thresholds_keep_their_false_positive_rate(doc):
    for det in doc["detectors"].values():
        for cat in det["categories"].values():
            for t in cat["thresholds"]:
                assert t["fpr"] <= t["target_fpr"] + 1e-9
            assert cat["roc"]["fpr"][0] == 0.0 and cat["roc"]["tpr"][-1] == 1.0
            assert cat["pro"]["fpr"][-1] == pytest.approx(0.3)
            assert sum(cat["histogram"]["normal"]) == cat["n_normal"]
    own = doc["detectors"]["bgad"]["categories"]["carpet"]["detector_threshold"]
    assert own["threshold"] == pytest.approx(0.6)


def test_published_numbers_come_with_mvtec_categories(doc):
    assert doc["dataset"] == "mvtec_ad"
    pub = doc["detectors"]["bgad"]["published"]
    assert {p["method"] for p in pub} == {"BGAD"}
    assert any(p["category"] == "carpet" and p["metric"] == "aupro" for p in pub)
    winclip = doc["detectors"]["winclip"]
    assert winclip["setting"] == "zero-shot"
    assert any(
        p["category"] is None and p["metric"] == "image_auroc" and p["value"] == 0.918
        for p in winclip["published"]
    )


def test_evaluate_command_writes_json_and_html(scored, tmp_path, capsys):
    from adray.cli import run_command

    report = tmp_path / "report"
    rc = run_command(
        "evaluate",
        ["--results", scored["results"], "--input", scored["manifest"], "--report", str(report),
         "--detector", "bgad", "--artifact", scored["artifact"], "--pixel-size", "32", "--dataset", "none"],
    )  # fmt: skip
    assert rc == 0
    doc = json.loads((report / "metrics.json").read_text())
    assert list(doc["detectors"]) == ["bgad"] and doc["detectors"]["bgad"]["published"] == []
    assert doc["config"]["pixel_size"] == 32
    html = (report / "report.html").read_text()
    assert "<svg" in html and "data:image/png;base64," in html
    assert "bgad" in capsys.readouterr().out


def test_no_committed_results_is_a_clear_error(scored, tmp_path):
    with pytest.raises(ValueError, match="no committed results"):
        evaluate(str(tmp_path / "empty"), scored["manifest"])


@pytest.mark.parametrize("bad", ["missing_manifest", "not_parquet", "missing_artifact"])
def test_evaluate_command_user_errors_are_one_line_exit_2(scored, tmp_path, capsys, bad):
    from adray.cli import main

    manifest, extra = scored["manifest"], []
    if bad == "missing_manifest":
        manifest = str(tmp_path / "gone.parquet")
    elif bad == "not_parquet":
        manifest = str(tmp_path / "bad.parquet")
        Path(manifest).write_text("not a parquet file")
    else:
        extra = ["--artifact", str(tmp_path / "no-artifact")]
    rc = main(["evaluate", "--results", scored["results"], "--input", manifest, "--report",
               str(tmp_path / "r"), *extra])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("adray evaluate: error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
