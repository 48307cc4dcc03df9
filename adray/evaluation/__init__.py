"""Evaluation of committed results against ground truth, and the self-contained HTML report.

``evaluate(results_root, input_uri, ...) -> dict`` joins results with the manifest's labels and masks (items
used to fit a detector left out) and computes per-category and mean metrics, curves, thresholds and the
worst misses; ``write_report(doc, report_dir)`` writes ``metrics.json`` and ``report.html``.
"""

from adray.evaluation.evaluate import EvalConfig, EvaluationError, evaluate, evaluate_frame
from adray.evaluation.published import PUBLISHED, Published, published_for, recognise_dataset
from adray.evaluation.report import render_html, write_report

__all__ = [
    "PUBLISHED",
    "EvalConfig",
    "EvaluationError",
    "Published",
    "evaluate",
    "evaluate_frame",
    "published_for",
    "recognise_dataset",
    "render_html",
    "write_report",
]
