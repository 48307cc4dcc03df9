"""Fit exclusions are found wherever detectors record them; the join keeps only evaluable test items."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from adray.detectors.base import save_artifact
from adray.evaluation.join import EvaluationError, collect_fit_exclusions, join_ground_truth


def _artifact(path, detector: str, metadata: dict, config: dict | None = None) -> str:
    uri = str(path)
    save_artifact(uri, detector=detector, version=f"{detector}-v", config=config or {}, tensors={"w": torch.zeros(1)},
                  metadata=metadata)  # fmt: skip
    return uri


def test_item_ids_are_collected_from_artifacts_and_run_records(tmp_path):
    bgad = _artifact(
        tmp_path / "bgad", "bgad", {"anomaly_item_ids": ["a1", "a2"], "calibration_item_ids": ["c1"]}
    )
    m3dm = _artifact(
        tmp_path / "m3dm", "m3dm", {"fit": {"bank_item_ids": {"bagel": ["b1"]}, "dlf_item_ids": ["d1"]}}
    )
    winclip = _artifact(tmp_path / "wc", "winclip", {"reference_item_ids": {"carpet": ["r1", "r2"]}})
    record = {
        "run_id": "r",
        "detectors": [
            {"name": "m3dm", "version": "v", "artifact": m3dm},
            {"name": "gone", "version": "v", "artifact": str(tmp_path / "missing")},  # skipped, warned
        ],
        "config": {"detectors": ["winclip", bgad], "shots": 0},
        "references": {"carpet": ["ignored-zero-shot"]},
    }
    ex = collect_fit_exclusions([winclip], [record])
    assert ex.item_ids == {"a1", "a2", "c1", "b1", "d1", "r1", "r2"}
    assert ex.shots == {"winclip": 2}
    assert any(k.endswith(":fit.bank_item_ids") for k in ex.by_source)


def test_an_explicit_artifact_that_cannot_be_read_is_an_error(tmp_path):
    with pytest.raises(EvaluationError, match="cannot read --artifact .*missing"):
        collect_fit_exclusions([str(tmp_path / "missing")], [])


def test_k_shot_references_of_a_run_are_left_out():
    record = {
        "run_id": "r",
        "detectors": [],
        "config": {"shots": 1},
        "references": {"carpet": ["x"], "grid": ["y"]},
    }
    ex = collect_fit_exclusions([], [record])
    assert ex.item_ids == {"x", "y"} and ex.shots == {"winclip": 1}


def test_join_keeps_only_ok_labelled_test_items_not_fitted_on():
    manifest = pd.DataFrame(
        {
            "item_id": ["t", "n", "a", "f", "u", "e", "m"],
            "uri": list("tnafuem"),
            "category": ["c"] * 7,
            "split": ["train", "test", "test", "test", "test", "test", "test"],
            "label": [0, 0, 1, 1, None, 0, 1],
            "defect_type": ["good", "good", "x", "x", None, "good", "x"],
            "gt_mask_uri": [None, None, "m.png", "m.png", None, None, "m.png"],
        }
    )
    ids = ["t", "n", "a", "f", "u", "e", "z"]  # "m" never scored, "z" not in the manifest
    results = pd.DataFrame(
        {
            "item_id": ids, "detector": ["d"] * 7, "category": ["c"] * 7,
            "status": ["ok", "ok", "ok", "ok", "ok", "corrupt", "ok"],
            "image_score": [0.1, 0.2, 0.9, 0.8, 0.5, None, 0.3], "label": [0] * 7,
        }
    )  # fmt: skip
    ex = collect_fit_exclusions(
        [], [{"run_id": "r", "detectors": [{"name": "d", "anomaly_item_ids": ["f"]}]}]
    )
    frame, report = join_ground_truth(results, manifest, ex)
    assert sorted(frame["item_id"]) == ["a", "n"]
    assert frame.set_index("item_id")["label"].to_dict() == {"a": 1, "n": 0}  # the manifest's label wins
    assert report.excluded_train == {"d": 1} and report.excluded_fit == {"d": 1}
    assert report.failed == {"d": 1} and report.not_in_manifest == {"d": 1} and report.unlabelled["d"] == 2
    assert report.unscored == {"d": 1}  # "m"
