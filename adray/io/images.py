"""Bounded image decoding for untrusted archive bytes: one RGB uint8 array out, or one typed error.

Every input becomes ``uint8 [H, W, 3]`` RGB:

- ``RGB`` as is; ``L`` / ``1`` / ``P`` (palette) / ``I;16*`` / ``I`` are expanded to three channels.
- 16-bit and 32-bit integer images are scaled from the full 16-bit range (``v / 257``, clipped), never
  stretched per image: a per-image min-max would hide exactly the intensity changes a detector looks for.
- ``CMYK`` (and ``YCbCr``, ``LAB``, ...) go through Pillow's conversion, without ICC colour management.
- Alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is composited on black: fully transparent pixels
  become black, opaque ones keep their colour. Industrial captures rarely carry alpha; when they do, the
  transparent area is "no data", and black is what missing data looks like elsewhere in adray.
- Multi-frame files (GIF, multi-page TIFF) give their first frame. EXIF orientation is NOT applied: pixels
  stay as stored so that ground-truth masks (stored the same way) line up.

Failures raise :class:`ImageDecodeError` with ``kind`` in ``empty`` (zero bytes), ``corrupt`` (a known
format whose data is broken or truncated), ``too_large`` (more than ``max_pixels``, checked from the header
before any pixel is decoded) and ``unsupported`` (not an image format we read, or a mode we cannot map).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
ERROR_KINDS = ("empty", "corrupt", "too_large", "unsupported")

# Leading bytes of formats Pillow reads: unreadable data that starts like one of these is "corrupt".
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"GIF87a",
    b"GIF89a",
    b"RIFF",
)


class ImageDecodeError(ValueError):
    """Bytes that do not decode to an image; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown image error kind {kind!r}")
        self.kind = kind
        super().__init__(message)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to ``uint8 [H, W, 3]`` RGB (see the module docstring for the conversions)."""
    img = _open_fully(data, max_pixels)
    try:
        return _to_rgb(img)
    finally:
        img.close()


def read_mask(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ground-truth mask to ``bool [H, W]``: any nonzero pixel is anomalous.

    MVTec 3D-AD masks hold class ids (253, 254, 255) rather than 255 only; all nonzero values count. For
    colour masks any nonzero colour channel counts; alpha is ignored.
    """
    img = _open_fully(data, max_pixels)
    try:
        if img.mode == "P":
            img = img.convert("RGB")
        elif img.mode == "1":
            img = img.convert("L")
        arr = np.asarray(img)
    finally:
        img.close()
    if arr.ndim == 3:
        channels = arr.shape[2]
        color = arr[..., : 3 if channels >= 3 else 1]
        return np.any(color != 0, axis=2)
    return arr != 0


def resize_rgb(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``uint8 [H, W, 3]`` to ``size`` = side or ``(height, width)`` with bicubic resampling."""
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a ``bool [H, W]`` mask with nearest-neighbour resampling."""
    h, w = (size, size) if isinstance(size, int) else size
    if mask.shape == (h, w):
        return mask
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(pil.resize((w, h), Image.Resampling.NEAREST)) > 0


# --------------------------------------------------------------------------------------------- helpers


def _open_fully(data: bytes, max_pixels: int) -> Image.Image:
    """Open, check the header size, then force the full decode (Pillow's lazy load hides truncation)."""
    if not data:
        raise ImageDecodeError("empty", "image has zero bytes")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's global bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("too_large", f"image is a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        if data.startswith(_SIGNATURES):
            raise ImageDecodeError("corrupt", f"image header is damaged ({len(data)} bytes)") from e
        head = data[:8].hex()
        raise ImageDecodeError("unsupported", f"not a recognised image format (first bytes {head})") from e
    except Exception as e:  # Pillow raises many types for broken headers
        raise ImageDecodeError("corrupt", f"cannot read image header: {type(e).__name__}: {e}") from e
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageDecodeError(
            "too_large",
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(raise max_pixels if such images are expected)",
        )
    if width <= 0 or height <= 0:
        img.close()
        raise ImageDecodeError("corrupt", f"image has an invalid size {width}x{height}")
    try:
        img.load()
    except Exception as e:
        img.close()
        raise ImageDecodeError("corrupt", f"{img.format or 'image'} data is corrupt or truncated: {e}") from e
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("L", "1"):
        return _gray_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit)
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
        if mode == "RGB":
            return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        return _composite_on_black(rgba)
    if mode == "F":
        raise ImageDecodeError(
            "unsupported", "floating-point images (mode F) have no defined 8-bit range; convert them first"
        )
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Exception as e:
        raise ImageDecodeError("unsupported", f"cannot convert image mode {mode!r} to RGB: {e}") from e


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    wide = np.clip(arr.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)
