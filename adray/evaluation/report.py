"""The evaluation report: ``metrics.json`` and one self-contained ``report.html`` (inline SVG, data: URIs).

The HTML has no scripts and no external references, so it opens offline and can be mailed or archived as one
file. Sections: summary (means beside published numbers); the strategy ladder of ``--detector auto`` runs
(each category's rung and why, and the rungs compared where a category has results of more than one);
then per detector the per-category table, ROC and PRO curves, score histograms, suggested thresholds at
target false-positive rates, and the worst false negatives / false positives with their anomaly maps over
the image (ground truth outlined in green).
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any

from adray import storage
from adray.evaluation.charts import PALETTE, histogram_chart, line_chart, overlay_png
from adray.evaluation.ground_truth import mask_shape_problem
from adray.io.masks import decode_map_png16, read_ground_truth_mask
from adray.io.samples import read_sample

log = logging.getLogger(__name__)
METRIC_LABELS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO@0.3",
    "aupr": "AUPR",
    "f1_max": "F1-max",
}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{font-size:15px;margin-top:22px}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.muted{color:#777}.note{color:#555;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:10px}.chart{background:#fff}
.chart .plot{fill:#fafafa;stroke:#999}.chart .grid{stroke:#e4e4e4}.chart .diag{stroke:#bbb;stroke-dasharray:4 3}
.chart text{font-size:11px;fill:#333}.chart .title{font-size:13px;font-weight:600;text-anchor:middle}
.chart .axis{text-anchor:middle}.chart .tick{text-anchor:middle;fill:#666}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{width:200px;font-size:12px}.card img{width:192px;height:192px}
.up{color:#1a7f37}.down{color:#c62828}
"""


def write_report(doc: dict[str, Any], report_dir: str) -> tuple[str, str]:
    """Write ``metrics.json`` and ``report.html`` under ``report_dir`` (any storage URL); return both URLs."""
    json_url = storage.join_url(report_dir, "metrics.json")
    html_url = storage.join_url(report_dir, "report.html")
    storage.write_text(json_url, json.dumps(doc, indent=1, sort_keys=False, default=str))
    storage.write_text(html_url, render_html(doc))
    return json_url, html_url


def render_html(doc: dict[str, Any]) -> str:
    """The whole report as one HTML string."""
    dets = doc.get("detectors", {})
    body = [f"<h1>adray evaluation{_dataset_suffix(doc)}</h1>", _overview(doc), _summary_table(doc)]
    body.append(_strategy_section(doc.get("strategies")))
    for name, det in dets.items():
        body.append(_detector_section(name, det, doc))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>adray evaluation</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )


# ------------------------------------------------------------------------------------------------ parts


def _dataset_suffix(doc: dict[str, Any]) -> str:
    return f" — {html.escape(doc['dataset_name'])}" if doc.get("dataset_name") else ""


