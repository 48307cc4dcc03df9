"""`adray review`: which items the page shows, the page is self-contained and capped, and in headless
Chromium a reviewer labels items with real key presses and clicks, exports, and the export imports.

The results root is the evaluation tests' fixture (tests/unit/test_evaluation_e2e.py: a synthetic MVTec AD
set, one committed run of two detectors written through the results schema). Chromium is driven over the
DevTools protocol (tests/unit/cdp.py); without /usr/bin/chromium the browser test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from cdp import Browser, chromium_available
from PIL import Image
from scipy import ndimage
from test_evaluation_e2e import build_scored_dataset

from adray import storage
from adray.cli import main
from adray.io.images import read_mask
from adray.labels import FILE_COLUMNS, latest_labels
from adray.pipeline.query import connect
from adray.review import PageConfig, Selection, build_review, pick_items, write_review

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return build_scored_dataset(tmp_path_factory.mktemp("review"))


def _scores(con, category: str, detector: str) -> dict[str, float]:
    rows = con.execute(
        "SELECT item_id, image_score FROM latest_scores WHERE status = 'ok' AND category = ? AND detector = ?",
        [category, detector],
    ).fetchall()
    return dict(rows)


def test_top_items_are_the_highest_scored_and_the_sample_is_seeded_from_the_low_half(scored):
    con = connect(scored["results"])
    picked = pick_items(con, Selection(per_category=3, sample=2, seed=7))
    sections = {(r["category"], r["detector"]) for r in picked.rows}
    assert sections == {(c, d) for c in ("bottle", "carpet") for d in ("winclip", "bgad")}
    for cat, det in sections:
        scores = _scores(con, cat, det)
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        rows = [r for r in picked.rows if (r["category"], r["detector"]) == (cat, det)]
        top = [r["item_id"] for r in rows if r["kind"] == "top"]
        sample = [r["item_id"] for r in rows if r["kind"] == "sample"]
        assert top == ranked[:3]
        assert len(sample) == 2 and set(sample) <= set(ranked[max(3, -(-len(ranked) // 2)) :])
        assert all(r["section_size"] == len(ranked) for r in rows)
    again = pick_items(con, Selection(per_category=3, sample=2, seed=7))
    assert [r["item_id"] for r in again.rows] == [r["item_id"] for r in picked.rows]
    samples = {
        seed: {r["item_id"] for r in pick_items(con, Selection(3, 4, seed)).rows if r["kind"] == "sample"}
        for seed in range(4)
    }
    assert len({frozenset(s) for s in samples.values()}) > 1  # the seed changes the draw
    only = pick_items(con, Selection(per_category=2, sample=0, detectors=("bgad",), categories=("carpet",)))
    assert {(r["category"], r["detector"]) for r in only.rows} == {("carpet", "bgad")} and len(only.rows) == 2
    manifest_types = set(scored["items"]["defect_type"].dropna()) - {"good"}
    assert picked.defect_types == sorted(manifest_types)  # the page's defect-type list and digit keys


def test_labelled_items_leave_the_page(scored, tmp_path):
    root = scored["results"]
    con = connect(root)
    before = pick_items(con, Selection(per_category=2, sample=0, categories=("carpet",)))
    first = sorted({r["item_id"] for r in before.rows})[:2]
    path = tmp_path / "l.csv"
    path.write_text("item_id,label\n" + "".join(f"{i},normal\n" for i in first))
    try:
        assert main(["labels", "import", str(path), "--output", root]) == 0
        after = pick_items(connect(root), Selection(per_category=2, sample=0, categories=("carpet",)))
        assert not {r["item_id"] for r in after.rows} & set(first)
        assert after.labelled_items == 2
        assert len(after.rows) == len(before.rows)  # the next ones move up
    finally:
        shutil.rmtree(Path(root) / "labels")


def test_page_is_self_contained_and_capped(scored, tmp_path):
    url, page = write_review(scored["results"], str(tmp_path), Selection(3, 2), PageConfig(thumb_size=40))
    assert url == str(tmp_path / "review.html") and page.cards == 20 and page.left_out == 0
    text = Path(url).read_text()
    for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert ref.startswith(("data:", "#")), ref
    assert "default-src 'none'" in text and "@import" not in text and "url(" not in text
    assert text.count("data:image/jpeg;base64,") == 40  # image + overlay per card
    img = Image.open(io.BytesIO(_first_jpeg(text)))
    assert max(img.size) == 40  # downscaled from 48 px
    one_card = len(text) / 20
    capped = build_review(
        scored["results"], Selection(3, 2), PageConfig(thumb_size=40, max_bytes=int(one_card * 6))
    )
    assert 0 < capped.cards < 20 and capped.left_out == 20 - capped.cards
    assert f"{capped.left_out} item(s) left out" in capped.html
    shown = re.findall(
        r'"category":"(\w+)","detector":"(\w+)","version":"[^"]*","score":[^,]*,'
        r'"threshold":[^,]*,"decision":[^,]*,"source":[^,]*,"kind":"(\w+)","rank":(\d+)',
        capped.html,
    )
    assert {(c, d) for c, d, _, _ in shown} == {
        (c, d) for c in ("bottle", "carpet") for d in ("winclip", "bgad")
    }
    assert all(kind == "top" and rank == "1" for _, _, kind, rank in shown[:1])


def _first_jpeg(text: str) -> bytes:
    import base64

    return base64.b64decode(re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", text).group(1))


def test_cli_refuses_bad_flags_with_exit_2(scored, capsys, tmp_path):
    assert (
        main(["review", "--output", scored["results"], "--per-category", "-1", "--report", str(tmp_path)])
        == 2
    )
    assert "--per-category" in capsys.readouterr().err
    assert main(["review", "--output", scored["results"], "--max-mb", "0", "--report", str(tmp_path)]) == 2


# ------------------------------------------------------------------------------------------- in Chromium


def _with_regions(root: str, scored: dict) -> tuple:
    """A connection whose ``latest_scores`` has a ``regions`` column (as the results will): the connected
    components of each item's true defect mask, in image pixels."""
    items = scored["items"]
    regions, ids = [], []
    for row in items.itertuples(index=False):
        boxes = []
        if isinstance(row.gt_mask_uri, str):
            mask = read_mask(storage.read_bytes(row.gt_mask_uri))
            lab, _ = ndimage.label(mask)
            for k, sl in enumerate(ndimage.find_objects(lab), start=1):
                area = int((lab[sl] == k).sum())
                boxes.append({"x0": sl[1].start, "y0": sl[0].start, "x1": sl[1].stop, "y1": sl[0].stop,
                              "area_px": area, "peak": 1.0, "mean": 0.5})  # fmt: skip
        ids.append(row.item_id)
        regions.append(boxes)
    struct = pa.struct([("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()),
                        ("area_px", pa.int64()), ("peak", pa.float32()), ("mean", pa.float32())])  # fmt: skip
    con = connect(root)
    con.register("_regions", pa.table({"item_id": ids, "regions": pa.array(regions, pa.list_(struct))}))
    con.execute(
        "CREATE OR REPLACE VIEW latest_scores AS SELECT s.*, g.regions FROM (SELECT * EXCLUDE (regions) FROM results "
        "QUALIFY row_number() OVER (PARTITION BY item_id, detector ORDER BY scored_at DESC) = 1) s "
        "LEFT JOIN _regions g USING (item_id)"
    )
    n_boxes = {i: len(b) for i, b in zip(ids, regions)}
    return con, n_boxes


async def _label_in_browser(html_path: Path, tmp_path: Path, shot: Path, click_pos: int) -> dict:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    async with Browser(tmp_path / "profile", size=(1280, 900)) as b:
        await b.allow_downloads(downloads)
        await b.open(html_path.as_uri())
        out: dict = {"first": await b.evaluate("adrayReview.focus()")}
        out["boxes"] = await b.evaluate("document.querySelectorAll('.card .pic svg rect').length")
        await b.screenshot(shot)
        await b.key("a")  # card 1: anomalous (no type), focus moves on
        out["second"] = await b.evaluate("adrayReview.focus()")
        await b.key("j")  # skip card 2
        out["third"] = await b.evaluate("adrayReview.focus()")
        await b.key("n")  # card 3: normal
        await b.key("1")  # card 4: anomalous with the first defect type
        out["fourth"] = await b.evaluate("document.querySelector('.card[data-pos=\"3\"]').dataset.item")
        fifth = f'.card[data-pos="{click_pos}"]'
        await b.click(f"{fifth} input.defect")  # a typed defect type, then the button
        await b.type_text("scratch, deep")
        await b.click(f"{fifth} button.mark-anomalous")
        out["clicked"] = await b.evaluate(f"document.querySelector('{fifth}').dataset.item")
        out["shared"] = await b.evaluate(  # every card of an item shows its label, whichever section
            "[...document.querySelectorAll('.card')].filter(c => c.classList.contains('anomalous'))"
            ".map(c => c.dataset.item)"
        )
        await b.key("]")  # next page
        out["page"] = await b.evaluate("adrayReview.page()")
        out["csv"] = await b.evaluate("adrayReview.csv()")
        await b.click("#export")
        await b.wait_for("true")
        for _ in range(100):
            files = [p for p in downloads.iterdir() if p.suffix == ".csv"]
            if files:
                break
            await asyncio.sleep(0.1)
        out["files"] = files
        out["defect_types"] = await b.evaluate("JSON.parse(document.getElementById('review-data').textContent)"
                                               ".meta.defect_types")  # fmt: skip
    return out


def test_label_three_items_in_chromium_export_and_import(scored, tmp_path):
    if not chromium_available():
        pytest.skip("headless Chromium not found; install it with `apt-get install -y chromium`")
    root = scored["results"]
    con, n_boxes = _with_regions(root, scored)
    page = build_review(root, Selection(per_category=3, sample=2, seed=1), PageConfig(thumb_size=96, page_size=8,
                        reviewer="qa-bot"), con=con)  # fmt: skip
    html_path = tmp_path / "review.html"
    html_path.write_text(page.html)
    shot = tmp_path / "review.png"
    cards = re.findall(r'"id":"([0-9a-f]{16})"', page.html)
    click_pos = next(p for p in range(4, 8) if cards[p] not in cards[:4])  # a fourth item, on page 1
    got = asyncio.run(_label_in_browser(html_path, tmp_path, shot, click_pos))
    assert got["first"] == cards[0] and got["second"] == cards[1] and got["third"] == cards[2]
    assert got["fourth"] == cards[3] and got["clicked"] == cards[click_pos] and got["page"] == 1
    assert got["boxes"] == sum(n_boxes[i] for i in cards[:8]) > 0  # region boxes of the first page drawn
    page1 = cards[:8]
    anomalous_on_page1 = [i for i in page1 if i in (cards[0], cards[3], cards[click_pos])]
    assert sorted(got["shared"]) == sorted(anomalous_on_page1)
    assert len(got["files"]) == 1, "the Export button downloaded no CSV"
    exported = got["files"][0].read_bytes().decode("utf-8")
    assert exported == got["csv"]
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert exported.splitlines()[0] == ",".join(FILE_COLUMNS)
    want = {cards[0]: ("anomalous", ""), cards[2]: ("normal", ""), cards[3]: ("anomalous", got["defect_types"][0]),
            cards[click_pos]: ("anomalous", "scratch, deep")}  # fmt: skip
    assert len(want) == 4  # four items labelled: three by keys, one by a click
    assert {r["item_id"]: (r["label"], r["defect_type"]) for r in rows} == want
    assert all(r["labelled_by"] == "qa-bot" and r["labelled_at"].endswith("Z") for r in rows)
    assert main(["labels", "import", str(got["files"][0]), "--output", root]) == 0
    try:
        latest = latest_labels(root).to_pandas().set_index("item_id")
        types = {i: t if isinstance(t, str) else "" for i, t in latest["defect_type"].items()}
        assert {i: (latest.loc[i, "label"], types[i]) for i in want} == want
        assert (latest["labelled_by"] == "qa-bot").all()
        img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
        assert (img.min(axis=-1) < 235).mean() > 0.05, "the page is nearly blank"
    finally:
        shutil.rmtree(Path(root) / "labels")
