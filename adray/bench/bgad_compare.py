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
from typing import Any

import numpy as np
import torch

from adray import storage
from adray.detectors.bgad.config import BgadConfig, BgadTrainConfig, configs_from_flags
from adray.detectors.bgad.detector import BgadDetector
from adray.detectors.bgad.images import resize_mask
from adray.detectors.bgad.session import fit_bgad_local

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
    lines = [
        f"BGAD supervised vs unsupervised on {result['category']!r}: seen defects {result['seen']}, "
        f"unseen {result['unseen']}, {result['n_training_anomalies']} training anomalies (excluded from eval)",
        f"{'variant':<13} {'defects':<7} {'good':>5} {'anom':>5} {'image AUROC':>12} {'AUPRO@0.3':>10}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['variant']:<13} {r['defects']:<7} {r['n_good']:>5} {r['n_anomalous']:>5} "
            f"{r['image_auroc']:>12.4f} {r['aupro']:>10.4f}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``jobs/benchmark.py bgad-compare`` (and of ``python -m adray.bench.bgad_compare``)."""
    parser.add_argument(
        "--data",
        default=None,
        help="MVTec-layout dataset root (generated there with --generate; default: a new temporary folder, generated)",
    )
    parser.add_argument(
        "--generate", action="store_true", help="generate synthetic data into --data if it is empty"
    )
    parser.add_argument("--category", default="bottle")
    parser.add_argument(
        "--seen-defects", default="", help="comma-separated; default: first half of the types"
    )
    parser.add_argument("--num-anomalies", type=int, default=10)
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--flow-blocks", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10, help="meta-epochs")
    parser.add_argument("--sub-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-focal", action="store_true", help="disable the asymmetric focal weights (see README)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when available)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (when asked or when ``--data`` is not given), fit both variants, evaluate; print the table.

    Returns the benchmark result ``{"name", "rows", "notes"}`` (one row per variant and defect subset)."""
    torch.set_num_threads(args.threads)
    if args.data is None:
        import tempfile

        args.data, args.generate = tempfile.mkdtemp(prefix="bgad-compare-"), True
    if args.generate and not (storage.exists(args.data) and next(storage.walk_files(args.data), None)):
        from adray.synthetic import generate_mvtec_ad

        generate_mvtec_ad(
            args.data,
            categories=(args.category,),
            image_size=128,
            n_train=40,
            n_test_good=12,
            n_test_per_defect=8,
            seed=args.seed,
        )
    # --seen-defects picks the supervised variant's anomalies (compare_supervised), not the shared config
    model_cfg, train_cfg = configs_from_flags(args, seen_defects=None)
    seen = [s for s in args.seen_defects.split(",") if s] or None
    result = compare_supervised(args.data, args.category, seen, model_cfg, train_cfg, device=args.device)
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
