"""BGAD on 1 vs 2 Ray Train workers (CPU, gloo): the same optimisation (adray.detectors.bgad.parallel).

Both fits take the same optimiser steps over the same patches (step counts, patch counts and the
order-aware patch digest of every meta-epoch are equal), and their flows give the same validation
log-likelihoods within ``LL_TOL``.

Tolerance: the two fits differ only in float32 summation order (the 2-worker gradient is the sum of two
half-chunk gradients; the chunk quantile and loss see bit-identical values), which moves gradient entries
by ~1e-5 relative at most (tests/unit/test_bgad_parallel.py). Adam turns that into parameter differences of
~1e-5 x lr per step, ~1e-8 over the ~30 steps here, far below the float32 resolution of the per-dimension
log-likelihood (~1e-7 at |ll| ~ 1). ``LL_TOL = 1e-5`` (about a hundred ulps) leaves room for rare
near-zero gradient entries whose rounding changes Adam's early steps. The control shows that it separates:
the pre-split behaviour (each worker its own batch, i.e. a global batch of ``W x batch_size`` with half the
steps) moves the same log-likelihoods by more than ``10 x LL_TOL`` even in this short fit
(measured in two runs: 1 vs 2 workers at most 1.2e-7, control 6.0e-4 and 9.2e-4).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adray.catalog import build_manifest
from adray.detectors.bgad import BgadConfig, BgadTrainConfig
from adray.detectors.bgad.detector import BgadDetector

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.tiny_bgad import bottle_archive, tiny_model_config, tiny_train_config  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LL_TOL = 1e-5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("bgad-workers") / "mvtec")
    return bottle_archive(root, image_size=64, n_train=11, n_test_good=3, n_test_per_defect=2, seed=1)


def _configs(**train) -> tuple[BgadConfig, BgadTrainConfig]:
    # chunk 999: odd, so the 2 workers' shards differ by one patch; levels of 16x16, 8x8, 4x4 patches
    options = dict(meta_epochs=2, batch_size=4, chunk_size=999, num_anomalies=3)
    options.update(copy_paste_variants=1, anomaly_repeats=2)
    return tiny_model_config(image_size=64), tiny_train_config(**{**options, **train})


def _validation_ll(artifact: str, dataset: str) -> list[torch.Tensor]:
    """Per-level ll maps of the test/good images (never used in training) under the fitted flows."""
    from adray.detectors.bgad.data import load_items
    from adray.detectors.bgad.fit import build_feature_cache

    det = BgadDetector.load(artifact, device="cpu")
    table, _ = build_manifest(dataset)
    rows = [r for r in table.to_pylist() if r["split"] == "test" and int(r["label"] or 0) == 0]
    cache = build_feature_cache(det.model, load_items(rows, "calibration", det.model.cfg.image_size))
    with torch.no_grad():
        return det.model.level_log_likelihoods(cache.features)


def test_one_and_two_workers_take_the_same_steps_over_the_same_patches(ray_session, dataset, tmp_path):
    from adray.detectors.artifact import read_artifact_config
    from adray.detectors.bgad.session import fit_bgad_local
    from adray.train.bgad import fit_bgad

    model_cfg, train_cfg = _configs()
    runs = {}
    for workers in (1, 2):
        out = str(tmp_path / f"w{workers}" / "bgad-bottle")
        summary = fit_bgad(dataset, out, model_cfg, train_cfg, workers=workers, run_name=f"w{workers}")
        last = summary.last_metrics  # rank 0's: with 2 workers it trained its share of every chunk only
        assert last["world_size"] == workers
        # rank 0 takes the larger half of each chunk: between half and all (one worker: all)
        assert last["patches"] / workers <= last["rank_patches"] < last["patches"] / workers + last["steps"]
        runs[workers] = (read_artifact_config(out)["metadata"]["distributed"], _validation_ll(out, dataset))
    (d1, ll1), (d2, ll2) = runs[1], runs[2]
    assert d1["workers"] == 1 and d2["workers"] == 2
    assert d2["rank_chunk"] == [500, 499] and d2["global_chunk"] == d1["global_chunk"] == 999
    assert d1["steps_per_meta_epoch"] == d2["steps_per_meta_epoch"] and d1["optimizer_steps"] > 0
    assert d1["patches"] == d2["patches"] and d1["patch_digests"] == d2["patch_digests"]
    diffs = [float((a - b).abs().max()) for a, b in zip(ll1, ll2)]
    assert max(diffs) < LL_TOL, diffs

    # control: the old per-worker batches (global batch 2 x 4 images, half the steps) land far away
    table, _ = build_manifest(dataset)
    old = fit_bgad_local(table.to_pylist(), model_cfg, _configs(batch_size=8)[1], device="cpu")
    out = str(tmp_path / "old" / "bgad-bottle")
    old.save(out)
    control = max(float((a - b).abs().max()) for a, b in zip(ll1, _validation_ll(out, dataset)))
    assert control > 10 * LL_TOL, (control, diffs)
    print(
        f"max |ll(1 worker) - ll(2 workers)| per level {np.round(diffs, 8).tolist()}; control {control:.4f}"
    )
