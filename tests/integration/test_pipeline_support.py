"""Test support for the pipeline tests (no tests here): small honest detectors and a bad-item archive.

The detectors are real, if simple: ``greymad`` scores the mean absolute deviation of pixels from mid-grey
(its map is that deviation per pixel of a 16x16 resize); ``greyxyz`` also needs a point cloud and adds
the deviation of z from the cloud's median. Ray workers import this module by name
(``--plugin tests.integration.test_pipeline_support``), which registers both factories there too.
"""

from __future__ import annotations

import io
import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from adray import storage
from adray.detectors.base import ScoreBatch, content_hash, register_factory

PLUGIN = "tests.integration.test_pipeline_support"
SIDE = 16


class GreyMad:
    name: ClassVar[str] = "greymad"
    modalities: tuple[str, ...] = ("rgb",)

    def __init__(
        self, class_name: str = "object", weights: str = "random", categories=None, threshold=0.2, **_
    ):
        self.class_name = class_name
        self._categories = tuple(categories) if categories else None
        self._threshold = threshold
        self.config = {"kind": self.name, "threshold": threshold, "categories": self._categories}

    @property
    def version(self) -> str:
        return content_hash(self.config)

    @property
    def categories(self):
        return self._categories

    @property
    def threshold(self):
        return self._threshold

    def preprocess(self, sample: dict[str, Any]) -> dict[str, np.ndarray]:
        img = Image.fromarray(sample["image"]).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        return {"image": np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0}

    def score(self, batch: dict[str, Any]) -> ScoreBatch:
        x = torch.as_tensor(batch["image"])
        amap = (x - 0.5).abs().mean(dim=1)
        return ScoreBatch(image_score=amap.flatten(1).mean(dim=1), anomaly_map=amap)

    def save(self, uri: str) -> None:  # not needed by the pipeline
        raise NotImplementedError


class GreyXyz(GreyMad):
    name: ClassVar[str] = "greyxyz"
    modalities = ("rgb", "xyz")

    def preprocess(self, sample: dict[str, Any]) -> dict[str, np.ndarray]:
        out = super().preprocess(sample)
        z = sample["xyz"][..., 2]
        valid = z != 0
        dev = np.where(valid, np.abs(z - np.median(z[valid])), 0.0).astype(np.float32)
        out["z"] = np.asarray(Image.fromarray(dev).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
        return out

    def score(self, batch: dict[str, Any]) -> ScoreBatch:
        rgb = super().score(batch)
        amap = rgb.anomaly_map + torch.as_tensor(batch["z"])
        return ScoreBatch(image_score=amap.flatten(1).mean(dim=1), anomaly_map=amap)


register_factory("greymad", GreyMad)
register_factory("greyxyz", GreyXyz)


# ------------------------------------------------------------------------------------------ archives


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def xyz(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).astype(np.float32)
    z = 10 + rng.normal(0, 0.1, (size, size, 1)).astype(np.float32)
    return np.concatenate([grid, z], axis=-1)


def bad_items(root: str, category: str = "widget") -> list[dict[str, Any]]:
    """One item of every bad kind (and of every unusual-but-valid mode), written under ``root/bad/``.

    Returns manifest rows with the status each should get (``expect``) and, for 3D kinds, a ``pc_uri``.
    """
    rng = np.random.default_rng(7)
    good = png_bytes(image(99))
    big = png_bytes(np.zeros((120, 120, 3), dtype=np.uint8))  # over the test's max_pixels of 100*100
    cmyk = io.BytesIO()
    Image.fromarray(image(5)).convert("CMYK").save(cmyk, format="JPEG")
    rgba = np.concatenate([image(6), np.full((32, 32, 1), 128, np.uint8)], axis=-1)
    nan_cloud = xyz(3)
    nan_cloud[:4] = np.nan
    kinds: list[tuple[str, bytes | None, str, bytes | None, str]] = [
        ("missing", None, "", None, "not_found"),
        ("zero", b"", "", None, "empty"),
        ("truncated", good[: len(good) // 2], "", None, "corrupt"),
        ("garbage", bytes(rng.integers(0, 256, 300, dtype=np.uint8)), "", None, "unsupported"),
        ("bomb", big, "", None, "too_large"),
        ("cmyk", cmyk.getvalue(), "", None, "ok"),
        ("gray16", png_bytes((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)), "", None, "ok"),
        ("rgba", png_bytes(rgba, "RGBA"), "", None, "ok"),
        ("gray", png_bytes(image(8)[..., 0], "L"), "", None, "ok"),
        ("pc_nan", good, "pc", tiff_bytes(nan_cloud), "ok"),
        ("pc_empty", good, "pc", tiff_bytes(np.zeros((32, 32, 3), np.float32)), "empty"),
        ("pc_allnan", good, "pc", tiff_bytes(np.full((32, 32, 3), np.nan, np.float32)), "empty"),
        ("pc_shape", good, "pc", tiff_bytes(np.zeros((32, 32, 4), np.float32)), "corrupt"),
        ("pc_missing", good, "pc", None, "not_found"),
    ]
    rows = []
    for name, data, pc, pc_data, expect in kinds:
        uri = storage.join_url(root, "bad", f"{name}.png")
        if data is not None:
            storage.write_bytes(uri, data)
        pc_uri = storage.join_url(root, "bad", f"{name}.tiff") if pc else None
        if pc_data is not None:
            storage.write_bytes(pc_uri, pc_data)
        rows.append({"name": name, "uri": uri, "pc_uri": pc_uri, "category": category, "expect": expect})
    return rows


def write_good_items(root: str, n: int, category: str = "widget", with_pc: bool = False, seed0: int = 0):
    rows = []
    for i in range(n):
        uri = storage.join_url(root, category, f"{i:03d}.png")
        storage.write_bytes(uri, png_bytes(image(seed0 + i)))
        pc_uri = None
        if with_pc:
            pc_uri = storage.join_url(root, category, f"{i:03d}.tiff")
            storage.write_bytes(pc_uri, tiff_bytes(xyz(seed0 + i)))
        rows.append({"uri": uri, "pc_uri": pc_uri, "category": category, "expect": "ok"})
    return rows


def manifest_from_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """A manifest (``schemas/manifest``) for rows of ``{uri, pc_uri, category}``, with real content tokens."""
    from adray.catalog import item_id_for, normalise_manifest

    def token(url: str | None) -> str | None:
        if not url or not storage.exists(url):
            return None
        return storage.content_token(storage.info(url))

    table = pa.table(
        {
            "item_id": [item_id_for(r["uri"]) for r in rows],
            "uri": [r["uri"] for r in rows],
            "pc_uri": [r.get("pc_uri") for r in rows],
            "category": [r["category"] for r in rows],
            "split": ["test"] * len(rows),
            "label": pa.array([None] * len(rows), pa.int8()),
            "defect_type": pa.array([None] * len(rows), pa.string()),
            "gt_mask_uri": pa.array([None] * len(rows), pa.string()),
            "content_token": [
                "|".join(t for t in (token(r["uri"]), token(r.get("pc_uri"))) if t) or None for r in rows
            ],
        }
    )
    return normalise_manifest(table, "test")


def expected_status(rows: list[dict[str, Any]]) -> dict[str, str]:
    from adray.catalog import item_id_for

    return {item_id_for(r["uri"]): r["expect"] for r in rows}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
