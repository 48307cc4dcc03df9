"""Supervised BGAD vs its own unsupervised variant, on seen and unseen defect types (plain torch, no Ray).

    .venv/bin/python jobs/benchmark.py bgad-compare --data /tmp/bgad-compare --generate
    .venv/bin/python -m adray.bench.bgad_compare --data /tmp/bgad-compare --generate   # the same, standalone

(``python -m adray.detectors.bgad.compare`` still runs this; it moved here from the detector's folder.)

Both variants share the backbone, flows' initialisation, schedule and calibration split; the supervised
one uses ``--num-anomalies`` test anomalies of the ``--seen-defects`` types. Evaluation uses the test split
minus those training anomalies, for both variants: "seen" = good items + anomalies of seen types, "unseen"
= good items + anomalies of the other types. Maps are compared with masks at the model size.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import ConfigDict, Field

from adray import storage
from adray.bench.bgad_config import BgadBenchConfig
from adray.config import Flag, add_flags, flag_values
from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig, configs_from_flags
from adray.detectors.bgad.detector import BgadDetector
from adray.detectors.bgad.images import resize_mask
from adray.detectors.bgad.session import fit_bgad_local
from adray.synthetic import SynthConfig, generate_mvtec_ad
from adray.tables import text_table

log = logging.getLogger(__name__)


def compare_supervised(
    data: str,
    category: str,
    seen_defects: Sequence[str] | None,
    model_cfg: BgadConfig,
    train_cfg: BgadTrainConfig,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """Fit both variants on ``category`` of the MVTec-layout ``data`` and evaluate; returns a result dict."""
    from adray.catalog import open_manifest, readable_items

    table = readable_items(open_manifest(data, "auto", categories=[category])[0])
    rows = [r for r in table.to_pylist() if r["category"] == category]
    defects = sorted({r["defect_type"] for r in rows if r["split"] == "test" and int(r["label"] or 0) == 1})
    seen = list(seen_defects) if seen_defects else defects[: max(1, len(defects) // 2)]
    unseen = [d for d in defects if d not in seen]
    model_cfg.category = category
    sup_cfg = BgadTrainConfig.from_dict({**train_cfg.to_dict(), "seen_defects": seen})
    uns_cfg = BgadTrainConfig.from_dict({**train_cfg.to_dict(), "num_anomalies": 0})
    out: dict[str, Any] = {"category": category, "seen": seen, "unseen": unseen, "rows": []}
    detectors: dict[str, BgadDetector] = {}
    for variant, cfg in (("supervised", sup_cfg), ("unsupervised", uns_cfg)):
        t0 = time.perf_counter()
        detectors[variant] = fit_bgad_local(
            rows, BgadConfig.from_dict(model_cfg.to_dict()), cfg, device=device
        )
        out[f"{variant}_fit_seconds"] = time.perf_counter() - t0
    excluded = set(detectors["supervised"].metadata["anomaly_item_ids"])
    test = [r for r in rows if r["split"] == "test" and r["item_id"] not in excluded]
    out["n_training_anomalies"] = len(excluded)
    for variant, det in detectors.items():
        scores, maps, masks = _score(det, test)
        for subset, types in (("seen", seen), ("unseen", unseen)):
            keep = [i for i, r in enumerate(test) if int(r["label"] or 0) == 0 or r["defect_type"] in types]
            out["rows"].append(_metrics(variant, subset, test, keep, scores, maps, masks))
    return out


def _score(det: BgadDetector, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list]:
    from adray.io.samples import read_sample

    size = det.cfg.image_size
    scores, maps, masks = [], [], []
    for start in range(0, len(rows), 16):
        chunk = [read_sample(r, mask=True).raise_for_status() for r in rows[start : start + 16]]
        x = np.stack([det.preprocess(s.inputs())["image"] for s in chunk])
        sb = det.score({"image": x})
        scores.append(sb.image_score.numpy())
        maps.append(sb.anomaly_map.numpy())
        for s in chunk:
            masks.append(resize_mask(s.mask, size) if s.mask is not None else np.zeros((size, size), bool))
    return np.concatenate(scores), np.concatenate(maps), masks


def _metrics(variant, subset, rows, keep, scores, maps, masks) -> dict[str, Any]:
    from adray.metrics import aupro, image_auroc

    labels = np.array([int(rows[i]["label"] or 0) for i in keep])
    return {
        "variant": variant,
        "defects": subset,
        "n_good": int((labels == 0).sum()),
        "n_anomalous": int(labels.sum()),
        "image_auroc": image_auroc(labels, scores[keep]),
        "aupro": aupro(np.stack([masks[i] for i in keep]), maps[keep]),
    }


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a titled text table: per variant and defect subset, the items and the metrics."""
    title = (
        f"BGAD supervised vs unsupervised on {result['category']!r}: seen defects {result['seen']}, "
        f"unseen {result['unseen']}, {result['n_training_anomalies']} training anomalies (excluded from eval)"
    )
    cells = [
        [
            r["variant"],
            r["defects"],
            r["n_good"],
            r["n_anomalous"],
            f"{r['image_auroc']:.4f}",
            f"{r['aupro']:.4f}",
        ]
        for r in result["rows"]
    ]
    columns = ("variant", "defects", "good", "anom", "image AUROC", "AUPRO@0.3")
    return title + "\n" + text_table(columns, cells, rule=False)


