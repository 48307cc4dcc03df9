"""Ground truth read as a careful evaluator would: JPEG masks, shapes that do not line up, two candidate
masks, categories with one class, and evaluation settings out of range.

Frames are built the way join_ground_truth returns them; maps go through the real 16-bit PNG codec and masks
are real files (PNG, JPEG) written with Pillow.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from adray import metrics
from adray.evaluation import EvalConfig, EvaluationError, evaluate_frame, render_html, write_report
from adray.evaluation.ground_truth import mask_shape_problem, other_mask_files
from adray.io.images import read_mask, resize_mask
from adray.io.masks import decode_map_png16, encode_map_png16, read_ground_truth_mask, resize_map

RNG = np.random.default_rng(7)


def _encode(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _block_mask(shape=(32, 32), rows=slice(8, 24), cols=slice(8, 16)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def _noisy_map(mask: np.ndarray) -> np.ndarray:
    """A map that ranks defect pixels higher on the whole but not perfectly (so every pixel counts)."""
    return (mask * 0.5 + RNG.random(mask.shape)).astype(np.float32)


class Frame:
    """Rows of a joined frame, with maps and masks written under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: list[dict] = []

    def add(self, item_id: str, category: str, label: int, amap: np.ndarray, *, score: float | None = None,
            gt: bytes | None = None, gt_name: str | None = None) -> np.ndarray:  # fmt: skip
        """Add one row; returns the map as the evaluation will decode it (16-bit quantised)."""
        png, lo, hi = encode_map_png16(amap)
        map_path = self.root / "maps" / f"{item_id}.png"
        map_path.parent.mkdir(parents=True, exist_ok=True)
        map_path.write_bytes(png)
        gt_uri = None
        if gt is not None:
            gt_path = self.root / "gt" / category / (gt_name or f"{item_id.rsplit('/', 1)[-1]}_mask.png")
            gt_path.parent.mkdir(parents=True, exist_ok=True)
            gt_path.write_bytes(gt)
            gt_uri = str(gt_path)
        self.rows.append(
            dict(item_id=item_id, uri=f"/images/{item_id}.png", category=category, detector="det",
                 detector_version="det-v1", label=label,
                 image_score=float(amap.max()) if score is None else score, threshold=None,
                 mask_uri=str(map_path), map_min=lo, map_max=hi, gt_mask_uri=gt_uri, defect_type=None)
        )  # fmt: skip
        return decode_map_png16(png, lo, hi)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _normals(frame: Frame, category: str, n: int = 3, shape=(32, 32)) -> list[np.ndarray]:
    return [frame.add(f"{category}/good/{i:03d}", category, 0, RNG.random(shape).astype(np.float32))
            for i in range(n)]  # fmt: skip


def _expected_pixels(masks, maps) -> metrics.PixelMetrics:
    return metrics.pixel_metrics(masks, maps, fpr_limit=0.3)


# ------------------------------------------------------------------------------------ reading a mask file


def test_jpeg_mask_is_binarised_at_half_range_not_any_nonzero():
    true = _block_mask((64, 64), slice(20, 40), slice(10, 30))
    for quality in (60, 75, 95):
        data = _encode(true.astype(np.uint8) * 255, "JPEG", quality=quality)
        assert read_mask(data).sum() > true.sum()  # compression noise read as defect by "any nonzero"
        np.testing.assert_array_equal(read_ground_truth_mask(data), true)
    rgb = np.repeat(true[..., None], 3, axis=2).astype(np.uint8) * 255
    np.testing.assert_array_equal(read_ground_truth_mask(_encode(rgb, "JPEG", quality=70)), true)


def test_sixteen_bit_masks_use_half_of_their_range():
    true = _block_mask()
    noisy = np.where(true, 60000, 900).astype(np.uint16)  # a low floor well below half range
    np.testing.assert_array_equal(read_ground_truth_mask(_encode(noisy)), true)
    edge = np.where(true, 65535, 0).astype(np.uint16)
    edge[7, 8:16] = 32768  # exactly half range counts
    edge[24, 8:16] = 32767  # one below does not
    got = read_ground_truth_mask(_encode(edge))
    assert got[7, 8:16].all() and not got[24, 8:16].any()


def test_eight_bit_boundary_and_mvtec3d_class_values():
    values = np.zeros((4, 4), np.uint8)
    values[0, :] = (127, 128, 200, 255)
    values[1, :3] = (253, 254, 255)  # MVTec 3D-AD stores defect classes as 253..255
    values[2, 0] = 40  # an antialiasing fringe below half range
    got = read_ground_truth_mask(_encode(values))
    assert got[0].tolist() == [False, True, True, True]
    assert got[1, :3].all() and not got[2, 0]


