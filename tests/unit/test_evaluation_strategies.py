"""The evaluation of --detector auto runs: which rung each category was scored on and why, the rungs
compared where a category has more than one, and the fit items of the resolved models left out.

A small results root written the way the pipeline writes it (results schema, run records with ``auto``,
the model registry, a plan file): carpet scored zero-shot in run ``auto-1`` then k-shot in ``auto-2``
(one reference normal), bottle scored by a registered BGAD model fitted on one of its test normals.
Scores are planted; the test is about evaluation, not detection.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from adray import metrics, storage
from adray.catalog import build_manifest, write_manifest
from adray.detectors.base import save_artifact
from adray.evaluation import EvalConfig, evaluate, write_report
from adray.evaluation.join import collect_fit_exclusions
from adray.pipeline.results_store import ResultsStore, build_run_record
from adray.pipeline.rows import results_table
from adray.schemas import load_schema
from adray.strategy.registry import register_model
from adray.synthetic import generate_mvtec_ad

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.results_files import write_result_files  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _write_run(out: str, run_id: str, rows: list[dict], auto: dict, references: dict, at: datetime) -> None:
    cols: dict[str, list] = {k: [] for k in load_schema("results").names}
    for r in rows:
        values = dict(run_id=run_id, pc_uri=None, threshold=None, is_anomalous=None, mask_uri=None,
                      map_min=None, map_max=None, status="ok", error=None, scored_at=at, latency_ms=1.0,
                      date="2026-01-01", note=None, **r)  # fmt: skip
        for k in cols:
            cols[k].append(values.get(k))
    table = results_table(cols)
    write_result_files(out, table, run_id)
    record = build_run_record(
        run_id=run_id, started_at=at, finished_at=at, input_uri="manifest", output=out,
        detectors=[{"name": d, "version": f"{d}-v"} for d in sorted(set(table["detector"].to_pylist()))],
        counts={"in": len(rows), "out": len(rows)}, timings={"total_s": 1.0},
        config={"detectors": ["auto"], "shots": 0}, extra={"auto": auto, "references": references},
    )  # fmt: skip
    ResultsStore(out).write_run_record(record)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("strategies")
    data, out = str(base / "data"), str(base / "out")
    generate_mvtec_ad(data, categories=("carpet", "bottle"), image_size=16, n_train=1, n_test_good=4,
                      n_test_per_defect=1, seed=0)  # fmt: skip
    table, _ = build_manifest(data)
    manifest = str(base / "manifest.parquet")
    write_manifest(table, manifest)
    items = [r for r in table.to_pylist() if r["split"] == "test"]
    normals = {c: sorted(r["item_id"] for r in items if r["category"] == c and r["label"] == 0)
               for c in ("carpet", "bottle")}  # fmt: skip
    anomalies = sorted(r["item_id"] for r in items if r["category"] == "bottle" and r["label"] == 1)
    reference, trained_on = normals["carpet"][0], normals["bottle"][0]
    artifact = str(base / "out" / "models" / "bottle" / "bgad-x")
    save_artifact(artifact, detector="bgad", version="bgad-v", config={}, tensors={"w": torch.zeros(1)},
                  metadata={"anomaly_item_ids": anomalies[:1]})  # fmt: skip
    register_model(out, category="bottle", detector="bgad", version="bgad-v", uri=artifact,
                   item_ids=[trained_on, anomalies[0]], strategy="supervised")  # fmt: skip
    rng = np.random.default_rng(0)

    def row(r: dict, det: str, strategy: str, score: float) -> dict:
        keep = ("item_id", "uri", "category", "label", "defect_type", "content_token")
        return {**{k: r[k] for k in keep}, "detector": det, "detector_version": f"{det}-{strategy}",
                "strategy": strategy, "image_score": score}  # fmt: skip

    carpet = [r for r in items if r["category"] == "carpet"]
    bottle = [r for r in items if r["category"] == "bottle"]
    zero = {r["item_id"]: float(rng.random()) for r in carpet}
    why_zero = "no registered model and no normal images: WinCLIP with prompts only"
    _write_run(out, "auto-1",
               [row(r, "winclip", "zero-shot", zero[r["item_id"]]) for r in carpet]
               + [row(r, "bgad", "supervised", 0.2 + 0.7 * r["label"]) for r in bottle],
               {"carpet": {"strategy": "zero-shot", "detector": "winclip", "why": why_zero},
                "bottle": {"strategy": "supervised", "detector": artifact, "why": "registered bgad model"}},
               {}, T0)  # fmt: skip
    _write_run(out, "auto-2", [row(r, "winclip", "k-shot", 0.1 + 0.8 * r["label"]) for r in carpet],
               {"carpet": {"strategy": "k-shot", "detector": "winclip", "why": "labelled normals: WinCLIP+"}},
               {"carpet": [reference]}, T0 + timedelta(hours=1))  # fmt: skip
    plan = {"categories": [{"category": "carpet", "strategy": "k-shot", "why": "5 normal image(s)",
                            "next_step": "10 more labelled anomalies with masks → supervised (BGAD)"}]}  # fmt: skip
    storage.write_text(
        storage.join_url(out, "plans", "plan-20260101T000000000000Z-abc.json"), json.dumps(plan)
    )
    return {"out": out, "manifest": manifest, "reference": reference, "trained_on": trained_on,
            "anomalies": anomalies, "zero": zero, "carpet": carpet, "artifact": artifact}  # fmt: skip


def test_fit_items_of_auto_runs_are_found_through_the_resolved_models(root):
    records = ResultsStore(root["out"]).run_records()
    ex = collect_fit_exclusions([], records, registry_root=root["out"])
    assert {root["reference"], root["trained_on"], root["anomalies"][0]} <= ex.item_ids
    without = collect_fit_exclusions([], [{**r, "auto": None} for r in records], registry_root=root["out"])
    assert root["trained_on"] not in without.item_ids  # what config.detectors == ["auto"] alone finds


def test_each_category_says_its_strategy_why_and_compares_its_rungs(root):
    doc = evaluate(root["out"], root["manifest"], config=EvalConfig(pixel_size=0))
    cats = doc["strategies"]["categories"]
    assert doc["strategies"]["plan"].endswith(".json")
    carpet, bottle = cats["carpet"], cats["bottle"]
    assert (carpet["strategy"], carpet["run_id"], carpet["history"]) == (
        "k-shot",
        "auto-2",
        ["zero-shot", "k-shot"],
    )
    assert carpet["why"] == "labelled normals: WinCLIP+" and carpet["why_source"] == "run record"
    assert carpet["planned"]["next_step"].startswith("10 more labelled anomalies")
    assert (bottle["strategy"], bottle["detector"]) == ("supervised", "bgad") and "comparison" not in bottle
    assert bottle["why"] == "registered bgad model" and bottle["planned"] is None
    kept = [r for r in root["carpet"] if r["item_id"] != root["reference"]]
    labels = np.array([r["label"] for r in kept])
    cmp = carpet["comparison"]
    assert cmp["k-shot"]["image_auroc"] == 1.0 and cmp["k-shot"]["runs"] == ["auto-2"]
    zero = metrics.image_auroc(labels, np.array([root["zero"][r["item_id"]] for r in kept]))
    assert cmp["zero-shot"]["image_auroc"] == pytest.approx(zero)
    assert cmp["zero-shot"]["n_normal"] + cmp["zero-shot"]["n_anomalous"] == len(kept)
    bgad = doc["detectors"]["bgad"]["categories"]["bottle"]  # its training normal and anomaly left out
    assert (bgad["n_normal"], bgad["n_anomalous"]) == (3, len(root["anomalies"]) - 1)
    assert doc["join"]["excluded_fit"]["bgad"] == 2


def test_the_report_shows_the_strategy_rows_and_the_comparison(root, tmp_path):
    doc = evaluate(root["out"], root["manifest"], config=EvalConfig(pixel_size=0))
    _, html_url = write_report(doc, str(tmp_path / "report"))
    page = Path(html_url).read_text()
    assert "Strategies (--detector auto)" in page
    assert (
        "<td>carpet</td><td>k-shot</td><td>winclip</td><td>auto-2</td><td>labelled normals: WinCLIP+</td>"
        in page
    )
    assert (
        "<td>bottle</td><td>supervised</td><td>bgad</td><td>auto-1</td><td>registered bgad model</td>" in page
    )
    assert "zero-shot → k-shot" in page and "carpet: strategies compared" in page
    table = page.split("carpet: strategies compared", 1)[1].split("</table>", 1)[0]
    assert "<td>zero-shot</td><td>winclip</td><td>auto-1</td>" in table and "<td>k-shot</td>" in table
    assert "bottle: strategies compared" not in page
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["strategies"]["categories"]["carpet"]["comparison"]["k-shot"]["image_auroc"] == 1.0
