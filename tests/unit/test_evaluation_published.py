"""Published numbers: consistent tables, clear means vs per-category cells, dataset recognition."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from adray.evaluation.published import (
    DATASET_CATEGORIES,
    METRICS,
    PUBLISHED,
    default_setting,
    published_for,
    recognise_dataset,
)


def test_every_number_is_a_fraction_of_a_known_metric_and_category():
    for p in PUBLISHED:
        assert 0.0 < p.value <= 1.0, p
        assert p.metric in METRICS
        assert p.category is None or p.category in DATASET_CATEGORIES[p.dataset]
        assert p.is_mean == (p.category is None)


def test_per_category_cells_average_to_the_published_means():
    cells, means = defaultdict(list), {}
    for p in PUBLISHED:
        key = (p.method, p.dataset, p.setting, p.metric)
        if p.is_mean:
            means[key] = p.value
        else:
            cells[key].append(p.value)
    assert len(cells) == 9
    for key, values in cells.items():
        assert len(values) == len(DATASET_CATEGORIES[key[1]]), key
        assert np.mean(values) == pytest.approx(means[key], abs=0.0015), key


def test_the_headline_numbers():
    def mean(det, ds, setting, metric):
        return next(p.value for p in published_for(det, ds, setting) if p.metric == metric and p.is_mean)

    assert mean("winclip", "mvtec_ad", "zero-shot", "image_auroc") == 0.918
    assert mean("winclip", "visa", "zero-shot", "aupro") == 0.568
    assert mean("winclip", "mvtec_ad", "1-shot", "image_auroc") == 0.931
    assert mean("m3dm", "mvtec_3d", "RGB+3D", "aupro") == 0.964
    assert mean("bgad", "mvtec_ad", "10 anomalies", "image_auroc") == 0.993
    unverified = [p for p in PUBLISHED if not p.verified]
    assert unverified and {(p.method, p.metric) for p in unverified} == {
        ("M3DM", "pixel_auroc"),
        ("M3DM", "aupro"),
    }


def test_datasets_are_recognised_by_category_names():
    assert recognise_dataset(["bottle", "carpet"]) == "mvtec_ad"
    assert recognise_dataset(["bagel", "cable_gland"]) == "mvtec_3d"
    assert recognise_dataset(["pcb1", "candle"]) == "visa"
    assert recognise_dataset(["bottle", "bagel"]) is None
    assert recognise_dataset(["widget"]) is None and recognise_dataset([]) is None
    assert published_for("bgad", None) == []
    assert default_setting("winclip", 4) == "4-shot" and default_setting("winclip", None) == "zero-shot"