@pytest.mark.parametrize("ids", [(1,), (1, 2, 3)])
def test_lossless_class_id_masks_count_every_nonzero_id(ids):
    mask = np.zeros((12, 12), np.uint8)
    for k, v in enumerate(ids):
        mask[k * 3 : k * 3 + 2, 2:6] = v
    np.testing.assert_array_equal(read_ground_truth_mask(_encode(mask)), mask > 0)


def test_faint_jpeg_is_not_read_as_class_ids():
    faint = np.where(_block_mask((64, 64)), 60, 0).astype(np.uint8)
    assert not read_ground_truth_mask(_encode(faint, "JPEG", quality=90)).any()


def test_palette_one_bit_and_alpha_masks():
    true = _block_mask()
    pal = Image.fromarray(true.astype(np.uint8)).convert("P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 = red
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    np.testing.assert_array_equal(read_ground_truth_mask(buf.getvalue()), true)
    bits = Image.fromarray(true).convert("1")
    buf = io.BytesIO()
    bits.save(buf, format="PNG")
    np.testing.assert_array_equal(read_ground_truth_mask(buf.getvalue()), true)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha is not defect
    rgba[true, 0] = 255
    np.testing.assert_array_equal(read_ground_truth_mask(_encode(rgba)), true)


def test_unreadable_mask_files_raise_value_error():
    with pytest.raises(ValueError, match="zero bytes"):
        read_ground_truth_mask(b"")
    with pytest.raises(ValueError, match="not a readable image"):
        read_ground_truth_mask(b"certainly not an image")
    data = _encode(np.full((64, 64), 255, np.uint8))
    with pytest.raises(ValueError, match="over the limit"):
        read_ground_truth_mask(data, max_pixels=1000)


# ----------------------------------------------------------------------------------- shapes that line up


@pytest.mark.parametrize(
    "mask_shape, image_shape, problem",
    [
        ((32, 32), (32, 32), None),
        ((64, 48), (32, 24), None),  # exact 2x
        ((16, 12), (48, 36), None),  # exact 1/3x
        ((24, 32), (32, 24), "transposed"),
        ((32, 30), (32, 32), "different aspect ratio"),  # a few pixels off
        ((34, 34), (32, 32), "not an integer rescale"),
        ((48, 48), (32, 32), "not an integer rescale"),  # 1.5x
        ((64, 96), (32, 32), "different aspect ratio"),  # 2x and 3x
    ],
)
def test_mask_shape_problem(mask_shape, image_shape, problem):
    got = mask_shape_problem(mask_shape, image_shape)
    assert got is None if problem is None else problem in got


# ------------------------------------------------------------------------------------ pixel metrics


def test_jpeg_masks_in_pixel_metrics_count_only_the_defect(tmp_path):
    f = Frame(tmp_path)
    maps = _normals(f, "cat")
    masks: list[np.ndarray | None] = [None] * len(maps)
    for i, rows in enumerate((slice(5, 21), slice(0, 7))):  # edges off the 8x8 JPEG blocks: noise there
        true = _block_mask(rows=rows, cols=slice(7, 19))
        jpeg = _encode(true.astype(np.uint8) * 255, "JPEG", quality=75)
        name = f"{i:03d}_mask.jpg"
        maps.append(f.add(f"cat/crack/{i:03d}", "cat", 1, _noisy_map(true), gt=jpeg, gt_name=name))
        masks.append(true)
    got = evaluate_frame(f.frame(), EvalConfig(pixel_size=32))["detectors"]["det"]["categories"]["cat"]
    want = _expected_pixels(masks, maps)
    assert got["pixel_auroc"] == pytest.approx(want.pixel_auroc)
    assert got["aupro"] == pytest.approx(want.aupro)
    noisy = [read_mask(Path(r["gt_mask_uri"]).read_bytes()) if r["gt_mask_uri"] else None for r in f.rows]
    assert _expected_pixels(noisy, maps).pixel_auroc != pytest.approx(want.pixel_auroc)  # the old reading


@pytest.mark.parametrize("pixel_size", [0, 32, 256])
@pytest.mark.parametrize(
    "bad_shape, why", [((24, 32), "transposed"), ((32, 22), "different aspect ratio"), ((48, 36), "integer")]
)
def test_mask_that_does_not_line_up_is_left_out_and_named(tmp_path, pixel_size, bad_shape, why):
    f = Frame(tmp_path)
    shape = (32, 24)  # non-square images, so a transposed mask is visibly wrong
    maps = _normals(f, "cat", shape=shape)
    good = _block_mask(shape, slice(4, 20), slice(4, 12))
    good_map = f.add("cat/crack/000", "cat", 1, _noisy_map(good), gt=_encode(good.astype(np.uint8) * 255))
    bad = np.zeros(bad_shape, np.uint8)
    bad[2:10, 2:10] = 255
    f.add("cat/crack/001", "cat", 1, _noisy_map(np.zeros(shape, bool)), gt=_encode(bad))
    doc = evaluate_frame(f.frame(), EvalConfig(pixel_size=pixel_size))
    got = doc["detectors"]["det"]["categories"]["cat"]
    assert got["n_pixel_items"] == len(maps) + 1
    assert list(got["mask_checks"]["left_out_shape"]) == ["cat/crack/001"]
    assert why in got["mask_checks"]["left_out_shape"]["cat/crack/001"]
    assert any("cat/crack/001" in n and "left out of pixel metrics" in n for n in got["notes"])
    grid = (pixel_size, pixel_size) if pixel_size else shape
    want = _expected_pixels(
        [None] * len(maps) + [resize_mask(good, grid)], [resize_map(m, grid) for m in [*maps, good_map]]
    )
    assert got["pixel_auroc"] == pytest.approx(want.pixel_auroc)
    assert got["aupro"] == pytest.approx(want.aupro)
    assert got["image_auroc"] is not None  # image metrics keep the item


@pytest.mark.parametrize("factor", [2, 3, 0.5])
def test_integer_rescaled_mask_is_used_nearest_neighbour(tmp_path, factor):
    f = Frame(tmp_path)
    maps = _normals(f, "cat")
    true = _block_mask()
    amap = _noisy_map(true)
    if factor >= 1:
        stored = np.repeat(np.repeat(true, factor, axis=0), factor, axis=1)
    else:  # the image is twice the mask: map at 32x32, mask at 16x16
        true = _block_mask((16, 16), slice(4, 12), slice(4, 8))
        stored = true
        amap = _noisy_map(np.repeat(np.repeat(true, 2, axis=0), 2, axis=1))
    amap = f.add("cat/crack/000", "cat", 1, amap, gt=_encode(stored.astype(np.uint8) * 255))
    got = evaluate_frame(f.frame(), EvalConfig(pixel_size=32))["detectors"]["det"]["categories"]["cat"]
    assert list(got["mask_checks"]["rescaled"]) == ["cat/crack/000"]
    assert not got["mask_checks"]["left_out_shape"]
    want = _expected_pixels([None] * len(maps) + [resize_mask(stored, 32)], [*maps, amap])
    assert got["n_pixel_items"] == len(maps) + 1
    assert got["pixel_auroc"] == pytest.approx(want.pixel_auroc)
    assert any("integer rescale" in n for n in got["notes"])


def test_unreadable_mask_is_left_out_with_a_note_not_a_crash(tmp_path):
    f = Frame(tmp_path)
    maps = _normals(f, "cat")
    true = _block_mask()
    amap = f.add("cat/crack/000", "cat", 1, _noisy_map(true), gt=_encode(true.astype(np.uint8) * 255))
    f.add("cat/crack/001", "cat", 1, _noisy_map(true), gt=b"\x89PNG\r\n\x1a\n broken")
    got = evaluate_frame(f.frame(), EvalConfig(pixel_size=32))["detectors"]["det"]["categories"]["cat"]
    assert list(got["mask_checks"]["left_out_unreadable"]) == ["cat/crack/001"]
    want = _expected_pixels([None] * 3 + [true], [*maps, amap])
    assert got["pixel_auroc"] == pytest.approx(want.pixel_auroc)


def test_two_mask_files_for_one_image_say_which_was_used(tmp_path):
    f = Frame(tmp_path)
    _normals(f, "cat")
    true = _block_mask()
    f.add("cat/crack/000", "cat", 1, _noisy_map(true), gt=_encode(true.astype(np.uint8) * 255),
          gt_name="000_mask.png")  # fmt: skip
    (tmp_path / "gt" / "cat" / "000.png").write_bytes(_encode(np.zeros((32, 32), np.uint8)))
    (tmp_path / "gt" / "cat" / "000_mask.jpg").write_bytes(_encode(np.zeros((32, 32), np.uint8), "JPEG"))
    f.add("cat/crack/001", "cat", 1, _noisy_map(true), gt=_encode(true.astype(np.uint8) * 255),
          gt_name="001_mask.png")  # fmt: skip
    (tmp_path / "gt" / "cat" / "0011.png").write_bytes(b"x")  # a different image: no clash
    got = evaluate_frame(f.frame(), EvalConfig(pixel_size=32))["detectors"]["det"]["categories"]["cat"]
    several = got["mask_checks"]["several_candidates"]
    assert several == {"cat/crack/000": {"used": "000_mask.png", "others": ["000.png", "000_mask.jpg"]}}
    note = next(n for n in got["notes"] if "more than one mask file" in n)
    assert "used 000_mask.png" in note and "000.png" in note


def test_other_mask_files_lists_each_folder_once(tmp_path, monkeypatch):
    from adray.evaluation import ground_truth

    for name in ("a.png", "a_mask.png", "b_mask.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    listed: list[str] = []
    real = ground_truth._list_names
    monkeypatch.setattr(ground_truth, "_list_names", lambda folder: listed.append(folder) or real(folder))
    got = other_mask_files([str(tmp_path / n) for n in ("a_mask.png", "b_mask.png", "c.png")])
    assert got == {str(tmp_path / "a_mask.png"): ["a.png"]}
    assert listed == [str(tmp_path)]
    assert other_mask_files([str(tmp_path / "missing" / "x.png")]) == {}


# ---------------------------------------------------------------------------- categories with one class


def _two_categories(tmp_path: Path) -> Frame:
    f = Frame(tmp_path)
    for i, score in enumerate((0.1, 0.5, 0.7)):
        f.add(f"mixed/good/{i:03d}", "mixed", 0, np.zeros((8, 8), np.float32), score=score)
    for i, score in enumerate((0.6, 0.2)):
        f.add(f"mixed/crack/{i:03d}", "mixed", 1, np.zeros((8, 8), np.float32), score=score)
    for i, score in enumerate((0.3, 0.9, 0.4)):  # anomalous only: AUPR and F1-max would be 1.0
        f.add(f"allbad/crack/{i:03d}", "allbad", 1, np.zeros((8, 8), np.float32), score=score)
    return f


def test_one_class_category_gets_no_image_metrics_and_stays_out_of_the_means(tmp_path):
    doc = evaluate_frame(_two_categories(tmp_path).frame(), EvalConfig(pixel_size=8))
    det = doc["detectors"]["det"]
    allbad, mixed = det["categories"]["allbad"], det["categories"]["mixed"]
    assert allbad["one_class"] and not mixed["one_class"]
    for metric in ("image_auroc", "aupr", "f1_max"):
        assert allbad[metric] is None
        assert det["mean"][metric] == pytest.approx(mixed[metric])
        assert det["mean"]["n_categories"][metric] == 1
    labels, scores = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.5, 0.7, 0.6, 0.2])
    assert mixed["aupr"] == pytest.approx(metrics.aupr(labels, scores))
    assert det["mean"]["one_class_categories"] == ["allbad"]
    assert any("one class only" in n for n in allbad["notes"])