def _overview(doc: dict[str, Any]) -> str:
    join = doc.get("join", {})
    rows = []
    for det, d in doc.get("detectors", {}).items():
        rows.append(
            f"<tr><td>{html.escape(det)}</td><td>{d['n_items']}</td>"
            + "".join(
                f"<td>{join.get(k, {}).get(det, 0)}</td>"
                for k in (
                    "excluded_fit",
                    "excluded_train",
                    "failed",
                    "not_in_manifest",
                    "unlabelled",
                    "unscored",
                )
            )
            + "</tr>"
        )
    cfg = doc.get("config", {})
    size = cfg.get("pixel_size")
    return (
        f'<p class="note">Results {html.escape(str(doc.get("results", "")))} · ground truth '
        f"{html.escape(str(doc.get('input', '')))} · runs {html.escape(', '.join(doc.get('runs', [])))} · "
        f"{html.escape(doc.get('created_at', ''))}. Pixel metrics at "
        f"{f'{size}×{size}' if size else 'ground-truth resolution'}; AUPRO up to FPR {cfg.get('fpr_limit')}, "
        "divided by it (MVTec AD definition); means are unweighted over categories.</p>"
        "<table><tr><th>detector</th><th>evaluated</th><th>left out: fitted on</th><th>train split</th>"
        "<th>failed rows</th><th>not in manifest</th><th>unlabelled</th><th>not scored</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _summary_table(doc: dict[str, Any]) -> str:
    head = "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in METRIC_LABELS)
    rows = []
    for det, d in doc.get("detectors", {}).items():
        means = {p["metric"]: p for p in d["published"] if p["category"] is None}
        cells = "".join(_cell(d["mean"].get(m), means.get(m)) for m in METRIC_LABELS)
        rows.append(f"<tr><td>{html.escape(det)}</td>{cells}</tr>")
        if means:
            method = next(iter(means.values()))
            pub = "".join(f"<td>{_fmt(means[m]['value']) if m in means else ''}</td>" for m in METRIC_LABELS)
            rows.append(
                f'<tr class="muted"><td>published: {html.escape(method["method"])} '
                f"({html.escape(method['setting'])})</td>{pub}</tr>"
            )
    note = ""
    if doc.get("dataset"):
        note = (
            '<p class="note">Published numbers are the papers\' (on the real dataset, with their own protocol: '
            "BGAD reports the best epoch on the test set, M3DM evaluates at 224 px); † = recalled, not "
            "verified against the paper's table. They are a reference point, not a target for other data.</p>"
        )
    return f"<h2>Summary (mean over categories)</h2><table><tr><th>detector</th>{head}</tr>{''.join(rows)}</table>{note}"


def _strategy_section(section: dict[str, Any] | None) -> str:
    """Per category the ladder rung it was scored on (``--detector auto``), why, the latest plan's view,
    and per category with results of more than one rung a table comparing them."""
    if not section or not section.get("categories"):
        return ""
    esc = lambda v: html.escape(str(v)) if v is not None else "–"  # noqa: E731
    rows, compared = [], []
    for cat, c in section["categories"].items():
        p = c.get("planned") or {}
        plan = (
            f"{esc(p.get('strategy'))}; next: {esc(p.get('next_step') or 'top of the ladder')}" if p else "–"
        )
        rows.append(
            f"<tr><td>{esc(cat)}</td><td>{esc(c['strategy'])}</td><td>{esc(c['detector'])}</td>"
            f"<td>{esc(c['run_id'])}</td><td>{esc(c.get('why'))}</td><td>{plan}</td>"
            f"<td>{esc(' → '.join(c.get('history', [])))}</td></tr>"
        )
        if c.get("comparison"):
            compared.append(_strategy_comparison(cat, c["comparison"]))
    plan_note = (
        f" Latest plan: {esc(section['plan'])}." if section.get("plan") else " No plan under the root."
    )
    return (
        "<h2>Strategies (--detector auto)</h2><p class='note'>The rung each category was last scored on and "
        f"why (from its run record, else the plan).{plan_note}</p>"
        "<table><tr><th>category</th><th>strategy</th><th>detector</th><th>run</th><th>why</th>"
        f"<th>plan now</th><th>strategies scored</th></tr>{''.join(rows)}</table>" + "".join(compared)
    )


def _strategy_comparison(cat: str, comparison: dict[str, Any]) -> str:
    head = "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in METRIC_LABELS)
    rows = []
    for strategy, r in comparison.items():
        cells = "".join(_cell(r.get(m), None) for m in METRIC_LABELS)
        rows.append(
            f"<tr><td>{html.escape(strategy)}</td><td>{html.escape(', '.join(r.get('detectors', [])))}</td>"
            f"<td>{html.escape(', '.join(r.get('runs', [])))}</td><td>{r.get('n_normal', 0)}/"
            f"{r.get('n_anomalous', 0)}</td>{cells}</tr>"
        )
    notes = [
        f"{html.escape(s)}: {html.escape(n)}" for s, r in comparison.items() for n in r.get("notes") or []
    ]
    return (
        f"<h3>{html.escape(cat)}: strategies compared</h3><table><tr><th>strategy</th><th>detector</th>"
        f"<th>runs</th><th>normal/anom.</th>{head}</tr>{''.join(rows)}</table>"
        + (f"<p class='note'>{'<br>'.join(notes)}</p>" if notes else "")
    )


def _detector_section(name: str, det: dict[str, Any], doc: dict[str, Any]) -> str:
    cats = det["categories"]
    color = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)}
    pub = {(p["category"], p["metric"]): p for p in det["published"]}
    head = "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in METRIC_LABELS)
    rows = []
    for cat, c in cats.items():
        cells = "".join(_cell(c.get(m), pub.get((cat, m))) for m in METRIC_LABELS)
        rows.append(
            f'<tr><td><span style="color:{color[cat]}">■</span> {html.escape(cat)}</td>'
            f"<td>{c['n_normal']}/{c['n_anomalous']}</td>{cells}</tr>"
        )
    mean_cells = "".join(_cell(det["mean"].get(m), pub.get((None, m))) for m in METRIC_LABELS)
    rows.append(f"<tr><th>mean</th><th></th>{mean_cells}</tr>")
    notes = [f"{html.escape(cat)}: {html.escape(n)}" for cat, c in cats.items() for n in c.get("notes", [])]
    one_class = det["mean"].get("one_class_categories") or []
    if one_class:
        notes.insert(0, f"mean image metrics leave out {html.escape(', '.join(one_class))} (one class only)")
    roc = [(cat, c["roc"]["fpr"], c["roc"]["tpr"], color[cat]) for cat, c in cats.items() if c.get("roc")]
    pro = [(cat, c["pro"]["fpr"], c["pro"]["pro"], color[cat]) for cat, c in cats.items() if c.get("pro")]
    limit = doc.get("config", {}).get("fpr_limit", 0.3)
    charts = [
        line_chart(roc, title=f"{name}: image ROC", xlabel="false-positive rate", ylabel="true-positive rate",
                   diagonal=True),
        line_chart(pro, title=f"{name}: PRO curve", xlabel="false-positive rate (pixels)",
                   ylabel="per-region overlap", xmax=limit),
    ]  # fmt: skip
    hists = [
        histogram_chart(c["histogram"]["edges"], c["histogram"]["normal"], c["histogram"]["anomalous"],
                        title=f"{name} · {cat}: image scores")
        for cat, c in cats.items()
    ]  # fmt: skip
    versions = ", ".join(det.get("versions", []))
    return (
        f"<h2>{html.escape(name)}</h2><p class='note'>versions {html.escape(versions)} · setting "
        f"{html.escape(str(det.get('setting')))} · {det['n_items']} items</p>"
        f"<table><tr><th>category</th><th>normal/anom.</th>{head}</tr>{''.join(rows)}</table>"
        + (f"<p class='note'>{'<br>'.join(notes)}</p>" if notes else "")
        + f"<div class='charts'>{''.join(charts)}</div>"
        + f"<h3>Score histograms</h3><div class='charts'>{''.join(hists)}</div>"
        + _threshold_table(name, cats)
        + _gallery("Worst false negatives (anomalous, scored low)", det["worst_false_negatives"])
        + _gallery("Worst false positives (normal, scored high)", det["worst_false_positives"])
    )


