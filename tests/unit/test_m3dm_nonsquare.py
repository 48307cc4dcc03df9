"""M3DM maps in the scan's own pixels on non-square scans, and one point-cloud reader (issue 14, item 1).

M3DM pads a scan to a square before resizing it to the model grid. The pipeline's CPU stages (decode ->
score -> finalize) must cut that padding off the map before resizing it to the scan: a defect near an
edge of a wide or tall scan then has its map's peak inside its mask. Before the fix the padded map was
stretched onto the scan and those peaks landed 10-20 px away. ``m3dmgeom`` below is M3DM's own
preprocessing with a transparent "model": its map is the height above the object's median surface on
the model grid, blurred like M3DM's maps, so the test checks geometry, not a random backbone.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pytest
import torch
from scipy import ndimage

from adray import storage
from adray.catalog import item_id_for, normalise_manifest
from adray.detectors.base import ScoreBatch, content_hash, register_factory
from adray.detectors.m3dm.config import tiny_config
from adray.detectors.m3dm.features import prepare_sample
from adray.detectors.m3dm.preprocessing import PreprocessConfig, preprocess_scan, square_frame
from adray.io.masks import MAP_FRAME_KEY, decode_map_png16, map_to_image, resize_map
from adray.io.pointclouds import (
    PointCloudDecodeError,
    decode_scan_pointcloud,
    organise_for_image,
    to_organised,
)
from adray.pipeline.decode import IMAGE_BYTES, PC_BYTES, decode_batch
from adray.pipeline.detector_set import DetectorSet
from adray.pipeline.rows import finalize_batch
from adray.pipeline.scoring import score_batch
from adray.pipeline.spec import DetectorSpec

CONFIG = tiny_config("widget", mode="xyz", img_size=64)
PITCH_MM = 0.25
BUMP_RADIUS = 5


class HeightGeometry:
    """M3DM's preprocessing, and a map = blurred height above the item's median surface (no backbone)."""

    name: ClassVar[str] = "m3dmgeom"
    modalities = ("rgb", "xyz")

    def __init__(self, **_: Any) -> None:
        self.config = {"kind": self.name}

    version = property(lambda self: content_hash(self.config))
    categories = property(lambda self: None)
    threshold = property(lambda self: None)

    def preprocess(self, sample: dict[str, Any]) -> dict[str, np.ndarray]:
        return prepare_sample(sample, CONFIG, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def score(self, batch: dict[str, Any]) -> ScoreBatch:
        maps = []
        for cloud in np.asarray(batch["xyz"]):
            z, valid = cloud[2], np.any(cloud != 0, axis=0)
            height = np.where(valid, np.clip(np.median(z[valid]) - z, 0, None), 0.0)
            maps.append(ndimage.gaussian_filter(height, CONFIG.map_sigma))
        amap = torch.as_tensor(np.stack(maps), dtype=torch.float32)
        return ScoreBatch(amap.flatten(1).amax(dim=1), amap)

    def save(self, uri: str) -> None:  # not needed by the pipeline
        raise NotImplementedError


register_factory("m3dmgeom", HeightGeometry)
SPEC = DetectorSpec("m3dmgeom", weights="random", device="cpu")

# (H, W) and defect centres near the edges, where a stretched padded map misses them
CASES = {
    (96, 160): [(18, 18), (18, 141), (77, 30), (77, 141)],
    (160, 96): [(18, 18), (141, 18), (30, 77), (141, 77)],
}


def scan(h: int, w: int, centre: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rgb, xyz mm, mask)``: a flat plane (z 500), a plateau 3 mm above it 12 px in from the border
    (the plane's border strips stay for RANSAC) and a 1.5 mm bump of radius 5 px at ``centre``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    z = np.full((h, w), 500.0)
    z[12 : h - 12, 12 : w - 12] = 497.0
    r = np.hypot(yy - centre[0], xx - centre[1]) / BUMP_RADIUS
    z -= 1.5 * np.where(r < 1, (1 - r**2) ** 2, 0.0)
    xyz = np.stack([xx * PITCH_MM, yy * PITCH_MM, z], axis=-1).astype(np.float32)
    rgb = np.full((h, w, 3), 128, np.uint8)
    return rgb, xyz, r < 1


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _cloud_bytes(xyz: np.ndarray, fmt: str, tmp_path) -> bytes:
    """The scan as bytes: an organised TIFF, or its valid points as an unorganised PLY / PCD (open3d)."""
    if fmt == "tiff":
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, xyz)
        return buf.getvalue()
    import open3d as o3d

    pts = xyz[np.any(xyz != 0, axis=-1)].astype(np.float64)
    path = tmp_path / f"cloud.{fmt}"
    o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)))
    return path.read_bytes()


def _run_stages(items: list[tuple[np.ndarray, np.ndarray, str]], tmp_path) -> list[dict[str, Any]]:
    """decode -> score -> finalize (the pipeline's CPU stages, no Ray) over ``(rgb, xyz, format)`` items."""
    uris = [str(tmp_path / f"item{i}.png") for i in range(len(items))]
    pc_uris = [str(tmp_path / f"item{i}.{fmt}") for i, (_, _, fmt) in enumerate(items)]
    table = normalise_manifest(
        pa.table(
            {
                "item_id": [item_id_for(u) for u in uris],
                "uri": uris,
                "pc_uri": pc_uris,
                "category": ["widget"] * len(items),
                "split": ["test"] * len(items),
                "label": pa.array([1] * len(items), pa.int8()),
                "defect_type": ["bump"] * len(items),
                "gt_mask_uri": pa.array([None] * len(items), pa.string()),
                "content_token": [f"t{i}" for i in range(len(items))],
            }
        ),
        "test",
    )
    table = table.append_column("detector_version", pa.array(["v"] * len(items), pa.string()))
    table = table.append_column(IMAGE_BYTES, pa.array([_png(rgb) for rgb, _, _ in items], pa.binary()))
    clouds = [_cloud_bytes(xyz, fmt, tmp_path) for _, xyz, fmt in items]
    table = table.append_column(PC_BYTES, pa.array(clouds, pa.binary()))
    decoded = decode_batch(table, spec=SPEC, max_pixels=10**6, needs_xyz=True)
    scored = score_batch(DetectorSet(SPEC), decoded)
    out = finalize_batch(scored, run_id="r", detector="m3dmgeom", output=str(tmp_path / "out"))
    return out.to_pylist()


def _stored_map(row: dict[str, Any]) -> np.ndarray:
    return decode_map_png16(storage.read_bytes(row["mask_uri"]), row["map_min"], row["map_max"])


# ------------------------------------------------------------------------------------------ frames


def test_preprocessing_reports_where_the_scan_sits_on_its_square():
    for (h, w), (top, left) in {(96, 160): (52, 20), (160, 96): (20, 52)}.items():
        rgb, xyz, _ = scan(h, w, (48, 48))
        cfg = PreprocessConfig(units="raw", plane_distance=0.2, removal_distance=0.3, dbscan_eps=2.0)
        result = preprocess_scan(xyz, rgb, None, cfg)
        assert result.frame == (200, 200, top, left) and result.xyz.shape == (200, 200, 3)
        # the scan's own pixels are where the frame says (the plateau point at (20, 20) kept its place)
        assert np.array_equal(result.xyz[top + 20, left + 20], xyz[20, 20])
    assert square_frame(96, 160, 1) == (160, 32, 0)
    off = preprocess_scan(xyz, rgb, None, PreprocessConfig(enabled=False))
    assert off.frame == (160, 96, 0, 0)


def test_map_to_image_cuts_the_padding_before_resizing():
    canvas = np.zeros((200, 200), np.float32)
    canvas[52 + 10, 20 + 150] = 1.0  # the scan (96 x 160) sits at (52, 20); its pixel (10, 150)
    grid = resize_map(ndimage.gaussian_filter(canvas, 3), (56, 56))
    out = map_to_image(grid, (96, 160), (200, 200, 52, 20))
    assert out.shape == (96, 160)
    assert np.abs(np.array(np.unravel_index(out.argmax(), out.shape)) - (10, 150)).max() <= 2
    assert np.array_equal(map_to_image(grid, (30, 40)), resize_map(grid, (30, 40)))  # no frame: a resize
    assert map_to_image(np.stack([grid, grid]), (96, 160), (200, 200, 52, 20)).shape == (2, 96, 160)
    with pytest.raises(ValueError, match="does not hold"):
        map_to_image(grid, (96, 160), (200, 200, 120, 20))


# ------------------------------------------------------------------------------------------ pipeline


@pytest.mark.parametrize("shape", list(CASES))
def test_defect_peaks_fall_inside_their_masks_on_wide_and_tall_scans(tmp_path, shape):
    h, w = shape
    items = [scan(h, w, c) for c in CASES[shape]]
    rows = _run_stages([(rgb, xyz, "tiff") for rgb, xyz, _ in items], tmp_path)
    for row, (_, _, mask) in zip(rows, items):
        assert row["status"] == "ok", row["error"]
        amap = _stored_map(row)
        assert amap.shape == (h, w)
        peak = np.unravel_index(amap.argmax(), amap.shape)
        assert mask[peak], f"peak {peak} outside the defect at {np.argwhere(mask).mean(0)}"


def test_the_stretched_padded_map_missed_those_defects():
    """What the pipeline stored before: the padded map resized onto the scan, no crop (the fault)."""
    for (h, w), centres in CASES.items():
        for centre in centres:
            rgb, xyz, mask = scan(h, w, centre)
            pre = HeightGeometry().preprocess({"image": rgb, "xyz": xyz})
            amap = HeightGeometry().score({"xyz": pre["xyz"][None]}).anomaly_map[0]
            stretched = resize_map(amap, (h, w))
            assert not mask[np.unravel_index(stretched.argmax(), (h, w))]
            fixed = map_to_image(amap, (h, w), pre[MAP_FRAME_KEY])
            assert mask[np.unravel_index(fixed.argmax(), (h, w))]


@pytest.mark.parametrize("fmt", ["ply", "pcd"])
def test_an_unorganised_cloud_is_scored_end_to_end_not_corrupt(tmp_path, fmt):
    rgb, xyz, mask = scan(96, 160, (18, 141))
    [row] = _run_stages([(rgb, xyz, fmt)], tmp_path)
    assert row["status"] == "ok", row["error"]
    amap = _stored_map(row)
    assert amap.shape == (96, 160) and mask[np.unravel_index(amap.argmax(), amap.shape)]


# ------------------------------------------------------------------------------------------ one reader


@pytest.mark.parametrize("fmt", ["ply", "pcd", "tiff"])
def test_building_and_scoring_read_a_cloud_the_same_way(tmp_path, fmt):
    from adray.train.m3dm import read_sample

    rgb, xyz, _ = scan(96, 160, (48, 80))
    uri, pc_uri = str(tmp_path / "a.png"), str(tmp_path / f"a.{fmt}")
    storage.write_bytes(uri, _png(rgb))
    storage.write_bytes(pc_uri, _cloud_bytes(xyz, fmt, tmp_path))
    built = read_sample(uri, pc_uri, CONFIG)["xyz"]
    scored = decode_scan_pointcloud(storage.read_bytes(pc_uri), pc_uri, rgb.shape)
    assert built.shape == scored.shape == (96, 160, 3) and np.array_equal(built, scored)
    # the scan's points sit on a 0.25 mm lattice: rasterising recovers the organised scan exactly
    np.testing.assert_allclose(scored, xyz, atol=1e-4)


def test_organise_for_image_rasterises_onto_the_image_grid_and_checks_organised_grids():
    pts = np.array([[0, 0, 5], [4, 1, 2], [2, 0.5, 3]], dtype=np.float32)  # x spans 4, y spans 1
    grid = to_organised(pts, (3, 9))
    assert grid.shape == (3, 9, 3)
    assert grid[0, 0, 2] == 5 and grid[2, 8, 2] == 2 and grid[1, 4, 2] == 3  # 0.5 mm per cell, centred
    assert np.array_equal(organise_for_image(pts, (3, 9, 3)), grid)
    with pytest.raises(PointCloudDecodeError, match="does not match the image"):
        organise_for_image(np.ones((4, 5, 3), np.float32), (5, 4))
    with pytest.raises(PointCloudDecodeError, match="no valid points"):
        decode_scan_pointcloud(_tiff_bytes(np.zeros((5, 4, 3), np.float32)), "z.tiff", (5, 4))


def _tiff_bytes(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()
