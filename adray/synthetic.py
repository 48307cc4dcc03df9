"""Synthetic MVTec AD / MVTec 3D-AD datasets with typed defects and pixel-accurate masks.

Procedural, seeded and deterministic: the same seed gives byte-identical files. Each item is rendered from
its own seed derived from ``(seed, category, split, defect, index)``, so changing one count does not
change any other item. An item draws a *base* seed (the defect-free render) and a *defect* seed from its
generator, so ``make_rgb_sample(c, "good", n, rng)`` and ``make_rgb_sample(c, "scratch", n, rng)`` with
equally seeded ``rng`` share the same defect-free render: the defect changes pixels only inside its mask.

2D categories (MVTec AD layout): textures ``carpet``, ``grid``, ``leather``; objects ``bottle`` (disc),
``nut`` (hexagon with a bore). Defects: ``scratch``, ``hole``, ``stain``, and ``missing`` (objects only).

3D categories (MVTec 3D-AD layout): ``cookie`` (flattened dome), ``potato`` (elliptic blob), on a tilted
background plane (so RANSAC plane removal is meaningful), as an organised float32 point cloud in mm with
missing points (zeros) along the border and in a few small holes. Defects: ``dent`` and ``bump`` (xyz and
rgb shading), ``dent_3d_only`` and ``bump_3d_only`` (xyz only; rgb equals the defect-free render),
``crack`` (rgb line + shallow xyz groove) and ``color`` (rgb only). Ground-truth masks mark all of them.

Images are always 3-channel RGB (real MVTec has a few grayscale categories; ours do not).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import ConfigDict, Field

from adray import storage
from adray.config import Config, Flag
from adray.synthetic_render import (  # noqa: F401 - SCENE_WIDTH_MM re-exported
    _RENDER_2D,
    SCENE_WIDTH_MM,
    _apply_2d_defect,
    _apply_3d_defect,
    _render_3d,
    _xy_mm,
)

TEXTURES_2D = ("carpet", "grid", "leather")
OBJECTS_2D = ("bottle", "nut")
CATEGORIES_2D = TEXTURES_2D + OBJECTS_2D
CATEGORIES_3D = ("cookie", "potato")
DEFECTS_2D = ("scratch", "hole", "stain", "missing")
DEFECTS_3D = ("dent", "bump", "dent_3d_only", "bump_3d_only", "crack", "color")
GOOD = "good"
#: what a layout's generator writes when its :class:`SynthConfig` leaves categories / image size unset
DEFAULT_CATEGORIES = {"mvtec": ("carpet", "bottle"), "mvtec3d": ("cookie",)}
DEFAULT_IMAGE_SIZE = {"mvtec": 128, "mvtec3d": 64}


def _names(text: str | None) -> tuple[str, ...] | None:
    """``"carpet, nut"`` -> ``("carpet", "nut")``; nothing -> None (the flags' comma lists)."""
    if not text:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip()) or None


class SynthConfig(Config):
    """What a synthetic dataset holds; also the dataset flags of ``adray synth``.

    ``categories`` / ``image_size`` None: the layout's defaults (:data:`DEFAULT_CATEGORIES`,
    :data:`DEFAULT_IMAGE_SIZE`). ``image_width`` and ``n_validation`` apply to the 3D layout only; counts
    are per category (``n_test_per_defect`` per defect type). Items are seeded from ``seed`` and their own
    place, so changing one count changes no other item.
    """

    model_config = ConfigDict(title="synthetic dataset")

    image_size: Annotated[int | None, Flag("--size", dest="size")] = Field(
        None,
        description=f"image size (default {DEFAULT_IMAGE_SIZE['mvtec']} for 2D, "
        f"{DEFAULT_IMAGE_SIZE['mvtec3d']} for 3D)",
    )
    image_width: Annotated[int | None, Flag("--width", dest="width")] = Field(
        None,
        description="3D layout only: scan width for non-square scans (--size is then the height; default: "
        "square)",
    )
    seed: Annotated[int, Flag("--seed")] = 0
    categories: Annotated[tuple[str, ...] | None, Flag("--categories", parse=_names)] = Field(
        None,
        description=f"comma-separated categories (2D: {','.join(CATEGORIES_2D)}; 3D: {','.join(CATEGORIES_3D)})",
    )
    defects: Annotated[tuple[str, ...] | None, Flag("--defects", parse=_names)] = Field(
        None, description="comma-separated defect types (default: all)"
    )
    n_train: Annotated[int, Flag("--n-train")] = 8
    n_validation: Annotated[int, Flag("--n-validation")] = Field(4, description="3D layout only")
    n_test_good: Annotated[int, Flag("--n-test-good")] = 4
    n_test_per_defect: Annotated[int, Flag("--n-test-per-defect")] = 3

    def for_layout(self, layout: str) -> SynthConfig:
        """This config with the layout's default categories / image size where it leaves them unset."""
        return self.replace(
            categories=DEFAULT_CATEGORIES[layout] if self.categories is None else self.categories,
            image_size=DEFAULT_IMAGE_SIZE[layout] if self.image_size is None else self.image_size,
        )