def test_normal_only_category_is_one_class_too(tmp_path):
    f = _two_categories(tmp_path)
    f.rows = [r for r in f.rows if r["category"] != "allbad"]
    for i in range(2):
        f.add(f"allgood/good/{i:03d}", "allgood", 0, np.zeros((8, 8), np.float32), score=0.1 * i)
    det = evaluate_frame(f.frame(), EvalConfig(pixel_size=8))["detectors"]["det"]
    allgood = det["categories"]["allgood"]
    assert allgood["aupr"] is None and allgood["image_auroc"] is None and allgood["f1_max"] is None
    assert det["mean"]["one_class_categories"] == ["allgood"]


def test_report_json_and_html_carry_the_nulls(tmp_path):
    doc = evaluate_frame(_two_categories(tmp_path / "data").frame(), EvalConfig(pixel_size=8))
    json_url, html_url = write_report(doc, str(tmp_path / "report"))
    back = json.loads(Path(json_url).read_text())
    assert back["detectors"]["det"]["categories"]["allbad"]["aupr"] is None
    html = render_html(doc)
    assert "leave out allbad (one class only)" in html
    assert "allbad: the evaluated test items are of one class only" in html


# ------------------------------------------------------------------------------ settings out of range


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.5, float("nan")])
def test_fpr_limit_out_of_range_is_refused(limit):
    with pytest.raises(EvaluationError, match="fpr-limit"):
        EvalConfig(fpr_limit=limit)


def test_fpr_limit_one_is_accepted_and_other_settings_are_checked():
    assert EvalConfig(fpr_limit=1.0).fpr_limit == 1.0
    with pytest.raises(EvaluationError, match="target-fpr"):
        EvalConfig(target_fprs=(0.1, 1.2))
    with pytest.raises(EvaluationError, match="pixel-size"):
        EvalConfig(pixel_size=-1)


@pytest.mark.parametrize("flags", [["--fpr-limit", "0"], ["--fpr-limit", "-1"], ["--fpr-limit", "2"],
                                   ["--target-fpr", "-0.5"]])  # fmt: skip
def test_evaluate_command_refuses_bad_settings_in_one_line(tmp_path, capsys, flags):
    from adray.cli import main

    rc = main(["evaluate", "--results", str(tmp_path), "--input", str(tmp_path), "--report",
               str(tmp_path / "r"), *flags])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("adray evaluate: error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_evaluate_command_without_results_is_one_line(tmp_path, capsys):
    from adray.cli import main

    rc = main(["evaluate", "--results", str(tmp_path / "none"), "--input", str(tmp_path), "--report",
               str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no committed results" in err and "\n" not in err
