"""adray.catalog: layouts -> manifest, stray/unreadable reporting, given manifests, writing, the CLI."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from adray import catalog, storage
from adray.catalog import CatalogError, build_manifest, item_id_for, read_manifest, write_manifest
from adray.schemas import SchemaError, load_schema, validate_table


def _png(value: int = 128, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tiff(size: int = 8) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones((size, size, 3), np.float32))
    return buf.getvalue()


def _put(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        storage.write_bytes(storage.join_url(root, rel), data)


def _mvtec_tree(root: str) -> None:
    _put(
        root,
        {
            "license.txt": b"CC BY-NC-SA",
            "bottle/readme.txt": b"docs",
            "bottle/train/good/000.png": _png(),
            "bottle/train/good/001.png": _png(),
            "bottle/train/good/002.png": b"",  # unreadable: zero bytes
            "bottle/train/good/.DS_Store": b"junk",  # hidden: skipped silently
            "bottle/test/good/000.png": _png(),
            "bottle/test/broken_large/000.png": _png(200),
            "bottle/test/broken_large/001.png": _png(201),
            "bottle/test/broken_large/notes.txt": b"stray",  # stray: not an image
            "bottle/ground_truth/broken_large/000_mask.png": _png(255),
            "bottle/ground_truth/broken_large/001_mask.png": _png(255),
            "bottle/ground_truth/broken_large/009_mask.png": _png(255),  # mask without image
            "cable/train/good/000.png": _png(),
            "cable/test/cut/000.png": _png(),  # anomalous test image without a mask
            "cable/ground_truth/cut/111_mask.png": _png(255),
            "Thumbs.db": b"junk",
        },
    )


def _by_name(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    return {"/".join(r["uri"].split("/")[-4:]): r for r in rows}


def test_mvtec_ad_layout_is_detected_and_catalogued(tmp_path):
    root = str(tmp_path / "mvtec")
    _mvtec_tree(root)
    table, report = build_manifest(root)
    validate_table(table, "manifest")
    assert table.schema.equals(load_schema("manifest"))
    # every file under a label folder is a row: 7 images, the zero-byte 002.png and notes.txt (not read)
    assert report.layout == "mvtec" and report.items == table.num_rows == 9
    rows = _by_name(table)
    good = rows["bottle/train/good/000.png"]
    assert good["label"] == 0 and good["defect_type"] == "good" and good["split"] == "train"
    assert good["gt_mask_uri"] is None and good["pc_uri"] is None
    bad = rows["bottle/test/broken_large/001.png"]
    assert bad["label"] == 1 and bad["defect_type"] == "broken_large" and bad["category"] == "bottle"
    assert bad["gt_mask_uri"].endswith("bottle/ground_truth/broken_large/001_mask.png")
    assert bad["item_id"] == hashlib.sha256(bad["uri"].encode()).hexdigest()[:16] == item_id_for(bad["uri"])
    assert bad["content_token"] == "h:" + hashlib.sha256(_png(201)).hexdigest()[:32]
    assert bad["skip_status"] is None and bad["skip_reason"] is None
    assert rows["cable/test/cut/000.png"]["gt_mask_uri"] is None
    empty, notes = rows["bottle/train/good/002.png"], rows["bottle/test/broken_large/notes.txt"]
    assert (empty["skip_status"], empty["skip_reason"]) == ("empty", "zero bytes when catalogued")
    assert notes["skip_status"] == "unsupported" and "not an image file name (.txt file" in notes["skip_reason"]
    assert notes["label"] == 1 and notes["defect_type"] == "broken_large"
    assert dict(report.skipped) == {"empty": 1, "unsupported": 1}
    # what was left out, and why: docs and .DS_Store ignored, masks without an image stray
    assert report.unreadable == 0 and report.stray == 2 and report.missing == 1 and report.ignored == 3
    text = "\n".join(report.examples)
    assert "009_mask.png (ground-truth mask without a matching image)" in text
    assert "cable/test/cut/000.png (no ground-truth mask)" in text
    assert "Thumbs.db" not in text and ".DS_Store" not in text
    assert report.groups[("bottle", "test", "anomalous")] == 3  # 000.png, 001.png and notes.txt


def test_catalog_is_deterministic_and_category_filter_works(tmp_path):
    root = str(tmp_path / "mvtec")
    _mvtec_tree(root)
    first, _ = build_manifest(root, "mvtec")
    second, _ = build_manifest(root, "mvtec")
    assert first.column("item_id").to_pylist() == second.column("item_id").to_pylist()
    cable, report = build_manifest(root, categories=["cable"])
    assert set(cable.column("category").to_pylist()) == {"cable"} and report.items == 2
    with pytest.raises(CatalogError, match=r"categories \['nope'\] not found .* \['bottle', 'cable'\]"):
        build_manifest(root, categories=["nope"])


def test_content_token_changes_when_a_file_changes(tmp_path):
    root = str(tmp_path / "mvtec")
    _mvtec_tree(root)
    before = _by_name(build_manifest(root)[0])["bottle/train/good/000.png"]
    storage.write_bytes(storage.join_url(root, "bottle/train/good/000.png"), _png(7, size=9))
    after = _by_name(build_manifest(root)[0])["bottle/train/good/000.png"]
    assert after["item_id"] == before["item_id"] and after["content_token"] != before["content_token"]


def test_mvtec_3d_layout_pairs_rgb_xyz_and_gt(tmp_path):
    root = str(tmp_path / "m3d")
    files = {"tire/calibration/camera_parameters.json": b"{}", "tire/class_ids.json": b"{}"}
    for split, label, n in [
        ("train", "good", 2),
        ("validation", "good", 1),
        ("test", "good", 1),
        ("test", "cut", 2),
    ]:
        for i in range(n):
            files[f"tire/{split}/{label}/rgb/{i:03d}.png"] = _png()
            files[f"tire/{split}/{label}/xyz/{i:03d}.tiff"] = _tiff()
            if split == "test":
                files[f"tire/{split}/{label}/gt/{i:03d}.png"] = _png(0 if label == "good" else 255)
    files["tire/train/good/rgb/005.png"] = _png()  # no xyz partner
    files["tire/train/good/xyz/006.tiff"] = b""  # zero bytes
    files["tire/test/cut/depth/000.png"] = _png()  # stray folder
    _put(root, files)
    table, report = build_manifest(root)
    assert report.layout == "mvtec3d"
    rows = _by_name(table)
    assert table.num_rows == 7
    cut = rows["test/cut/rgb/001.png"]
    assert cut["pc_uri"].endswith("tire/test/cut/xyz/001.tiff")
    assert cut["gt_mask_uri"].endswith("tire/test/cut/gt/001.png")
    assert cut["label"] == 1 and cut["defect_type"] == "cut"
    assert cut["content_token"].count("|") == 1 and cut["content_token"].startswith("h:")
    assert rows["validation/good/rgb/000.png"]["split"] == "validation"
    lonely = rows["train/good/rgb/005.png"]
    assert lonely["pc_uri"] is None and "|" not in lonely["content_token"]
    assert report.missing == 1 and report.unreadable == 1 and report.stray == 1 and report.ignored == 2


def _visa_tree(root: str) -> None:
    csv_text = (
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png\n"
        "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,\n"
    )
    _put(
        root,
        {
            "split_csv/1cls.csv": csv_text.encode(),
            "candle/Data/Images/Normal/0000.JPG": _png(),
            "candle/Data/Images/Normal/0001.JPG": _png(),
            "candle/Data/Images/Normal/0002.JPG": _png(),  # not in the CSV: stray
            "candle/Data/Images/Anomaly/000.JPG": _png(),
            "candle/Data/Masks/Anomaly/000.png": _png(255),
            "candle/image_anno.csv": b"image,label,mask\ncandle/Data/Images/Anomaly/000.JPG,wax missing,x\n",
            "pcb1/Data/Images/Normal/0000.JPG": b"",  # zero bytes
            "LICENSE-DATASET": b"license",
        },
    )


def test_visa_layout_follows_its_split_csv(tmp_path):
    root = str(tmp_path / "visa")
    _visa_tree(root)
    table, report = build_manifest(root)
    assert report.layout == "visa"
    rows = _by_name(table)
    assert sorted(rows) == [
        "Data/Images/Anomaly/000.JPG",
        "Data/Images/Normal/0000.JPG",
        "Data/Images/Normal/0001.JPG",
    ]
    bad = rows["Data/Images/Anomaly/000.JPG"]
    assert bad["category"] == "candle" and bad["split"] == "test" and bad["label"] == 1
    assert bad["defect_type"] == "wax missing"
    assert bad["gt_mask_uri"].endswith("candle/Data/Masks/Anomaly/000.png")
    assert rows["Data/Images/Normal/0000.JPG"]["split"] == "train"
    assert report.stray == 1 and report.unreadable == 0
    assert report.missing == 1  # 001.JPG listed but absent
    only_pcb, _ = build_manifest(root, "visa", categories=["pcb1"])  # its listed image has zero bytes: a row
    assert only_pcb.column("skip_status").to_pylist() == ["empty"]


def test_generic_folder_layout(tmp_path):
    root = str(tmp_path / "folder")
    _put(
        root,
        {
            "widget/train/normal/a.png": _png(),
            "widget/val/normal/b.jpg": _png(),
            "widget/test/normal/c.png": _png(),
            "widget/test/scratch/line2/d.png": _png(),
            "widget/test/loose.png": _png(),  # stray: no label folder
            "widget/extra/e.png": _png(),  # stray: not a split
        },
    )
    table, report = build_manifest(root)
    assert report.layout == "folder"
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert rows["b.jpg"]["split"] == "validation" and rows["b.jpg"]["defect_type"] == "good"
    assert rows["d.png"]["label"] == 1 and rows["d.png"]["defect_type"] == "scratch"
    assert report.stray == 2 and table.num_rows == 4


def test_unknown_layout_names_the_supported_ones_and_the_manifest_option(tmp_path):
    _put(str(tmp_path / "flat"), {"a.png": _png(), "b.png": _png()})
    with pytest.raises(CatalogError) as e:
        build_manifest(str(tmp_path / "flat"))
    msg = str(e.value)
    assert all(name in msg for name in catalog.LAYOUTS) and "manifest" in msg and "--layout" in msg
    with pytest.raises(CatalogError, match="does not exist"):
        build_manifest(str(tmp_path / "missing"))
    with pytest.raises(CatalogError, match="unknown layout 'coco'"):
        build_manifest(str(tmp_path / "flat"), "coco")


def test_batches_are_bounded(tmp_path):
    root = str(tmp_path / "mvtec")
    _mvtec_tree(root)
    batches = list(catalog.iter_manifest_batches(root, batch_rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 3]


# -------------------------------------------------------------------------------------- given manifests


def test_read_manifest_csv_normalises_labels_splits_and_ids(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "uri,category,label,split,item_id,line\n"
        "s3://b/a.png,bottle,good,,0001,L1\n"
        "s3://b/b.png,bottle,anomaly,val,,L2\n"
        "s3://b/c.png,bottle,,TEST,,L3\n"
    )
    t = read_manifest(str(path))
    validate_table(t, "manifest")
    assert t.column("item_id").to_pylist() == [
        "0001",
        item_id_for("s3://b/b.png"),
        item_id_for("s3://b/c.png"),
    ]
    assert t.column("label").to_pylist() == [0, 1, None]
    assert t.column("split").to_pylist() == ["test", "validation", "test"]
    assert t.column("defect_type").to_pylist() == ["good", None, None]
    assert t.column("line").to_pylist() == ["L1", "L2", "L3"]  # extra columns kept


def test_read_manifest_parquet_and_jsonl(tmp_path):
    pq.write_table(
        pa.table({"uri": ["/x/a.png"], "category": ["c"], "label": [True]}), tmp_path / "b.parquet"
    )
    assert read_manifest(str(tmp_path / "b.parquet")).column("label").to_pylist() == [1]
    floats = pa.table({"uri": ["/x/a.png", "/x/b.png"], "category": ["c", "c"], "label": [1.0, float("nan")]})
    pq.write_table(floats, tmp_path / "m.parquet")  # pandas writes unknown labels as NaN
    assert read_manifest(str(tmp_path / "m.parquet")).column("label").to_pylist() == [1, None]
    lines = [
        {"uri": "/x/a.png", "category": "c", "label": 0, "pc_uri": "/x/a.tiff"},
        {"uri": "/x/b.png", "category": "c"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    t = read_manifest(str(tmp_path / "m.jsonl"))
    assert t.column("pc_uri").to_pylist() == ["/x/a.tiff", None] and t.num_rows == 2


def test_manifest_missing_a_required_column_names_it_and_the_required_set(tmp_path):
    (tmp_path / "m.csv").write_text("uri,label\n/x/a.png,0\n")
    with pytest.raises(CatalogError) as e:
        read_manifest(str(tmp_path / "m.csv"))
    assert "lacks required column(s) category; required: uri, category" in str(e.value)


@pytest.mark.parametrize(
    "body, match",
    [
        ("uri,category,label\n/x/a.png,c,maybe\n", "label 'maybe' is not 0/1"),
        ("uri,category,label\n/x/a.png,c,2\n", "label 2 is not 0/1"),
        ("uri,category,split\n/x/a.png,c,holdout\n", "unknown split 'holdout'"),
        ("uri,category\n/x/a.png,c\n/x/a.png,c\n", "rows 0 and 1 name the same file /x/a.png"),
        ("item_id,uri,category\nk,/x/a.png,c\nk,/x/b.png,c\n", "duplicate item_id"),
        ("uri,category\n/x/a.png,\n", "'category' is empty in 1 row"),
    ],
)
def test_bad_manifest_values_are_reported(tmp_path, body, match):
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(CatalogError, match=match):
        read_manifest(str(tmp_path / "m.csv"))


def test_manifest_format_and_existence_errors(tmp_path):
    with pytest.raises(CatalogError, match=r"\*.parquet, \*.csv or \*.jsonl"):
        read_manifest(str(tmp_path / "m.xlsx"))
    with pytest.raises(FileNotFoundError):
        read_manifest(str(tmp_path / "absent.parquet"))


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_write_then_read_manifest_round_trips(tmp_path, ext):
    root = str(tmp_path / "mvtec")
    _mvtec_tree(root)
    table, _ = build_manifest(root)
    out = str(tmp_path / f"out/manifest.{ext}")
    assert write_manifest(table, out) == table.num_rows
    back = read_manifest(out)
    assert back.select(table.column_names).to_pylist() == table.to_pylist()


def test_write_manifest_is_atomic_on_failure(tmp_path):
    def failing():
        yield pa.RecordBatch.from_pylist([], schema=load_schema("manifest"))
        raise RuntimeError("listing died")

    out = tmp_path / "m.parquet"
    with pytest.raises(RuntimeError):
        write_manifest(failing(), str(out))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_conform_rejects_bad_types_from_a_parquet_manifest(tmp_path):
    pq.write_table(pa.table({"uri": ["/a"], "category": ["c"], "gt_mask_uri": [3.5]}), tmp_path / "m.parquet")
    t = read_manifest(str(tmp_path / "m.parquet"))  # a float where a string is expected is cast, not lost
    assert t.column("gt_mask_uri").to_pylist() == [storage.absolute_url("3.5")]  # a relative local path
    with pytest.raises(SchemaError):
        validate_table(pa.table({"uri": ["/a"]}), "manifest")


# ------------------------------------------------------------------------------------ S3, CLI, synthetic


def test_catalog_on_s3_and_manifest_round_trip(s3_bucket):
    root = f"{s3_bucket}/datasets/mvtec"
    _mvtec_tree(root)
    table, report = build_manifest(root)
    assert report.layout == "mvtec" and table.num_rows == 9 and report.stray == 2 and report.ignored == 3
    uris = table.column("uri").to_pylist()
    assert all(u.startswith(f"{s3_bucket}/datasets/mvtec/") for u in uris)
    assert all(t.startswith("e:") for t in table.column("content_token").to_pylist())  # S3: the ETag
    assert storage.read_bytes(uris[0])[:4] == b"\x89PNG"
    out = f"{s3_bucket}/manifests/m.parquet"
    report = catalog.catalog_to(root, out)
    assert read_manifest(out).column("item_id").to_pylist() == table.column("item_id").to_pylist()
    assert report.items == 9

    def failing():
        yield from table.to_batches(max_chunksize=2)
        raise RuntimeError("listing died")

    with pytest.raises(RuntimeError):
        write_manifest(failing(), f"{s3_bucket}/manifests/broken.parquet")
    assert not storage.exists(f"{s3_bucket}/manifests/broken.parquet")


def test_cli_catalog_prints_a_summary(tmp_path, capsys):
    from adray.cli import main

    root = str(tmp_path / "mvtec")
    _mvtec_tree(root)
    out = str(tmp_path / "m.parquet")
    assert main(["catalog", "--input", root, "--output", out, "--report-json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "layout mvtec): 9 items" in text and "stray files: 2, unreadable: 0" in text
    assert "catalogued with a row status instead of being read: empty: 1, unsupported: 1" in text
    assert "bottle" in text and "anomalous" in text
    assert json.loads((tmp_path / "r.json").read_text())["items"] == 9
    # a manifest as input is validated and copied
    assert main(["catalog", "--input", out, "--output", str(tmp_path / "m2.csv"), "--category", "cable"]) == 0
    assert "layout manifest): 2 items" in capsys.readouterr().out
    assert main(["catalog", "--input", str(tmp_path / "nothing"), "--output", out]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_catalogs_the_synthetic_generators_output(tmp_path):
    synthetic = pytest.importorskip("adray.synthetic")
    ad = synthetic.generate_mvtec_ad(
        str(tmp_path / "ad"),
        categories=["bottle"],
        image_size=32,
        n_train=2,
        n_test_good=1,
        n_test_per_defect=1,
    )
    table, report = build_manifest(str(tmp_path / "ad"))
    assert report.layout == "mvtec" and report.stray == report.missing == report.unreadable == 0
    expected = sum(n for splits in ad.counts.values() for d in splits.values() for n in d.values())
    assert table.num_rows == expected
    anomalous = [r for r in table.to_pylist() if r["label"] == 1]
    assert anomalous and all(r["gt_mask_uri"] for r in anomalous)
    synthetic.generate_mvtec_3d(
        str(tmp_path / "3d"), categories=["cookie"], image_size=16, n_train=1, n_validation=1, n_test_good=1,
        n_test_per_defect=1, defects=["dent"],
    )  # fmt: skip
    table3d, report3d = build_manifest(str(tmp_path / "3d"))
    assert report3d.layout == "mvtec3d" and table3d.num_rows == 4 and report3d.stray == report3d.missing == 0
    assert all(table3d.column("pc_uri").to_pylist())
