"""`adray review`: one self-contained HTML page to label the items worth a look under a results root.

Per (category, detector) the page shows the highest-scored items not yet labelled and a seeded random
sample of low-scored ones (:mod:`adray.review.select`), each as a downscaled image, its anomaly map over
it (:mod:`adray.review.thumbs`), the defect regions' boxes when the results have a ``regions`` column,
score, threshold and decision. The reviewer marks items normal / anomalous (with a defect type) by keyboard
or buttons and exports a labels CSV in the format ``adray labels import`` reads
(:data:`adray.labels.FILE_COLUMNS`). Everything is in the file (thumbnails as data URIs, the script
inline, a Content-Security-Policy that allows no fetch), so it opens offline and can be mailed.
"""

from __future__ import annotations

import html
import json
import logging
import statistics
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any

import duckdb
from pydantic import ConfigDict, Field

from adray import storage
from adray.config import Config, Flag
from adray.labels import FILE_COLUMNS
from adray.review.assets import CSS, JS
from adray.review.select import Picked, Selection, pick_items
from adray.review.thumbs import make_thumbs

log = logging.getLogger(__name__)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
REGION_FIELDS = ("x0", "y0", "x1", "y1", "area_px", "peak", "mean")


class PageConfig(Config):
    """``thumb_size``: longer side of each thumbnail in px; ``max_bytes``: cap on the embedded thumbnails
    (cards past it are left out, each section keeping its best-ranked first); ``page_size``: cards per
    page; ``reviewer``: pre-filled ``labelled_by``; ``workers``: parallel image reads. The ``adray review``
    flags of these fields are generated from them (``--max-mb`` is ``max_bytes`` in MB); a size below 1
    raises :class:`adray.errors.ConfigError`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="review page")

    thumb_size: Annotated[int, Flag("--thumb-size")] = Field(
        224, ge=1, description="longer side of thumbnails in px"
    )
    max_bytes: int = Field(40_000_000, ge=1)
    page_size: Annotated[int, Flag("--page-size")] = Field(
        24, ge=1, description="cards per page in the browser"
    )
    reviewer: Annotated[str, Flag("--reviewer")] = Field(
        "", description="pre-filled labelled_by of the exported labels"
    )
    workers: int = Field(8, ge=1)


@dataclass
class ReviewPage:
    """The rendered page and what it holds: ``cards`` shown, ``left_out`` for the size cap,
    ``unreadable`` cards whose image could not be read (shown with the error), ``labelled_items`` skipped."""

    html: str
    cards: int
    left_out: int
    unreadable: int
    labelled_items: int
    sections: dict[str, int] = field(default_factory=dict)


def build_review(
    root: str, selection: Selection, config: PageConfig, *, con: duckdb.DuckDBPyConnection | None = None
) -> ReviewPage:
    """Pick the items under ``root`` (committed results and labels; ``con``: a connection with its views
    already, default :func:`adray.pipeline.query.connect`), render their thumbnails and return the page.
    Images that cannot be read become cards with the error; nothing here raises for one item."""
    from adray.pipeline.query import connect

    picked = pick_items(con if con is not None else connect(root), selection)
    ranges = _section_ranges(picked.rows)
    kept, left_out = _render_cards(picked.rows, ranges, config)
    meta = _meta(root, selection, config, picked, left_out)
    return ReviewPage(
        html=render_html(meta, kept),
        cards=len(kept),
        left_out=left_out,
        unreadable=sum(1 for c in kept if not c.get("img")),
        labelled_items=picked.labelled_items,
        sections={f"{c} · {d}": n for (c, d), n in sorted(picked.candidates.items())},
    )


def write_review(root: str, out: str, selection: Selection, config: PageConfig) -> tuple[str, ReviewPage]:
    """Build the page and write it to ``out`` (a ``.html`` file URL, or a folder: ``out/review.html``)."""
    url = out if out.lower().endswith((".html", ".htm")) else storage.join_url(out, "review.html")
    page = build_review(root, selection, config)
    storage.write_text(url, page.html)
    return url, page


def _section_ranges(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, float] | None]:
    """One colour scale per section: from the median ``map_min`` to the highest ``map_max`` of its cards."""
    lows: dict[tuple[str, str], list[float]] = {}
    highs: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["map_min"] is not None and r["map_max"] is not None:
            key = (r["category"], r["detector"])
            lows.setdefault(key, []).append(float(r["map_min"]))
            highs.setdefault(key, []).append(float(r["map_max"]))
    return {k: (statistics.median(lows[k]), max(highs[k])) for k in lows}


def _render_cards(
    rows: list[dict[str, Any]], ranges: dict, config: PageConfig
) -> tuple[list[dict[str, Any]], int]:
    """Cards in page order, rendered section by section in rounds (every section's first card, then every
    second, ...) until ``max_bytes`` of thumbnails; returns the kept cards and how many were left out."""
    position: dict[tuple[str, str], int] = {}
    order = []
    for i, r in enumerate(rows):
        key = (r["category"], r["detector"])
        position[key] = position.get(key, 0) + 1
        order.append((position[key], i))
    order.sort()
    cards: dict[int, dict[str, Any]] = {}
    used = 0
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        for start in range(0, len(order), 32):
            batch = [i for _, i in order[start : start + 32]]
            for i, card in zip(batch, pool.map(lambda j: _card(rows[j], ranges, config), batch)):
                size = len(card.get("img") or "") + len(card.get("ovl") or "")
                if used + size > config.max_bytes:
                    return [cards[k] for k in sorted(cards)], len(rows) - len(cards)
                used += size
                cards[i] = card
    return [cards[k] for k in sorted(cards)], 0


def _card(r: dict[str, Any], ranges: dict, config: PageConfig) -> dict[str, Any]:
    decision = None if r["is_anomalous"] is None else ("anomalous" if r["is_anomalous"] else "normal")
    card: dict[str, Any] = {
        "id": r["item_id"], "uri": r["uri"], "category": r["category"], "detector": r["detector"],
        "version": r["detector_version"], "score": _num(r["image_score"]), "threshold": _num(r["threshold"]),
        "decision": decision, "source": r.get("threshold_source"), "kind": r["kind"], "rank": r["rank"],
        "n": r["section_size"], "type": r["defect_type"], "regions": _regions(r.get("regions")),
        "region_count": r.get("region_count"),
    }  # fmt: skip
    try:
        t = make_thumbs(
            r["uri"], r["mask_uri"], r["map_min"], r["map_max"],
            size=config.thumb_size, map_range=ranges.get((r["category"], r["detector"])),
        )  # fmt: skip
    except Exception as exc:  # one unreadable image must not lose the page; the card says why
        log.warning("review: cannot render %s: %s", storage.redact_url(r["uri"]), exc)
        card.update(img=None, ovl=None, error=f"image unavailable: {type(exc).__name__}")
        return card
    card.update(img=t.image, ovl=t.overlay, w=t.width, h=t.height, tw=t.thumb_w, th=t.thumb_h)
    return card


def _regions(value: Any) -> list[list[float]] | None:
    """The ``regions`` list-of-struct as ``[x0, y0, x1, y1, area_px, peak, mean]`` lists (None: no column)."""
    if value is None:
        return None
    return [[_num(reg.get(f)) for f in REGION_FIELDS] for reg in value]


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def _meta(root: str, sel: Selection, config: PageConfig, picked: Picked, left_out: int) -> dict[str, Any]:
    return {
        "page_id": uuid.uuid4().hex,
        "root": storage.redact_url(root),
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "columns": list(FILE_COLUMNS),
        "defect_types": picked.defect_types,
        "categories": sorted({c for c, _ in picked.candidates}),
        "reviewer": config.reviewer,
        "page_size": config.page_size,
        "per_category": sel.per_category,
        "sample": sel.sample,
        "seed": sel.seed,
        "left_out": left_out,
        "labelled_items": picked.labelled_items,
        "max_mb": round(config.max_bytes / 1e6, 1),
    }


def render_html(meta: dict[str, Any], cards: list[dict[str, Any]]) -> str:
    """The page as one HTML string: ``meta`` (see :func:`_meta`) and the cards as JSON, the script inline."""
    payload = json.dumps({"meta": meta, "cards": cards}, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    m = {k: html.escape(str(v)) for k, v in meta.items()}
    cut = (
        f"<p class='note'><b>{meta['left_out']} item(s) left out</b>: the page keeps at most "
        f"{m['max_mb']} MB of thumbnails (--max-mb); label these first, or narrow with --category.</p>"
        if meta["left_out"]
        else ""
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>adray review</title><style>{CSS}</style></head><body><header>"
        f"<h1>adray review <span class='muted'>{m['root']}</span></h1>"
        f"<p class='note'>Generated {m['generated_at']}: per category and detector the {m['per_category']} "
        f"highest-scored unlabelled items, then {m['sample']} random low-scored ones (seed {m['seed']}); "
        f"{m['labelled_items']} labelled item(s) not shown.</p>{cut}"
        "<div class='bar'><label>category <select id='category'><option value=''>all</option></select></label>"
        "<button id='prev'>◀ page</button><span id='page'></span><button id='next'>page ▶</button>"
        "<label>reviewer <input id='reviewer' size='12'></label>"
        "<button id='export'><b>Export labels (CSV)</b></button><span><span id='count'>0</span> labelled</span>"
        "</div><p class='note'><kbd>j</kbd>/<kbd>k</kbd> or arrows: next/previous · <kbd>n</kbd> normal · "
        "<kbd>a</kbd> anomalous (type from the card's box) · <kbd>x</kbd> clear · <kbd>[</kbd>/<kbd>]</kbd> "
        "page · digits: anomalous with type<span id='digits'></span></p></header>"
        "<datalist id='defect-types'></datalist><main id='cards'></main>"
        f'<script id="review-data" type="application/json">{payload}</script>'
        f"<script>{JS}</script></body></html>"
    )
