"""The dataset layouts behind :mod:`adray.catalog`: each turns a prefix into a stream of manifest rows.

A row source is ``fn(root_url, categories, report) -> Iterator[row dict]`` (``item_id`` is added by the
caller). Sources list one category at a time; inside a category they hold at most one label folder's
files (MVTec 3D-AD pairs rgb/xyz/gt there) or the category's masks (MVTec AD pairs test images with
``ground_truth``), never the whole archive.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

from adray import storage
from adray.catalog_common import (
    IMAGE_EXTS,
    LAYOUTS,
    NORMAL_LABELS,
    SPLITS,
    CatalogError,
    CatalogReport,
)
from adray.catalog_listing import (  # noqa: F401 - SYSTEM_FILES re-exported
    SYSTEM_FILES,
    Row,
    _categories,
    _docs_or_stray,
    _item_files,
    _listdir,
    _note_tree,
    _relative,
    _row,
    _size,
    _skip,
    _stem,
    _token,
)

POINT_CLOUD_EXTS = (".tiff", ".tif", ".npy", ".ply", ".pcd")
VISA_CSV = ("split_csv", "1cls.csv")
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def detect_layout(prefix: str) -> str:
    """The first layout of ``visa``, ``mvtec3d``, ``mvtec``, ``folder`` that fits (looks at a few folders)."""
    if not storage.exists(prefix):
        raise CatalogError(f"{prefix} does not exist or holds no files")
    if storage.exists(storage.join_url(prefix, *VISA_CSV)):
        return "visa"
    categories, _ = _listdir(prefix)
    for cat in categories[:5]:
        cat_url = storage.join_url(prefix, cat)
        dirs, _ = _listdir(cat_url)
        splits = [d for d in dirs if d.lower() in SPLITS]
        labels_of: dict[str, list[str]] = {}
        for split in splits[:3]:
            labels_of[split] = _listdir(storage.join_url(cat_url, split))[0]
            for label in labels_of[split][:3]:
                inner, _ = _listdir(storage.join_url(cat_url, split, label))
                if "rgb" in inner or "xyz" in inner:
                    return "mvtec3d"
        if not splits:
            continue
        if "ground_truth" in dirs or (
            set(splits) <= {"train", "test"} and "good" in labels_of.get("train", [])
        ):
            return "mvtec"
        return "folder"
    raise CatalogError(
        f"{prefix} does not match a supported layout ({', '.join(LAYOUTS)}): expected split_csv/1cls.csv (visa), "
        "<category>/<split>/<label>/{rgb,xyz}/ (mvtec3d), <category>/{train,test}/<good|defect>/*.png (mvtec) or "
        "<category>/<split>/<label>/... (folder). Force one with --layout, or pass a manifest file (Parquet, CSV "
        "or JSONL with at least the columns uri and category) as --input."
    )


# ------------------------------------------------------------------------------------ MVTec AD / folder


def rows_folder(
    root: str, wanted: list[str] | None, report: CatalogReport, *, mvtec: bool = False
) -> Iterator[Row]:
    """``<category>/<split>/<label>/...`` with optional ``<category>/ground_truth/<label>/<name>[_mask].png``."""
    for cat in _categories(root, wanted, report):
        cat_url = storage.join_url(root, cat)
        dirs, files = _listdir(cat_url)
        _docs_or_stray(files, report, "file directly in a category folder")
        has_gt = "ground_truth" in dirs
        masks = _masks(storage.join_url(cat_url, "ground_truth"), report) if has_gt else {}
        for d in dirs:
            if d == "ground_truth":
                continue
            split_url = storage.join_url(cat_url, d)
            split = SPLITS.get(d.lower())
            if split is None:
                _note_tree(
                    split_url, report, "stray", f"folder {d!r} is not a split (train, validation, test)"
                )
                continue
            labels, loose = _listdir(split_url)
            for url, _ in loose:
                report.note("stray", url, "file directly in a split folder; expected <split>/<label>/<file>")
            for label in labels:
                label_url = storage.join_url(split_url, label)
                normal = label.lower() in NORMAL_LABELS
                for url, info in _item_files(label_url, report):
                    rel = _relative(url, label_url)
                    skip = _skip(url, info)
                    gt = masks.pop(f"{label}/{_stem(rel)}", None)
                    if gt is None and skip is None and mvtec and has_gt and not normal and split == "test":
                        report.note("missing", url, "no ground-truth mask")
                    yield _row(url, None, cat, split, normal, label, gt, _token(url, info, skip), skip)
        for url in masks.values():
            report.note("stray", url, "ground-truth mask without a matching image")


def rows_mvtec(root: str, wanted: list[str] | None, report: CatalogReport) -> Iterator[Row]:
    return rows_folder(root, wanted, report, mvtec=True)


def _masks(gt_url: str, report: CatalogReport) -> dict[str, str]:
    """``"<label>/<name>"`` -> mask URL for one category (bounded by its anomalous items).

    When several files fit one image (``000_mask.png`` and ``000.png``, or ``.png`` and ``.jpg``), the one
    named ``<name>_mask`` wins, then the first by name; the clash is counted and reported with both names.
    """
    masks: dict[str, str] = {}
    for url, info in storage.walk_files(gt_url):
        rel = _relative(url, gt_url)
        if "/" not in rel or not rel.lower().endswith(IMAGE_EXTS):
            report.note("stray", url, "not a mask image under ground_truth/<label>/")
        elif _size(info) == 0:
            report.note("unreadable", url, "zero bytes")
        else:
            stem = _stem(rel)
            key = stem[: -len("_mask")] if stem.endswith("_mask") else stem
            kept = masks.get(key)
            if kept is not None:
                kept, other = sorted((kept, url), key=lambda u: (not _stem(u).endswith("_mask"), u))
                report.note("clashes", other, f"another mask fits the same image; used {kept}")
                url = kept
            masks[key] = url
    return masks


# ----------------------------------------------------------------------------------------- MVTec 3D-AD


def rows_mvtec3d(root: str, wanted: list[str] | None, report: CatalogReport) -> Iterator[Row]:
    """``<category>/<split>/<label>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}``, paired by file stem."""
    for cat in _categories(root, wanted, report):
        cat_url = storage.join_url(root, cat)
        dirs, files = _listdir(cat_url)
        _docs_or_stray(files, report, "file directly in a category folder")
        for d in dirs:
            split_url = storage.join_url(cat_url, d)
            split = SPLITS.get(d.lower())
            if split is None:
                kind, why = (
                    ("ignored", "camera calibration") if d == "calibration" else ("stray", "not a split")
                )
                _note_tree(split_url, report, kind, why)
                continue
            labels, loose = _listdir(split_url)
            for url, _ in loose:
                report.note("stray", url, "file directly in a split folder; expected <split>/<label>/rgb/")
            for label in labels:
                yield from _rows_3d_label(storage.join_url(split_url, label), cat, split, label, report)


def _rows_3d_label(label_url: str, cat: str, split: str, label: str, report: CatalogReport) -> Iterator[Row]:
    parts: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    for url, info in _item_files(label_url, report):
        kind, _, name = _relative(url, label_url).partition("/")
        exts = POINT_CLOUD_EXTS if kind == "xyz" else IMAGE_EXTS
        if kind == "rgb" and "/" not in name:  # the item folder: every file here is an item
            parts.setdefault(_stem(name), {})[kind] = (url, info)
        elif kind not in ("rgb", "xyz", "gt") or "/" in name or not name.lower().endswith(exts):
            report.note("stray", url, "expected rgb/NNN.png, xyz/NNN.tiff or gt/NNN.png")
        elif _size(info) == 0:
            report.note("unreadable", url, "zero bytes")
        else:
            parts.setdefault(_stem(name), {})[kind] = (url, info)
    normal = label.lower() in NORMAL_LABELS
    for stem in sorted(parts):
        sample = parts[stem]
        if "rgb" not in sample:
            for url, _ in sample.values():
                report.note("missing", url, "no rgb image for this sample")
            continue
        rgb_url, rgb_info = sample["rgb"]
        skip = _skip(rgb_url, rgb_info)
        token = _token(rgb_url, rgb_info, skip)
        pc_url = None
        if "xyz" in sample:
            pc_url, pc_info = sample["xyz"]
            token = f"{token}|{_token(pc_url, pc_info, skip)}"
        elif skip is None:
            report.note("missing", rgb_url, "no xyz point cloud")
        gt = sample["gt"][0] if "gt" in sample else None
        yield _row(rgb_url, pc_url, cat, split, normal, label, gt, token, skip)


# ------------------------------------------------------------------------------------------------ VisA


def rows_visa(root: str, wanted: list[str] | None, report: CatalogReport) -> Iterator[Row]:
    """VisA: ``split_csv/1cls.csv`` decides split and label; files are checked against the listing."""
    csv_url = storage.join_url(root, *VISA_CSV)
    records = _read_csv(csv_url, VISA_COLUMNS)
    by_object: dict[str, list[dict[str, str]]] = {}
    for rec in records:
        by_object.setdefault(rec["object"], []).append(rec)
    if wanted:
        unknown = sorted(set(wanted) - set(by_object))
        if unknown:
            raise CatalogError(f"categories {unknown} are not in {csv_url}; it lists {sorted(by_object)}")
    for obj in [o for o in by_object if not wanted or o in wanted]:
        images: dict[str, tuple[str, dict[str, Any]]] = {}
        for url, info in _item_files(storage.join_url(root, obj, "Data", "Images"), report):
            images[_relative(url, root)] = (url, info)
        masks = {
            _relative(u, root): u for u, _ in storage.walk_files(storage.join_url(root, obj, "Data", "Masks"))
        }
        defects = _visa_defects(root, obj)
        for rec in by_object[obj]:
            rel = rec["image"].strip().lstrip("/")
            if rel not in images:
                report.note("missing", storage.join_url(root, rel), "listed in 1cls.csv but absent")
                continue
            url, info = images.pop(rel)
            normal = rec["label"].strip().lower() in NORMAL_LABELS
            mask_rel = (rec["mask"] or "").strip().lstrip("/")
            gt = masks.pop(mask_rel, None) if mask_rel else None
            if mask_rel and gt is None:
                report.note("missing", storage.join_url(root, mask_rel), "mask listed in 1cls.csv not found")
            defect = "good" if normal else defects.get(rel) or "anomaly"
            split = SPLITS.get(rec["split"].strip().lower(), "test")
            skip = _skip(url, info)
            yield _row(url, None, obj, split, normal, defect, gt, _token(url, info, skip), skip)
        for url, _ in images.values():
            report.note("stray", url, "image not listed in split_csv/1cls.csv")
        for url in masks.values():
            report.note("stray", url, "mask not listed in split_csv/1cls.csv")


def _visa_defects(root: str, obj: str) -> dict[str, str]:
    """image path -> defect description from ``<object>/image_anno.csv`` (when the file is there)."""
    url = storage.join_url(root, obj, "image_anno.csv")
    if not storage.exists(url):
        return {}
    try:
        return {r["image"].strip(): r["label"] for r in _read_csv(url, ("image", "label")) if r["label"]}
    except CatalogError:
        return {}


def _read_csv(url: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    data = storage.read_bytes(url)
    header = data.split(b"\n", 1)[0].decode("utf-8-sig").strip().split(",")
    types = {c.strip(): pa.string() for c in header}
    table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=types))
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise CatalogError(f"{url} lacks column(s) {', '.join(missing)}; expected {', '.join(required)}")
    return [{k: (v or "") for k, v in r.items()} for r in table.to_pylist()]


ROW_SOURCES: dict[str, Callable[[str, list[str] | None, CatalogReport], Iterator[Row]]] = {
    "mvtec": rows_mvtec,
    "mvtec3d": rows_mvtec3d,
    "visa": rows_visa,
    "folder": rows_folder,
}
