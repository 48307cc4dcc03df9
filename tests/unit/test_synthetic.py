"""The synthetic generator: deterministic bytes, MVTec layouts, masks that cover exactly the defects."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from adray import cli, storage, synthetic
from adray.synthetic import (
    CATEGORIES_2D,
    CATEGORIES_3D,
    DEFECTS_3D,
    defects_for,
    generate_mvtec_3d,
    generate_mvtec_ad,
    make_rgb_sample,
    make_xyz_sample,
)

SMALL_2D = dict(image_size=32, n_train=2, n_test_good=1, n_test_per_defect=1)
SMALL_3D = dict(image_size=32, n_train=2, n_validation=1, n_test_good=1, n_test_per_defect=1)


def _tree_bytes(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.mark.parametrize("layout", ["mvtec", "mvtec3d"])
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, layout):
    generate = generate_mvtec_ad if layout == "mvtec" else generate_mvtec_3d
    small = SMALL_2D if layout == "mvtec" else SMALL_3D
    cats = ("grid", "nut") if layout == "mvtec" else ("potato",)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate(str(tmp_path / name), categories=cats, seed=seed, **small)
    a, b, c = (_tree_bytes(str(tmp_path / n)) for n in "abc")
    assert a and a == b
    assert a.keys() == c.keys()
    assert all(
        a[k] != c[k]
        for k in a
        if k.endswith((".png", ".tiff")) and "ground_truth" not in k and "/gt/" not in k
    )


def test_mvtec_ad_layout_and_masks(tmp_path):
    summary = generate_mvtec_ad(str(tmp_path), categories=("carpet", "bottle"), **SMALL_2D)
    files = _tree_bytes(str(tmp_path))
    assert summary.n_files == len(files)
    assert summary.counts["bottle"]["test"] == {"good": 1, "scratch": 1, "hole": 1, "stain": 1, "missing": 1}
    assert "missing" not in summary.counts["carpet"]["test"]
    assert summary.counts["carpet"]["train"] == {"good": 2}
    assert {"carpet/train/good/000.png", "carpet/train/good/001.png", "carpet/test/good/000.png"} <= set(
        files
    )
    assert not any(k.startswith("carpet/ground_truth/good") for k in files)
    for defect in defects_for("bottle"):
        image = np.asarray(Image.open(io.BytesIO(files[f"bottle/test/{defect}/000.png"])))
        mask = np.asarray(Image.open(io.BytesIO(files[f"bottle/ground_truth/{defect}/000_mask.png"])))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 255}
    assert "bottle/test: good=1" in summary.to_text()


def test_mvtec_3d_layout_point_cloud_and_gt(tmp_path):
    summary = generate_mvtec_3d(str(tmp_path), categories=("cookie",), **SMALL_3D)
    files = _tree_bytes(str(tmp_path))
    assert summary.n_files == len(files) == 3 * (2 + 1 + 1 + len(DEFECTS_3D))
    for split in ("train", "validation", "test"):
        for kind in ("rgb/000.png", "xyz/000.tiff", "gt/000.png"):
            assert f"cookie/{split}/good/{kind}" in files
    xyz = tifffile.imread(io.BytesIO(files["cookie/test/dent_3d_only/xyz/000.tiff"]))
    assert xyz.dtype == np.float32 and xyz.shape == (32, 32, 3)
    gt = np.asarray(Image.open(io.BytesIO(files["cookie/test/dent_3d_only/gt/000.png"])))
    good_gt = np.asarray(Image.open(io.BytesIO(files["cookie/test/good/gt/000.png"])))
    assert gt.max() == 255 and good_gt.max() == 0


@pytest.mark.parametrize("category", CATEGORIES_2D)
def test_rgb_defects_change_pixels_only_inside_their_mask(category):
    clean, clean_mask = make_rgb_sample(category, "good", 64, np.random.default_rng(3))
    assert not clean_mask.any()
    for defect in defects_for(category):
        image, mask = make_rgb_sample(category, defect, 64, np.random.default_rng(3))
        changed = (image != clean).any(-1)
        assert mask.any(), defect
        assert not (changed & ~mask).any(), f"{defect} changed pixels outside its mask"
        assert changed[mask].mean() > 0.9, f"{defect} mask marks pixels the defect did not touch"


@pytest.mark.parametrize("category", CATEGORIES_3D)
def test_3d_defects_touch_the_right_modality_inside_the_mask(category):
    rgb0, xyz0, mask0 = make_xyz_sample(category, "good", 48, np.random.default_rng(5))
    assert not mask0.any()
    for defect in DEFECTS_3D:
        rgb, xyz, mask = make_xyz_sample(category, defect, 48, np.random.default_rng(5))
        rgb_changed = (rgb != rgb0).any(-1)
        xyz_changed = (xyz != xyz0).any(-1)
        assert mask.any()
        assert not (rgb_changed & ~mask).any() and not (xyz_changed & ~mask).any(), defect
        if defect.endswith("_3d_only"):
            assert np.array_equal(rgb, rgb0), "3d-only defects must leave the rgb unchanged"
        else:
            assert rgb_changed[mask].mean() > 0.5, defect
        if defect == "color":
            assert np.array_equal(xyz, xyz0)
        else:
            assert np.abs(xyz[..., 2] - xyz0[..., 2])[mask].max() > 0.3, defect


def test_point_cloud_has_missing_points_and_a_tilted_background_plane():
    _, xyz, _ = make_xyz_sample("cookie", "good", 64, np.random.default_rng(11))
    missing = (xyz == 0).all(-1)
    border = np.concatenate([missing[0], missing[-1], missing[:, 0], missing[:, -1]])
    assert border.any() and missing[4:-4, 4:-4].any()
    # background = valid points outside the cookie's reach; a least-squares plane fits them to noise level
    valid = ~missing
    z = xyz[..., 2]
    yy, xx = np.mgrid[0:64, 0:64]
    background = valid & (np.hypot(yy - 32, xx - 32) > 0.42 * 64)
    a = np.c_[xyz[background][:, :2], np.ones(background.sum())]
    coef, *_ = np.linalg.lstsq(a, z[background], rcond=None)
    residual = z[background] - a @ coef
    assert np.abs(coef[:2]).max() > 0.01  # tilted, so plane removal is needed
    assert np.abs(residual).max() < 0.2
    assert z[valid].min() < coef[2] - 3  # the object rises millimetres above the plane


def test_unknown_names_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="unknown 2D category"):
        make_rgb_sample("cookie", None, 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not apply"):
        make_rgb_sample("carpet", "missing", 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect types"):
        generate_mvtec_ad("/nonexistent", defects=("dust",))
    with pytest.raises(ValueError, match="at least 16"):
        make_xyz_sample("cookie", "dent", 8, np.random.default_rng(0))


def test_defect_subset_and_item_seeds_do_not_depend_on_counts(tmp_path):
    generate_mvtec_ad(str(tmp_path / "a"), categories=("nut",), defects=("hole",), **SMALL_2D)
    generate_mvtec_ad(str(tmp_path / "b"), categories=("nut",), defects=("hole", "stain"), n_train=5)
    a, b = _tree_bytes(str(tmp_path / "a")), _tree_bytes(str(tmp_path / "b"))
    assert {k.split("/")[2] for k in a if "/test/" in k} == {"good", "hole"}
    assert len([k for k in b if "/train/" in k]) == 5
    assert a["nut/test/hole/000.png"] != b["nut/test/hole/000.png"]  # different size (32 vs 128)
    generate_mvtec_ad(
        str(tmp_path / "c"), categories=("nut",), defects=("hole",), **{**SMALL_2D, "n_train": 4}
    )
    c = _tree_bytes(str(tmp_path / "c"))
    assert all(c[k] == v for k, v in a.items())


def test_cli_writes_both_layouts(tmp_path, capsys):
    out = str(tmp_path / "ds")
    argv = ["synth", "--output", out, "--layout", "both", "--size", "24", "--n-train", "1"]
    argv += ["--n-test-good", "1", "--n-test-per-defect", "1", "--n-validation", "1"]
    argv += ["--categories", "leather,potato", "--seed", "3"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "mvtec dataset at" in text and "mvtec3d dataset at" in text
    assert os.path.exists(os.path.join(out, "mvtec", "leather", "ground_truth", "stain", "000_mask.png"))
    assert os.path.exists(os.path.join(out, "mvtec3d", "potato", "test", "bump_3d_only", "xyz", "000.tiff"))


@pytest.mark.integration
def test_generator_writes_to_s3(s3_bucket):
    url = f"{s3_bucket}/synth"
    summary = generate_mvtec_ad(url, categories=("grid",), **SMALL_2D)
    assert summary.files[0].startswith("s3://")
    listed = [u for u, _ in storage.walk_files(url)]
    assert sorted(listed) == sorted(summary.files)
    local = make_rgb_sample("grid", "good", 32, synthetic._item_rng(0, "grid", "train", "good", 0))[0]
    remote = np.asarray(Image.open(io.BytesIO(storage.read_bytes(f"{url}/grid/train/good/000.png"))))
    assert np.array_equal(local, remote)
