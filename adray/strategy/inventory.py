"""What data each category has: the inventory the plan is computed from (:mod:`adray.strategy.plan`).

:func:`build_inventory` reads the manifest (a manifest file or a dataset prefix, through
:mod:`adray.catalog`) and, when a results root is given, the latest label per item (:mod:`adray.labels`),
and counts per category with one DuckDB aggregation (the manifest is never walked row by row in Python).

An item's ground truth is the manifest's label, else its latest imported label (the rule
``adray evaluate`` follows); its defect mask is the manifest's ``gt_mask_uri``, else the mask of its
latest label when that label says ``anomalous``. Only readable rows count (``skip_status`` null); skipped
rows are counted apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

COUNT_FIELDS = (
    "n_items",
    "n_skipped",
    "n_train_normals",
    "n_labelled_normals",
    "n_anomalies_with_masks",
    "n_anomalies_without_masks",
    "n_pointclouds",
    "n_normals_with_pointclouds",
    "n_to_score",
)


@dataclass(frozen=True)
class CategoryInventory:
    """Counts of one category (all of them items, ``>= 0``).

    ``n_items``: readable manifest rows (any split); ``n_skipped``: rows the catalog keeps only for their
    row (``skip_status`` set). ``n_train_normals``: train-split items known normal (label 0 or defect type
    ``good``); ``n_labelled_normals``: other items whose latest imported label is ``normal``.
    ``n_anomalies_with_masks`` / ``n_anomalies_without_masks``: anomalous items (manifest or label) with /
    without a defect mask. ``n_pointclouds``: items with a point cloud (``pc_uri``);
    ``n_normals_with_pointclouds``: normals (either kind) that have one. ``n_to_score``: test-split items
    (what ``adray score`` reads by default).
    """

    category: str
    n_items: int = 0
    n_skipped: int = 0
    n_train_normals: int = 0
    n_labelled_normals: int = 0
    n_anomalies_with_masks: int = 0
    n_anomalies_without_masks: int = 0
    n_pointclouds: int = 0
    n_normals_with_pointclouds: int = 0
    n_to_score: int = 0

    @property
    def n_normals(self) -> int:
        """Normal images available as references or training normals."""
        return self.n_train_normals + self.n_labelled_normals

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_normals": self.n_normals}


@dataclass
class Inventory:
    """The categories of one input (sorted by name) and where the counts came from."""

    input: str
    categories: list[CategoryInventory]
    labels_root: str | None = None
    n_labels: int = 0
    n_labels_unmatched: int = 0  # latest labels of items this manifest does not hold
    notes: list[str] = field(default_factory=list)

    def keep_categories(self, names: Sequence[str] | None) -> None:
        """Keep only the categories ``names`` (in place; None or empty keeps all); each name the input
        does not hold becomes a note (``adray plan`` / ``adray fit`` ``--category``)."""
        if not names:
            return
        known = {c.category for c in self.categories}
        self.notes += [f"category {c!r} is not in the input" for c in names if c not in known]
        self.categories = [c for c in self.categories if c.category in names]

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "labels_root": self.labels_root,
            "n_labels": self.n_labels,
            "n_labels_unmatched": self.n_labels_unmatched,
            "notes": list(self.notes),
            "categories": [c.to_dict() for c in self.categories],
        }


def read_manifest_table(input_uri: str) -> pa.Table:
    """The manifest of ``input_uri``: a manifest file read and normalised, or a dataset prefix catalogued
    (layout detected). Raises what :mod:`adray.catalog` raises (``CatalogError``, ``FileNotFoundError``)."""
    from adray import catalog

    if catalog.is_manifest_uri(input_uri):
        return catalog.read_manifest(input_uri)
    return catalog.build_manifest(input_uri)[0]


def build_inventory(input_uri: str, labels_root: str | None = None) -> Inventory:
    """Count per category what ``input_uri``'s manifest and the labels under ``labels_root`` hold."""
    manifest = read_manifest_table(input_uri)
    labels = None
    if labels_root is not None:
        from adray.labels import latest_labels

        labels = latest_labels(labels_root)
    return inventory_from_tables(manifest, labels, input_uri=input_uri, labels_root=labels_root)