@dataclass
class SynthSummary:
    """What a generator wrote: counts per category -> split -> defect type, and every file URL."""

    root: str
    layout: str
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.files)

    def add(self, category: str, split: str, defect: str) -> None:
        per_split = self.counts.setdefault(category, {}).setdefault(split, {})
        per_split[defect] = per_split.get(defect, 0) + 1

    def to_text(self) -> str:
        lines = [f"{self.layout} dataset at {self.root}: {self.n_files} files"]
        for category, splits in self.counts.items():
            for split, defects in splits.items():
                parts = ", ".join(f"{d}={n}" for d, n in defects.items())
                lines.append(f"  {category}/{split}: {parts}")
        return "\n".join(lines)


def defects_for(category: str) -> tuple[str, ...]:
    """The defect types a category supports (``missing`` needs an object to take a piece from)."""
    if category in TEXTURES_2D:
        return DEFECTS_2D[:3]
    if category in OBJECTS_2D:
        return DEFECTS_2D
    if category in CATEGORIES_3D:
        return DEFECTS_3D
    raise ValueError(f"unknown synthetic category {category!r}; choose from {CATEGORIES_2D + CATEGORIES_3D}")


# ------------------------------------------------------------------------------------------ public API


def make_rgb_sample(
    category: str, defect: str | None, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One 2D item: ``(image uint8 [size, size, 3], mask bool [size, size])``; ``defect`` None/"good"."""
    if category not in CATEGORIES_2D:
        raise ValueError(f"unknown 2D category {category!r}; choose from {CATEGORIES_2D}")
    base_rng, defect_rng = _split_rng(rng)
    img, fg, background = _RENDER_2D[category](base_rng, _check_size(size))
    mask = np.zeros((size, size), dtype=bool)
    if defect not in (None, GOOD):
        if defect not in defects_for(category):
            raise ValueError(f"defect {defect!r} does not apply to {category!r}; use {defects_for(category)}")
        mask = _apply_2d_defect(img, fg, background, defect, defect_rng)
    return _to_uint8(img), mask


def make_xyz_sample(
    category: str, defect: str | None, size: int, rng: np.random.Generator, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One 3D item: ``(rgb uint8 [H,W,3], xyz float32 [H,W,3] in mm, zeros = missing, mask bool [H,W])``.

    ``H = size``, ``W = width`` (default ``size``: square). A non-square scan is the same kind of scene
    on a wider or taller field of view: the object is centred and sized by the shorter side, which spans
    ``SCENE_WIDTH_MM``; a square scan is exactly what it was before the option existed.
    """
    if category not in CATEGORIES_3D:
        raise ValueError(f"unknown 3D category {category!r}; choose from {CATEGORIES_3D}")
    base_rng, defect_rng = _split_rng(rng)
    shape = (_check_size(size), _check_size(size if width is None else width))
    rgb, height, fg, plane_z, missing = _render_3d(category, shape, base_rng)
    mask = np.zeros(shape, dtype=bool)
    if defect not in (None, GOOD):
        if defect not in DEFECTS_3D:
            raise ValueError(f"unknown 3D defect {defect!r}; choose from {DEFECTS_3D}")
        mask = _apply_3d_defect(rgb, height, fg, defect, defect_rng)
    noise = base_rng.standard_normal(shape) * 0.01
    xyz = np.stack([*_xy_mm(shape), plane_z - height + noise], axis=-1).astype(np.float32)
    xyz[missing] = 0.0
    return _to_uint8(rgb), xyz, mask


def generate_mvtec_ad(url: str, config: SynthConfig | None = None, **settings: Any) -> SynthSummary:
    """Write an MVTec AD-layout dataset under ``url`` (local path or any storage URL).

    ``config`` (default ``SynthConfig()``) with ``settings`` (its field names: ``categories``,
    ``image_size``, ``n_train``, ``n_test_good``, ``n_test_per_defect``, ``defects``, ``seed``) on top;
    unset categories / size: ``("carpet", "bottle")`` at 128 px. Writes ``<cat>/train/good/000.png``,
    ``<cat>/test/{good,<defect>}/000.png``, ``<cat>/ground_truth/<defect>/000_mask.png`` (0/255).
    ``defects`` (default: all that apply) is intersected with what each category supports (``missing`` is
    skipped for textures). Raises ``ValueError`` for unknown names, ``ConfigError`` for unknown settings.
    """
    cfg = (config or SynthConfig()).replace(**settings).for_layout("mvtec")
    summary = SynthSummary(root=url, layout="mvtec")
    goods = (("train", cfg.n_train), ("test", cfg.n_test_good))
    for category in cfg.categories:
        for split, defect, i, rng in _items(cfg, category, CATEGORIES_2D, goods):
            image, mask = make_rgb_sample(category, defect, cfg.image_size, rng)
            _put(summary, storage.join_url(url, category, split, defect, f"{i:03d}.png"), _png(image))
            if defect != GOOD:
                key = storage.join_url(url, category, "ground_truth", defect, f"{i:03d}_mask.png")
                _put(summary, key, _png(mask.astype(np.uint8) * 255))
            summary.add(category, split, defect)
    return summary


def generate_mvtec_3d(url: str, config: SynthConfig | None = None, **settings: Any) -> SynthSummary:
    """Write an MVTec 3D-AD-layout dataset under ``url``.

    ``config`` / ``settings`` as for :func:`generate_mvtec_ad`, plus ``image_width`` and ``n_validation``;
    unset categories / size: ``("cookie",)`` at 64 px. Writes
    ``<cat>/{train,validation,test}/<defect|good>/{rgb/000.png, xyz/000.tiff, gt/000.png}``; xyz is a
    float32 ``[H, W, 3]`` TIFF (tifffile), gt a 0/255 PNG (all zero for good items, as in MVTec 3D-AD).
    ``H = image_size``, ``W = image_width`` (default: square); see :func:`make_xyz_sample`.
    """
    cfg = (config or SynthConfig()).replace(**settings).for_layout("mvtec3d")
    summary = SynthSummary(root=url, layout="mvtec3d")
    goods = (("train", cfg.n_train), ("validation", cfg.n_validation), ("test", cfg.n_test_good))
    for category in cfg.categories:
        for split, defect, i, rng in _items(cfg, category, CATEGORIES_3D, goods):
            rgb, xyz, mask = make_xyz_sample(category, defect, cfg.image_size, rng, cfg.image_width)
            folder = storage.join_url(url, category, split, defect)
            _put(summary, storage.join_url(folder, "rgb", f"{i:03d}.png"), _png(rgb))
            _put(summary, storage.join_url(folder, "xyz", f"{i:03d}.tiff"), _tiff(xyz))
            _put(summary, storage.join_url(folder, "gt", f"{i:03d}.png"), _png(mask.astype(np.uint8) * 255))
            summary.add(category, split, defect)
    return summary


# ------------------------------------------------------------------------------------------ plumbing


def _check_size(size: int) -> int:
    if int(size) < 16:
        raise ValueError(f"synthetic image size must be at least 16 pixels, got {size}")
    return int(size)


def _split_rng(rng: np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    base_seed, defect_seed = rng.integers(0, 2**63 - 1, size=2)
    return np.random.default_rng(int(base_seed)), np.random.default_rng(int(defect_seed))


def _items(
    cfg: SynthConfig, category: str, known: tuple[str, ...], goods: Iterable[tuple[str, int]]
) -> Iterator[tuple[str, str, int, np.random.Generator]]:
    """``(split, defect, index, rng)`` of every item of ``category`` in writing order: ``count`` good items
    per ``(split, count)`` of ``goods``, then ``n_test_per_defect`` test items per defect type that
    applies; each item's generator seeded by its own name (:func:`_item_rng`)."""
    kinds = _select_defects(category, cfg.defects, known)
    jobs = [(split, GOOD, i) for split, count in goods for i in range(count)]
    jobs += [("test", d, i) for d in kinds for i in range(cfg.n_test_per_defect)]
    for split, defect, i in jobs:
        yield split, defect, i, _item_rng(cfg.seed, category, split, defect, i)


def _item_rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    words = [zlib.crc32(s.encode()) for s in (category, split, defect)]
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words, int(index)]))


def _select_defects(category: str, wanted, known: tuple[str, ...]) -> tuple[str, ...]:
    if category not in known:
        raise ValueError(f"unknown category {category!r} for this layout; choose from {known}")
    supported = defects_for(category)
    if wanted is None:
        return supported
    unknown = [d for d in wanted if d not in DEFECTS_2D + DEFECTS_3D]
    if unknown:
        raise ValueError(f"unknown defect types {unknown}; 2D: {DEFECTS_2D}, 3D: {DEFECTS_3D}")
    return tuple(d for d in wanted if d in supported)


def _put(summary: SynthSummary, url: str, data: bytes) -> None:
    storage.write_bytes(url, data)
    summary.files.append(url)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tiff(xyz: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, xyz)
    return buf.getvalue()


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