def _threshold_table(name: str, cats: dict[str, Any]) -> str:
    rows = []
    for cat, c in cats.items():
        entries = list(c.get("thresholds", []))
        if c.get("detector_threshold"):
            entries.append({"target_fpr": None, **c["detector_threshold"]})
        for t in entries:
            target = "detector's own" if t["target_fpr"] is None else f"FPR ≤ {t['target_fpr']:g}"
            rows.append(
                f"<tr><td>{html.escape(cat)}</td><td>{target}</td><td>{t['threshold']:.6g}</td>"
                f"<td>{_fmt(t['fpr'])}</td><td>{_fmt(t['tpr'])}</td><td>{_fmt(t['precision'])}</td></tr>"
            )
    return (
        f"<h3>Suggested thresholds ({html.escape(name)}; flag when score ≥ threshold)</h3>"
        "<table><tr><th>category</th><th>target</th><th>threshold</th><th>FPR</th><th>recall (TPR)</th>"
        f"<th>precision</th></tr>{''.join(rows)}</table>"
    )


def _gallery(title: str, examples: list[dict[str, Any]]) -> str:
    if not examples:
        return (
            f"<h3>{title}</h3><p class='note'>None: no item of this kind is outranked by the other class.</p>"
        )
    cards = []
    for ex in examples:
        try:
            uri = _example_image(ex)
        except Exception as exc:  # a missing image must not lose the whole report
            log.warning("cannot render example %s: %s", ex.get("item_id"), exc)
            uri = None
        img = f'<img src="{uri}" alt="{html.escape(ex["item_id"])}">' if uri else "<p>(image unavailable)</p>"
        cards.append(
            f"<div class='card'>{img}<br><b>{html.escape(str(ex['category']))}</b> "
            f"{html.escape(str(ex.get('defect_type') or ''))}<br>score {ex['image_score']:.4g} · outranked by "
            f"{ex['severity']:.0%} of the other class<br><span class='muted'>{html.escape(ex['item_id'])}</span></div>"
        )
    return f"<h3>{title}</h3><div class='gallery'>{''.join(cards)}</div>"


def _example_image(ex: dict[str, Any]) -> str:
    image = read_sample({"uri": ex["uri"]}).raise_for_status().image
    amap = None
    if ex.get("mask_uri"):
        amap = decode_map_png16(storage.read_bytes(ex["mask_uri"]), ex["map_min"], ex["map_max"])
    gt = read_ground_truth_mask(storage.read_bytes(ex["gt_mask_uri"])) if ex.get("gt_mask_uri") else None
    if gt is not None and mask_shape_problem(gt.shape, image.shape[:2]) is not None:
        gt = None  # an outline stretched onto the image would be wrong; the category's notes name the item
    rng = ex.get("map_range")
    return overlay_png(image, amap, gt, tuple(rng) if rng and None not in rng else None)


def _cell(value: float | None, published: dict[str, Any] | None) -> str:
    if value is None:
        return "<td class='muted'>–</td>"
    extra = ""
    if published:
        delta = value - published["value"]
        mark = "" if published.get("verified", True) else "†"
        cls = "up" if delta >= 0 else "down"
        extra = f" <span class='{cls}'>({_fmt(published['value'])}{mark})</span>"
    return f"<td>{_fmt(value)}{extra}</td>"


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"
