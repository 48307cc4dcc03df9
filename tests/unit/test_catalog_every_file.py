"""Issue 13, items 2, 6 and 7: every file under an item folder is one row; content tokens follow the bytes;
one file has one URI (and one item id); object keys that readers would normalise are refused with a row."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from adray import catalog, storage
from adray.catalog import CatalogError, build_manifest, canonical_uri, item_id_for, read_manifest, uri_refusal
from adray.io.images import decode_image_noted
from adray.pipeline.decode import decode_batch
from adray.pipeline.spec import DetectorSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.* by package name
from tests.integration import test_pipeline_support as sup  # noqa: E402

GREY = DetectorSpec("greymad", weights="random", device="cpu", plugins=(sup.PLUGIN,))


def _frames(fmt: str, n: int, **kw) -> bytes:
    frames = [Image.fromarray(np.full((16, 16, 3), 40 * (i + 1), np.uint8)) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], **kw)
    return buf.getvalue()


def _png(value: int = 100) -> bytes:
    return sup.png_bytes(np.full((16, 16, 3), value, np.uint8))


#: file name under widget/test/scratch/ -> (bytes, expected result status, what the note or error says)
ODD_FILES = {
    "000.png": (_png(), "ok", None),
    "zero.png": (b"", "empty", "zero bytes"),
    "anim.gif": (_frames("GIF", 3), "ok", "GIF with 3 frames: the first was scored"),
    "pages.tiff": (_frames("TIFF", 2), "ok", "TIFF with 2 frames: the first was scored"),
    "still.gif": (_frames("GIF", 1), "ok", None),
    "anim.webp": (_frames("WEBP", 2, lossless=True), "ok", "WEBP with 2 frames"),
    "..png": (_png(7), "ok", None),
    ".hidden.png": (_png(8), "ok", None),
    "new\nline.png": (_png(9), "refused", "control character ('\\n')"),
    "tab\tbed.png": (_png(10), "refused", "control character ('\\t')"),
    "notes.txt": (b"operator notes", "unsupported", "not an image file name (.txt file"),
    "README": (b"x", "unsupported", "file without an extension"),
    "fake.png": (b"operator notes, not a png", "unsupported", "not a recognised image format"),
}
IGNORED = {".DS_Store": b"\0\0\0\1Bud1", "._000.png": b"\0\5\26\7", "Thumbs.db": b"x"}


def _odd_folder(root: Path) -> Path:
    folder = root / "widget" / "test" / "scratch"
    folder.mkdir(parents=True)
    (root / "widget" / "train" / "good").mkdir(parents=True)
    (root / "widget" / "train" / "good" / "000.png").write_bytes(_png(50))
    for name, (data, _, _) in ODD_FILES.items():
        (folder / name).write_bytes(data)
    for name, data in IGNORED.items():
        (folder / name).write_bytes(data)
    (folder / ".thumbnails").mkdir()
    (folder / ".thumbnails" / "000.png").write_bytes(_png(1))
    return folder


def test_every_file_under_an_item_folder_is_one_row_with_the_right_status(tmp_path):
    folder = _odd_folder(tmp_path / "data")
    table, report = build_manifest(str(tmp_path / "data"), "folder")
    test = table.filter(pa.compute.equal(table["split"], "test"))
    names = [u.rsplit("/", 1)[-1] for u in test["uri"].to_pylist()]
    assert sorted(names) == sorted(ODD_FILES)  # each file once; OS metadata not
    assert report.ignored == len(IGNORED) + 1  # and counted: .DS_Store, ._000.png, Thumbs.db, .thumbnails/
    assert dict(report.skipped) == {"empty": 1, "refused": 2, "unsupported": 2}
    # the scoring stage reads the files itself; a skipped file is not read at all
    batch = test.append_column("detector_version", pa.array(["v"] * test.num_rows, pa.string()))
    out = decode_batch(batch, spec=GREY, max_pixels=10**6, needs_xyz=False)
    assert out.num_rows == len(ODD_FILES)
    by_name = {r["uri"].rsplit("/", 1)[-1]: r for r in out.to_pylist()}
    for name, (_, status, said) in ODD_FILES.items():
        row = by_name[name]
        assert row["status"] == status, (name, row["error"])
        if said is not None:
            assert said in ((row["note"] or "") + (row["error"] or "")), (name, row)
        if status != "ok":
            assert row["uri"] in row["error"] or "\n" in name or "\t" in name  # the row names the file
    assert by_name["zero.png"]["error"].endswith("zero bytes when catalogued")
    assert str(folder) in by_name["..png"]["uri"]


def test_a_catalog_skipped_file_is_never_read(tmp_path, monkeypatch):
    _odd_folder(tmp_path / "data")
    table, _ = build_manifest(str(tmp_path / "data"), "folder")
    read = []
    real = storage.read_object
    monkeypatch.setattr(storage, "read_object", lambda url, **kw: read.append(url) or real(url, **kw))
    batch = table.append_column("detector_version", pa.array(["v"] * table.num_rows, pa.string()))
    decode_batch(batch, spec=GREY, max_pixels=10**6, needs_xyz=False)
    skipped = {u for u, s in zip(table["uri"].to_pylist(), table["skip_status"].to_pylist()) if s}
    assert len(skipped) == 5 and not skipped & set(read) and len(read) == table.num_rows - 5


def test_fit_readers_leave_the_skipped_rows_out(tmp_path):
    _odd_folder(tmp_path / "data")
    table, _ = build_manifest(str(tmp_path / "data"), "folder")
    kept = catalog.readable_items(table)
    assert kept.num_rows == table.num_rows - 5 and kept["skip_status"].null_count == kept.num_rows


def test_multi_frame_note_and_single_frame_without_note():
    assert decode_image_noted(_frames("GIF", 3)).note == "GIF with 3 frames: the first was scored"
    first = decode_image_noted(_frames("TIFF", 2))
    assert first.note == "TIFF with 2 frames: the first was scored" and first.rgb[0, 0, 0] == 40
    assert decode_image_noted(_frames("GIF", 1)).note is None


# ------------------------------------------------------------------------------ item 6: tokens follow bytes


def test_same_size_rewrite_keeping_the_mtime_changes_the_token(tmp_path):
    root = tmp_path / "data"
    _odd_folder(root)
    target = root / "widget" / "train" / "good" / "000.png"
    before = build_manifest(str(root), "folder")[0]
    token = dict(zip(before["uri"].to_pylist(), before["content_token"].to_pylist()))[str(target)]
    assert token == "h:" + hashlib.sha256(target.read_bytes()).hexdigest()[:32]
    # cp -p: other bytes of the same size, mtime and atime restored
    replacement = tmp_path / "other.png"
    replacement.write_bytes(_png(51))
    assert replacement.stat().st_size == target.stat().st_size
    st = target.stat()
    shutil.copyfile(replacement, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = build_manifest(str(root), "folder")[0]
    new = dict(zip(after["uri"].to_pylist(), after["content_token"].to_pylist()))[str(target)]
    assert new != token and new == "h:" + hashlib.sha256(_png(51)).hexdigest()[:32]
    # and a touch without a change keeps it
    os.utime(target, None)
    again = build_manifest(str(root), "folder")[0]
    assert dict(zip(again["uri"].to_pylist(), again["content_token"].to_pylist()))[str(target)] == new


# --------------------------------------------------------------------------- item 7: one item, one URI


def test_canonical_uri_one_spelling_per_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path / "x.png")
    for spelling in (here, f"file://{here}", "x.png", "./x.png", f"{tmp_path}/sub/../x.png", f"{tmp_path}//x.png"):
        assert canonical_uri(spelling) == here, spelling
        assert item_id_for(spelling) == item_id_for(here)
    # a canonical local absolute path keeps the id it always had: sha256 of the path itself
    assert item_id_for(here) == hashlib.sha256(here.encode()).hexdigest()[:16]
    assert item_id_for("s3://bucket/a/x.png") == hashlib.sha256(b"s3://bucket/a/x.png").hexdigest()[:16]
    assert canonical_uri("S3A://bucket/a/x.png") == "s3://bucket/a/x.png"
    assert canonical_uri("s3://KEY:SECRET@bucket/a/x.png") == "s3://bucket/a/x.png"
    assert canonical_uri("s3://KEY:SECRET@bucket/a/x.png", keep_userinfo=True) == "s3://KEY:SECRET@bucket/a/x.png"


def test_two_spellings_of_one_file_in_a_manifest_are_refused_not_scored_twice(tmp_path):
    (tmp_path / "x.png").write_bytes(_png())
    m = tmp_path / "m.csv"
    m.write_text(f"uri,category\n{tmp_path}/x.png,c\nfile://{tmp_path}/x.png,c\n")
    with pytest.raises(CatalogError, match=rf"rows 0 and 1 name the same file {tmp_path}/x.png"):
        read_manifest(str(m))
    m.write_text(f"uri,category\nfile://{tmp_path}/x.png,c\n")
    (row,) = read_manifest(str(m)).to_pylist()
    assert row["uri"] == f"{tmp_path}/x.png" and row["item_id"] == item_id_for(f"{tmp_path}/x.png")


@pytest.mark.parametrize(
    "uri, refused",
    [
        ("s3://bucket/a/../x.png", "a '..' segment"),
        ("s3://bucket/a/./x.png", "a '.' segment"),
        ("s3://bucket/a//x.png", "an empty segment"),
        ("s3://bucket/a/..png", None),  # a dot-named file is fine
        ("s3://bucket/a/x..png", None),
        ("/data/a/../x.png", None),  # local: normalised, as the OS reads it
        ("s3://bucket/a/new\nline.png", "control character"),
    ],
)
def test_uri_refusal(uri, refused):
    reason = uri_refusal(uri)
    assert (reason is None) if refused is None else (refused in reason)


def test_a_given_manifest_naming_a_dotdot_key_gets_a_refused_row_not_another_object(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"uri": "s3://bucket/cam/a/../x.png", "category": "c"}\n{"uri": "s3://bucket/cam/x.png", "category": "c"}\n')
    rows = read_manifest(str(m)).to_pylist()
    assert [r["skip_status"] for r in rows] == ["refused", None]
    assert "'..' segment" in rows[0]["skip_reason"] and rows[0]["uri"] == "s3://bucket/cam/a/../x.png"
    assert rows[0]["item_id"] != rows[1]["item_id"]  # two S3 objects, two items
    batch = read_manifest(str(m)).slice(0, 1)
    batch = batch.append_column("detector_version", pa.array(["v"], pa.string()))
    (out,) = decode_batch(batch, spec=GREY, max_pixels=10**6, needs_xyz=False).to_pylist()
    assert out["status"] == "refused" and "'..' segment" in out["error"]  # and nothing was read


def test_s3_keys_that_a_delimited_listing_loses_become_refused_rows(s3_bucket):
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=os.environ["ADRAY_S3_ENDPOINT"], region_name="us-east-1")
    keys = {
        "data/widget/test/scratch/000.png": _png(1),
        "data/widget/test/scratch/a/../000.png": _png(2),  # a different object from 000.png
        "data/widget/test/scratch/./001.png": _png(3),
        "data/widget/test/scratch//002.png": _png(4),
        "data/widget/train/good/000.png": _png(5),
    }
    for key, data in keys.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    table, report = build_manifest(f"{s3_bucket}/data", "folder")
    rows = {r["uri"].removeprefix(f"{s3_bucket}/"): r for r in table.to_pylist()}
    assert sorted(rows) == sorted(keys)  # every key is a row
    refused = sorted(k for k, r in rows.items() if r["skip_status"] == "refused")
    assert refused == sorted(k for k in keys if "/./" in k or "/../" in k or "//" in k)
    assert report.skipped["refused"] == 3
    assert rows["data/widget/test/scratch/000.png"]["content_token"].startswith("e:")


def test_two_masks_for_one_image_the_clash_is_reported_with_both_names(tmp_path):
    root = tmp_path / "data"
    for rel in ("bottle/train/good/000.png", "bottle/test/crack/000.png", "bottle/test/crack/001.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png())
    gt = root / "bottle" / "ground_truth" / "crack"
    gt.mkdir(parents=True)
    for name in ("000.png", "000_mask.png", "001_mask.png", "001_mask.jpg"):
        (gt / name).write_bytes(_png(255))
    table, report = build_manifest(str(root), "mvtec")
    masks = {r["uri"].rsplit("/", 1)[-1]: r["gt_mask_uri"] for r in table.to_pylist() if r["split"] == "test"}
    assert masks == {"000.png": str(gt / "000_mask.png"), "001.png": str(gt / "001_mask.jpg")}
    assert report.clashes == 2 and report.stray == 0
    text = "\n".join(report.examples)
    assert f"clashes: {gt / '000.png'} (another mask fits the same image; used {gt / '000_mask.png'})" in text
    assert f"clashes: {gt / '001_mask.png'} (another mask fits the same image; used {gt / '001_mask.jpg'})" in text
    assert "mask clashes: 2" in report.summary()
