"""Which items the review page shows: per (category, detector) the highest-scored items not yet labelled,
plus a seeded random sample of low-scored ones (to catch misses).

Reads the DuckDB views of :func:`adray.pipeline.query.connect` (``latest_scores``, ``latest_labels``): an
item counts as labelled when ``latest_labels`` has a row for it, whatever the label. Only ``status = 'ok'``
rows with a score are candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import duckdb
from pydantic import ConfigDict, Field

from adray.config import Config, Flag

#: columns always read from ``latest_scores``
BASE_COLUMNS = (
    "item_id", "uri", "category", "detector", "detector_version", "image_score", "threshold",
    "is_anomalous", "mask_uri", "map_min", "map_max", "defect_type",
)  # fmt: skip
#: columns read when the results have them (added by later schema versions)
OPTIONAL_COLUMNS = ("regions", "region_count", "threshold_source")


class Selection(Config):
    """How many items of each kind to pick per (category, detector), and from which detectors/categories.

    ``per_category``: the highest-scored unlabelled items; ``sample``: random unlabelled items from the lower
    half of that section's scores (ranks below ``per_category`` too), drawn with ``seed``. Empty
    ``detectors`` / ``categories`` mean all. The ``adray review`` flags of these fields are generated from
    them (:func:`adray.config.add_flags`); a negative count raises :class:`adray.errors.ConfigError`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="review selection")

    per_category: Annotated[int, Flag("--per-category")] = Field(
        50, ge=0, description="highest-scored unlabelled items per category and detector (default 50)"
    )
    sample: Annotated[int, Flag("--sample")] = Field(
        10,
        ge=0,
        description="random low-scored items per category and detector, to catch misses (default 10)",
    )
    seed: Annotated[int, Flag("--seed")] = Field(0, description="seed of the low-scored sample (default 0)")
    detectors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()


@dataclass
class Picked:
    """The picked rows (dicts with :data:`BASE_COLUMNS`, the optional columns present, ``kind``:
    ``'top'`` or ``'sample'``, ``rank`` by score within the section from 1, ``section_size``), in page
    order: category, detector, top by score then sample by score; and what was left out."""

    rows: list[dict[str, Any]]
    labelled_items: int
    candidates: dict[tuple[str, str], int] = field(default_factory=dict)
    defect_types: list[str] = field(default_factory=list)


def pick_items(con: duckdb.DuckDBPyConnection, sel: Selection) -> Picked:
    """Pick the review items from a connection with the ``latest_scores`` and ``latest_labels`` views."""
    present = {r[0] for r in con.execute("DESCRIBE latest_scores").fetchall()}
    cols = [*BASE_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in present)]
    where, params = ["status = 'ok'", "image_score IS NOT NULL"], []
    for name, values in (("detector", sel.detectors), ("category", sel.categories)):
        if values:
            where.append(f"{name} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    base = f"SELECT * FROM latest_scores WHERE {' AND '.join(where)}"
    unlabelled = f"{base} AND item_id NOT IN (SELECT item_id FROM latest_labels)"
    col_list = ", ".join(f'"{c}"' for c in cols)
    sql = f"""
        WITH s AS ({unlabelled}),
        r AS (SELECT *, row_number() OVER (PARTITION BY category, detector ORDER BY image_score DESC, item_id)
                     AS rank, count(*) OVER (PARTITION BY category, detector) AS n FROM s),
        q AS (SELECT *, rank > greatest(?, ceil(n / 2)) AS low FROM r),
        d AS (SELECT *, row_number() OVER (PARTITION BY category, detector, low
                                            ORDER BY hash(item_id || ':' || ?), item_id) AS draw FROM q)
        SELECT {col_list}, rank, n AS section_size,
               CASE WHEN rank <= ? THEN 'top' ELSE 'sample' END AS kind
        FROM d WHERE rank <= ? OR (low AND draw <= ?)
        ORDER BY category, detector, kind = 'sample', image_score DESC, item_id"""
    per = sel.per_category
    args = [*params, per, str(sel.seed), per, per, sel.sample]
    cur = con.execute(sql, args)
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    labelled = con.execute(
        f"SELECT count(DISTINCT item_id) FROM ({base}) WHERE item_id IN (SELECT item_id FROM latest_labels)",
        params,
    ).fetchone()[0]
    counts = con.execute(
        f"SELECT category, detector, count(*) FROM ({unlabelled}) GROUP BY ALL", params
    ).fetchall()
    types = con.execute(
        "SELECT DISTINCT t FROM (SELECT defect_type AS t FROM latest_scores UNION ALL "
        "SELECT defect_type FROM latest_labels) WHERE t IS NOT NULL AND lower(t) NOT IN ('good', 'normal') "
        "ORDER BY t"
    ).fetchall()
    return Picked(rows, int(labelled), {(c, d): int(n) for c, d, n in counts}, [t[0] for t in types])
