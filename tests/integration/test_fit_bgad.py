"""BGAD fit on Ray Train with generated MVTec-layout data: artifact -> scoring stages; kill + resume; 2 workers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from adray import storage
from adray.catalog import build_manifest
from adray.detectors.base import load_detector, read_artifact_config
from adray.detectors.bgad import BgadConfig, BgadTrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.tiny_bgad import bottle_archive, tiny_model_config, tiny_train_config  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("bgad-data") / "mvtec")
    return bottle_archive(root, image_size=64, n_train=10, n_test_good=3, n_test_per_defect=2)


def _configs(**train) -> tuple[BgadConfig, BgadTrainConfig]:
    options = dict(meta_epochs=3, chunk_size=1024, num_anomalies=4, copy_paste_variants=1, anomaly_repeats=2)
    return tiny_model_config(image_size=64), tiny_train_config(**{**options, **train})


def _score_with_pipeline_stages(artifact: str, dataset: str) -> pa.Table:
    from adray.pipeline.decode import IMAGE_BYTES, decode_batch
    from adray.pipeline.detector_set import DetectorSet
    from adray.pipeline.scoring import score_batch
    from adray.pipeline.spec import DetectorSpec

    table, _ = build_manifest(dataset)
    table = table.filter(pa.compute.equal(table["split"], "test"))
    spec = DetectorSpec(artifact, device="cpu")
    version = read_artifact_config(artifact)["version"]
    table = table.append_column("detector_version", pa.array([version] * table.num_rows, pa.string()))
    table = table.append_column(
        IMAGE_BYTES, pa.array([storage.read_bytes(u) for u in table["uri"].to_pylist()], pa.binary())
    )
    decoded = decode_batch(table, spec=spec, max_pixels=10**6, needs_xyz=False)
    return score_batch(DetectorSet(spec), decoded)


def test_local_mode_fit_writes_an_artifact_the_scoring_stages_load(ray_session, dataset, tmp_path):
    from adray.train.bgad import fit_bgad

    model_cfg, train_cfg = _configs()
    out = str(tmp_path / "models" / "bgad-bottle")
    summary = fit_bgad(dataset, out, model_cfg, train_cfg, workers=0)
    doc = read_artifact_config(out)
    assert doc["detector"] == "bgad" and doc["version"] == summary.version
    meta = doc["metadata"]
    assert len(meta["anomaly_item_ids"]) == 4 and meta["threshold"] is not None
    assert doc["config"]["train"]["num_anomalies"] == 4
    assert doc["config"]["backbone"] == {"name": "test_efficientnet", "weights": "random", "seed": 0}
    assert np.isfinite(summary.last_metrics["loss"]) and summary.last_metrics["step"] == 2
    det = load_detector(out)
    assert det.threshold == pytest.approx(meta["threshold"])
    scored = _score_with_pipeline_stages(out, dataset).to_pydict()
    assert set(scored["status"]) == {"ok"}
    assert all(np.isfinite(scored["image_score"]))


@pytest.mark.slow
def test_two_worker_gloo_fit_killed_mid_way_resumes_from_its_last_checkpoint(ray_session, dataset, s3_bucket):
    # Local mode (workers=0) keeps no checkpoints, so resume needs a real worker group: one 2-worker test.
    from adray.train.bgad import fit_bgad

    model_cfg, train_cfg = _configs()
    out = f"{s3_bucket}/models/bgad-bottle"
    with pytest.raises(Exception, match="injected failure"):
        fit_bgad(dataset, out, model_cfg, train_cfg, workers=2, run_name="resume-me", fail_after_epoch=0)
    assert not storage.exists(storage.join_url(out, "config.json"))
    assert storage.exists(f"{s3_bucket}/models/checkpoints/resume-me")
    summary = fit_bgad(dataset, out, model_cfg, train_cfg, workers=2, run_name="resume-me")
    assert summary.start_meta_epoch == 1  # meta-epoch 0 came from the checkpoint
    doc = read_artifact_config(out)
    assert doc["metadata"]["resumed_from_meta_epoch"] == 1 and doc["metadata"]["workers"] == 2
    assert summary.last_metrics["world_size"] == 2 and summary.last_metrics["meta_epoch"] == 2
    scored = _score_with_pipeline_stages(out, dataset).to_pydict()
    assert set(scored["status"]) == {"ok"} and all(np.isfinite(scored["image_score"]))