_LABELS_COLUMNS = {"item_id": pa.string(), "label": pa.string(), "mask_uri": pa.string()}

_COUNT_SQL = """
WITH lab AS (SELECT item_id, label AS l_label, mask_uri AS l_mask FROM _labels),
m AS (
  SELECT m.category, m.split, m.skip_status, m.pc_uri, l.l_label,
    coalesce(m.label, CASE l.l_label WHEN 'normal' THEN 0 WHEN 'anomalous' THEN 1 END) AS gt,
    (m.label IS NULL AND l.l_label IS NOT NULL) AS from_labels,
    coalesce(m.gt_mask_uri, CASE WHEN l.l_label = 'anomalous' THEN l.l_mask END) AS mask,
    (m.split = 'train' AND (m.label = 0 OR (m.label IS NULL AND m.defect_type = 'good'))) AS train_normal
  FROM _manifest m LEFT JOIN lab l USING (item_id)
),
r AS (SELECT *, skip_status IS NULL AS ok,
  (NOT train_normal AND from_labels AND gt = 0) AS labelled_normal FROM m)
SELECT category,
  count(*) FILTER (WHERE ok) AS n_items,
  count(*) FILTER (WHERE NOT ok) AS n_skipped,
  count(*) FILTER (WHERE ok AND train_normal) AS n_train_normals,
  count(*) FILTER (WHERE ok AND labelled_normal) AS n_labelled_normals,
  count(*) FILTER (WHERE ok AND gt = 1 AND mask IS NOT NULL) AS n_anomalies_with_masks,
  count(*) FILTER (WHERE ok AND gt = 1 AND mask IS NULL) AS n_anomalies_without_masks,
  count(*) FILTER (WHERE ok AND pc_uri IS NOT NULL) AS n_pointclouds,
  count(*) FILTER (WHERE ok AND pc_uri IS NOT NULL AND (train_normal OR labelled_normal))
    AS n_normals_with_pointclouds,
  count(*) FILTER (WHERE ok AND split = 'test') AS n_to_score
FROM r GROUP BY category ORDER BY category
"""


def inventory_from_tables(
    manifest: pa.Table,
    labels: pa.Table | None = None,
    *,
    input_uri: str = "manifest",
    labels_root: str | None = None,
) -> Inventory:
    """Counts per category of a normalised manifest table (``schemas/manifest`` columns; ``skip_status``
    may be absent) and a table of the latest label per item (``item_id``, ``label``, ``mask_uri``)."""
    manifest = _with_manifest_columns(manifest)
    labels = _labels_table(labels)
    con = duckdb.connect()
    con.register("_manifest", manifest)
    con.register("_labels", labels)
    rows = con.execute(_COUNT_SQL).fetchall()
    names = ["category", *COUNT_FIELDS]
    categories = [CategoryInventory(**dict(zip(names, row))) for row in rows]
    unmatched = con.execute(
        "SELECT count(*) FROM _labels WHERE item_id NOT IN (SELECT item_id FROM _manifest)"
    ).fetchone()[0]
    inv = Inventory(input_uri, categories, labels_root, labels.num_rows, int(unmatched))
    if unmatched:
        inv.notes.append(f"{unmatched} labelled item(s) are not in this manifest and count for no category")
    return inv


def _with_manifest_columns(table: pa.Table) -> pa.Table:
    needed = {
        "item_id": pa.string(),
        "category": pa.string(),
        "split": pa.string(),
        "label": pa.int8(),
        "defect_type": pa.string(),
        "gt_mask_uri": pa.string(),
        "pc_uri": pa.string(),
        "skip_status": pa.string(),
    }
    for name, kind in needed.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, kind))
    return table.select(list(needed))


def _labels_table(labels: pa.Table | None) -> pa.Table:
    if labels is None:
        return pa.table({k: pa.array([], t) for k, t in _LABELS_COLUMNS.items()})
    return pa.table({k: labels.column(k).cast(t) for k, t in _LABELS_COLUMNS.items()})