class BgadCompareConfig(BgadBenchConfig):
    """The flags of ``jobs/benchmark.py bgad-compare`` (and of ``python -m adray.bench.bgad_compare``)."""

    model_config = ConfigDict(title="bgad-compare configuration")

    data: Annotated[str | None, Flag("--data")] = Field(
        None,
        description="MVTec-layout dataset root (generated there with --generate; default: a new temporary "
        "folder, generated)",
    )
    generate: Annotated[bool, Flag("--generate")] = Field(
        False, description="generate synthetic data into --data if it is empty"
    )
    seen_defects: Annotated[str, Flag("--seen-defects")] = Field(
        "", description="comma-separated; default: first half of the types"
    )
    num_anomalies: Annotated[int, Flag("--num-anomalies")] = 10
    flow_blocks: Annotated[int, Flag("--flow-blocks")] = 4
    epochs: Annotated[int, Flag("--epochs")] = Field(10, description="meta-epochs")
    sub_epochs: Annotated[int, Flag("--sub-epochs")] = 4
    batch_size: Annotated[int, Flag("--batch-size")] = 16
    chunk_size: Annotated[int, Flag("--chunk-size")] = 1024
    seed: Annotated[int, Flag("--seed")] = 0
    no_focal: Annotated[bool, Flag("--no-focal")] = Field(
        False, description="disable the asymmetric focal weights (see README)"
    )
    threads: Annotated[int, Flag("--threads")] = 2
    device: Annotated[str | None, Flag("--device")] = Field(
        None, description="cpu | cuda (default: CUDA when available)"
    )


#: the flags in the help output's order
_FLAGS = (
    "data",
    "generate",
    "category",
    "seen_defects",
    "num_anomalies",
    "backbone",
    "weights",
    "image_size",
)
_FLAGS += ("flow_blocks", "epochs", "sub_epochs", "batch_size", "chunk_size", "seed", "no_focal", "threads")
_FLAGS += ("device",)
#: the generated dataset when --data is empty or not given: 40 normals, 12 good and 8 per defect type to test
COMPARE_DATA = SynthConfig(image_size=128, n_train=40, n_test_good=12, n_test_per_defect=8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``jobs/benchmark.py bgad-compare`` (and of ``python -m adray.bench.bgad_compare``)."""
    add_flags(parser, BgadCompareConfig, _FLAGS)


def run(flags: argparse.Namespace) -> dict[str, Any]:
    """Generate (when asked or when ``--data`` is not given), fit both variants, evaluate; print the table.

    Returns the benchmark result ``{"name", "rows", "notes"}`` (one row per variant and defect subset)."""
    cfg = BgadCompareConfig(**flag_values(BgadCompareConfig, flags))
    torch.set_num_threads(cfg.threads)
    data, generate = cfg.data, cfg.generate
    if data is None:
        import tempfile

        data, generate = tempfile.mkdtemp(prefix="bgad-compare-"), True
    if generate and not (storage.exists(data) and next(storage.walk_files(data), None)):
        generate_mvtec_ad(data, COMPARE_DATA, categories=(cfg.category,), seed=cfg.seed)
    # --seen-defects picks the supervised variant's anomalies (compare_supervised), not the shared config
    model_cfg, train_cfg = configs_from_flags(cfg, seen_defects=None)
    seen = [s for s in cfg.seen_defects.split(",") if s] or None
    result = compare_supervised(data, cfg.category, seen, model_cfg, train_cfg, device=cfg.device)
    print(format_table(result))
    notes = [f"category {result['category']}: seen {result['seen']}, unseen {result['unseen']}"]
    notes.append(f"{result['n_training_anomalies']} training anomalies, excluded from the evaluation")
    return {"name": "bgad-compare", "rows": result["rows"], "notes": notes}


def main(argv: list[str] | None = None, prog: str = "python -m adray.bench.bgad_compare") -> int:
    """Standalone command line: the same flags as ``jobs/benchmark.py bgad-compare``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(p)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
