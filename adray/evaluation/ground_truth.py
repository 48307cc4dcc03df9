"""Ground-truth masks checked as a careful evaluator would, before they enter pixel metrics.

- Masks are read by :func:`adray.io.masks.read_ground_truth_mask` (binarised at half range, so a JPEG
  mask's compression noise is not defect).
- A mask must have its image's shape (the stored anomaly map has it), or be an exact integer rescale of it
  with the same aspect ratio (2x, 1/3x, ...), which is resized nearest-neighbour. Any other shape
  (transposed, a few pixels off, a non-integer scale) cannot be lined up without guessing: the item is left
  out of the pixel metrics and named in the category's notes.
- When more than one mask file fits an image (``000.png`` and ``000_mask.png`` beside each other, or the
  same name in two formats), the one the manifest names is used and the notes say so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from adray import storage

log = logging.getLogger(__name__)
MASK_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_NAMED = 5  # items named per kind of problem in a category's notes


def mask_shape_problem(mask_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> str | None:
    """Why a mask ``(h, w)`` cannot be lined up with its image ``(H, W)``, or None when it can.

    It can when the shapes are equal or one is an exact integer multiple of the other in both axes by the
    same factor (same aspect ratio).

    >>> mask_shape_problem((100, 80), (80, 100))
    'mask 100x80 is its image 80x100 transposed'
    >>> mask_shape_problem((64, 64), (128, 128)) is None
    True
    """
    (h, w), (big_h, big_w) = (int(s) for s in mask_shape[:2]), (int(s) for s in image_shape[:2])
    if (h, w) == (big_h, big_w) or _integer_rescale((h, w), (big_h, big_w)):
        return None
    if (h, w) == (big_w, big_h):
        return f"mask {h}x{w} is its image {big_h}x{big_w} transposed"
    if h * big_w == w * big_h:
        return f"mask {h}x{w} has its image's aspect ratio but is not an integer rescale of {big_h}x{big_w}"
    return f"mask {h}x{w} has a different aspect ratio from its image {big_h}x{big_w}"


def _integer_rescale(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """True when ``b = k * a`` or ``a = k * b`` for one integer ``k >= 2`` in both axes."""
    small, big = (a, b) if a[0] <= b[0] else (b, a)
    if min(small) <= 0 or big[0] % small[0] or big[1] % small[1]:
        return False
    return big[0] // small[0] == big[1] // small[1] >= 2


@dataclass
class MaskChecks:
    """What one category's ground-truth masks needed; JSON-ready through :meth:`to_dict`."""

    rescaled: dict[str, str] = field(default_factory=dict)  # item id -> "mask 32x32 for image 64x64"
    mismatched: dict[str, str] = field(default_factory=dict)  # item id -> why it was left out
    unreadable: dict[str, str] = field(default_factory=dict)  # item id -> error
    ambiguous: dict[str, dict[str, object]] = field(default_factory=dict)  # item id -> used, other files

    def to_dict(self) -> dict[str, object]:
        return {
            "rescaled": dict(self.rescaled),
            "left_out_shape": dict(self.mismatched),
            "left_out_unreadable": dict(self.unreadable),
            "several_candidates": {k: dict(v) for k, v in self.ambiguous.items()},
        }

    def notes(self) -> list[str]:
        """One line per kind of problem, naming up to :data:`MAX_NAMED` items."""
        out = []
        if self.mismatched:
            out.append(
                f"{len(self.mismatched)} anomalous item(s) left out of pixel metrics: mask and image shapes "
                f"do not line up ({_named(self.mismatched)})"
            )
        if self.unreadable:
            out.append(
                f"{len(self.unreadable)} anomalous item(s) left out of pixel metrics: ground-truth mask "
                f"unreadable ({_named(self.unreadable)})"
            )
        if self.rescaled:
            out.append(
                f"{len(self.rescaled)} mask(s) are an exact integer rescale of their image, resized "
                f"nearest-neighbour ({_named(self.rescaled)})"
            )
        if self.ambiguous:
            named = "; ".join(
                f"{item}: used {v['used']}, also {', '.join(v['others'])}"  # type: ignore[arg-type]
                for item, v in list(self.ambiguous.items())[:MAX_NAMED]
            )
            more = len(self.ambiguous) - MAX_NAMED
            out.append(
                f"{len(self.ambiguous)} image(s) have more than one mask file that fits; the manifest's "
                f"gt_mask_uri was used ({named}{f'; and {more} more' if more > 0 else ''})"
            )
        return out


def _named(problems: dict[str, str]) -> str:
    shown = [f"{item}: {why}" for item, why in list(problems.items())[:MAX_NAMED]]
    more = len(problems) - MAX_NAMED
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def other_mask_files(mask_uris: Iterable[str]) -> dict[str, list[str]]:
    """For each mask URI, the other files in its folder that would fit the same image (file names).

    Files fit one image when their names agree after dropping the extension and a ``_mask`` suffix
    (``000.png``, ``000_mask.png``, ``000.jpg``). Each folder is listed once; a folder that cannot be
    listed is skipped (logged): the check is advisory and must not stop an evaluation.
    """
    by_folder: dict[str, list[str]] = {}
    for uri in dict.fromkeys(mask_uris):
        folder, _, _ = uri.rpartition("/")
        by_folder.setdefault(folder, []).append(uri)
    out: dict[str, list[str]] = {}
    for folder, uris in by_folder.items():
        names = _list_names(folder)
        groups: dict[str, list[str]] = {}
        for name in names:
            if name.lower().endswith(MASK_EXTS):
                groups.setdefault(_image_key(name), []).append(name)
        for uri in uris:
            name = uri.rpartition("/")[2]
            others = sorted(n for n in groups.get(_image_key(name), []) if n != name)
            if others:
                out[uri] = others
    return out


def _image_key(name: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def _list_names(folder: str) -> list[str]:
    try:
        loc = storage.resolve(folder, single_attempt=True)
        entries = storage.with_retries(lambda: loc.fs.ls(loc.path, detail=True), what=f"list {folder}")
    except Exception as exc:  # advisory check: a listing problem is logged, not raised
        log.warning("cannot list %s to look for other mask files: %s", folder, exc)
        return []
    return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type", "file") != "directory"]
