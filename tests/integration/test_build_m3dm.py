"""Build M3DM on the generated MVTec 3D-AD layout with Ray (tiny random backbones), score the test items,
and check that RGB + XYZ finds the 3D-only defects (invisible in RGB) better than RGB alone."""

from __future__ import annotations

import json

import pytest

from adray.detectors.base import read_artifact_config
from adray.synthetic import generate_mvtec_3d
from adray.train.m3dm_compare import compare_modes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mvtec3d"))
    generate_mvtec_3d(
        root,
        categories=("cookie",),
        image_size=64,
        n_train=32,
        n_validation=8,
        n_test_good=12,
        n_test_per_defect=6,
        defects=("dent_3d_only", "bump_3d_only", "color"),
        seed=0,
    )
    return root


@pytest.fixture(scope="module")
def results(ray_session, dataset, tmp_path_factory):
    # rgb+xyz+uff trains UFF with 2 Ray Train DDP workers (gloo); features come from 2 Ray Data actors
    work = str(tmp_path_factory.mktemp("m3dm-artifacts"))
    return compare_modes(
        dataset, "cookie", ["rgb", "rgb+xyz+uff"], work, tiny=True, workers=2, uff_workers=2, uff_steps=20
    )


def test_builds_score_every_test_item_and_record_provenance(results):
    assert (
        results["rgb"]["n_test"] == results["rgb+xyz+uff"]["n_test"] == 12 + 3 * 6
    )  # every test item scored
    doc = read_artifact_config(results["rgb+xyz+uff"]["artifact"])
    meta = doc["metadata"]
    assert meta["n_bank_items"] == 32 and meta["n_heldout_items"] == 8 and meta["skipped"] == []
    assert set(doc["files"]) == {"weights.safetensors", "banks.safetensors", "dlf.safetensors"}
    assert doc["config"]["backbones"]["point"] == "random:seed=0"
    assert meta["uff_final_loss"] is not None


def test_rgb_plus_xyz_beats_rgb_on_3d_only_defects(results):
    # 12 good vs 12 3D-only test items (dents / bumps in xyz, rgb unchanged); see the README's figures
    print(json.dumps({k: v["auroc"] for k, v in results.items()}, indent=1))
    rgb, both = results["rgb"]["auroc"], results["rgb+xyz+uff"]["auroc"]
    assert both["3d_only"] >= 0.7
    assert both["3d_only"] > rgb["3d_only"] + 0.15


def test_build_command_writes_a_loadable_artifact(ray_session, tmp_path):
    from adray.cli import run_command
    from adray.detectors.base import load_detector

    # what the command writes, not how well it detects: a few items give the bank and the held-out normals
    data, out = str(tmp_path / "data"), str(tmp_path / "xyz")
    counts = {"n_train": 4, "n_validation": 2, "n_test_good": 1, "n_test_per_defect": 0}
    generate_mvtec_3d(data, categories=("cookie",), **counts)
    argv = ["--train", data, "--category", "cookie", "--output", out, "--mode", "xyz", "--tiny"]
    assert (
        run_command(
            "build-m3dm", argv + ["--weights", "random", "--point-weights", "random", "--workers", "1"]
        )
        == 0
    )
    det = load_detector(out)
    assert det.config.mode == "xyz" and list(det.banks) == ["xyz"] and det.image_svm is None
    meta = read_artifact_config(out)["metadata"]
    assert (meta["n_bank_items"], meta["n_heldout_items"]) == (4, 2)


def test_pipeline_scores_the_artifact(ray_session, dataset, results, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as pads

    from adray import storage
    from adray.metrics import image_auroc
    from adray.pipeline import ScoreConfig, score_archive

    out = str(tmp_path / "scores")
    artifact = results["rgb+xyz+uff"]["artifact"]
    score_archive(ScoreConfig(input=dataset, output=out, detectors=[artifact], categories=["cookie"]))
    fs, path = storage.pyarrow_filesystem(storage.join_url(out, "results"))
    hive = pads.partitioning(pa.schema([("detector", pa.string()), ("date", pa.string())]), flavor="hive")
    rows = pads.dataset(path, filesystem=fs, format="parquet", partitioning=hive).to_table().to_pylist()
    assert len(rows) == 12 + 3 * 6 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    keep = [r for r in rows if r["label"] == 0 or str(r["defect_type"]).endswith("_3d_only")]
    auroc = image_auroc(np.array([r["label"] for r in keep]), np.array([r["image_score"] for r in keep]))
    assert auroc == pytest.approx(
        results["rgb+xyz+uff"]["auroc"]["3d_only"], abs=1e-6
    )  # same scores as detector.score
    assert auroc > results["rgb"]["auroc"]["3d_only"] + 0.15  # rgb+xyz beats rgb on 3D-only, via the pipeline
