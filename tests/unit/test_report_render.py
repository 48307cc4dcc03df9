"""The HTML report is self-contained and renders: headless Chromium draws the charts and the overlays.

Needs /usr/bin/chromium (CI installs it in .ci/run); without it the screenshot test is skipped with the
reason. The screenshot of a run is kept as docs/report.png when ADRAY_SAVE_REPORT_PNG=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluation_e2e import build_scored_dataset

from adray.evaluation import EvalConfig, evaluate, write_report
from adray.evaluation.charts import ANOMALOUS_COLOR, NORMAL_COLOR, PALETTE

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    scored = build_scored_dataset(root)
    doc = evaluate(scored["results"], scored["manifest"], config=EvalConfig(pixel_size=48, worst=3))
    _, html_url = write_report(doc, str(root / "report"))
    return Path(html_url)


def test_report_is_one_self_contained_file(report_html):
    html = report_html.read_text()
    assert "<script" not in html.lower()
    # nothing is fetched: every src/href is a data: URI or an in-page anchor
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith(("data:", "#")), ref
    assert "@import" not in html and "url(" not in html
    assert html.count("<svg") == 2 * 2 + 2 * 2  # per detector: ROC + PRO, and a histogram per category
    assert html.count("data:image/png;base64,") >= 4  # worst misses with their overlays
    assert "Suggested thresholds" in html and "BGAD" in html and "WinCLIP" in html


def _hex(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int32)


def _pixels_near(img: np.ndarray, color: str, tol: int = 24) -> int:
    return int((np.abs(img - _hex(color)).max(axis=-1) <= tol).sum())


def test_report_renders_in_headless_chromium(report_html, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"headless Chromium not found at {CHROMIUM}; install it with `apt-get install -y chromium`"
        )
    shot = tmp_path / "report.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1280,2000", f"file://{report_html}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"Chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    assert img.shape[:2] == (2000, 1280)
    non_white = (img.min(axis=-1) < 235).mean()
    assert non_white > 0.03, f"the page is nearly blank ({non_white:.1%} non-white pixels)"
    # the curves (category colours) and the histogram bars (normal / anomalous colours) are drawn
    assert _pixels_near(img, PALETTE[0]) + _pixels_near(img, NORMAL_COLOR) > 300
    assert _pixels_near(img, PALETTE[1]) > 150  # second category's ROC / PRO curves
    assert _pixels_near(img, ANOMALOUS_COLOR) > 150
    if os.environ.get("ADRAY_SAVE_REPORT_PNG") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "report.png")
