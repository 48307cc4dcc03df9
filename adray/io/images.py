"""Bounded image decoding for untrusted archive bytes: one RGB uint8 array out, or one typed error.

Every input becomes ``uint8 [H, W, 3]`` RGB:

- ``RGB`` as is; ``L`` / ``1`` / ``P`` (palette) / ``I;16*`` / ``I`` are expanded to three channels.
- 16-bit and 32-bit integer images (grayscale, and 16-bit RGB TIFF) are scaled from their significant
  bits, never stretched per image: a per-image min-max would hide exactly the intensity changes a detector
  looks for. By default that is the full 16-bit range (``v / 257``, clipped) unless the image's maximum
  shows fewer bits (see :func:`significant_bits`: cameras store 10/12/14-bit data in 16-bit files, which
  would otherwise come out nearly black). A declared ``bit_depth`` replaces the detection. Whenever pixels
  are scaled from fewer bits than stored, :func:`decode_image_noted` says so in its ``note``.
- 16-bit colour PNGs are read by Pillow at their 8 high bits (it has no 48-bit mode): the note says so.
- ``CMYK`` (and ``YCbCr``, ``LAB``, ...) go through Pillow's conversion, without ICC colour management.
- Alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is composited on black: fully transparent pixels
  become black, opaque ones keep their colour. Industrial captures rarely carry alpha; when they do, the
  transparent area is "no data", and black is what missing data looks like elsewhere in adray.
- Multi-frame files (animated GIF / WebP / PNG, multi-page TIFF) give their first frame, and the note says
  so (``first of N frames``). EXIF orientation is NOT applied: pixels
  stay as stored so that ground-truth masks (stored the same way) line up.

Failures raise :class:`ImageDecodeError` with ``kind`` in ``empty`` (zero bytes), ``corrupt`` (a known
format whose data is broken or truncated), ``too_large`` (more than ``max_pixels``, checked from the header
before any pixel is decoded) and ``unsupported`` (not an image format we read, or a mode we cannot map).
Error messages describe the bytes (size, format name: :mod:`adray.io.sniff`) and never quote them.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from adray.io.sniff import describe_bytes, describe_exception

DEFAULT_MAX_PIXELS = 100_000_000
ERROR_KINDS = ("empty", "corrupt", "too_large", "unsupported")
#: Bit depths :func:`significant_bits` may detect in a 16-bit image (the common camera ADC depths).
DETECTED_BIT_DEPTHS = (10, 12, 14)

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


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what the decoder did that a person might not expect."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    note: str | None = None  # e.g. "16-bit image with maximum 4000: scaled from 12 significant bits ..."


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, bit_depth: int | None = None
) -> np.ndarray:
    """Decode image bytes to ``uint8 [H, W, 3]`` RGB (see the module docstring for the conversions).

    ``bit_depth`` declares the significant bits of images stored with more than 8 (None: detect them).
    Raises :class:`ImageDecodeError`.
    """
    return decode_image_noted(data, max_pixels=max_pixels, bit_depth=bit_depth).rgb


def decode_image_noted(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, bit_depth: int | None = None
) -> DecodedImage:
    """:func:`decode_image` plus a ``note`` when the pixels were scaled from fewer bits than stored, or
    when only the first frame of a multi-frame file was decoded."""
    if bit_depth is not None and not 1 <= bit_depth <= 16:
        raise ValueError(f"bit_depth must be in 1..16, got {bit_depth}")
    img = _open_fully(data, max_pixels)
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)
        wide = _wide_samples(img, data)
        if wide is None:
            note = _colour_png16_note(data) if img.format == "PNG" else None
            return DecodedImage(_to_rgb(img), _with_frames(note, frames, img.format))
        scaled, note = scale_wide(wide, bit_depth)
        rgb = _gray_to_rgb(scaled) if scaled.ndim == 2 else scaled
        return DecodedImage(rgb, _with_frames(note, frames, img.format))
    finally:
        img.close()


def _with_frames(note: str | None, frames: int, fmt: str | None) -> str | None:
    if frames <= 1:
        return note
    said = f"{fmt or 'image'} with {frames} frames: the first was scored"
    return f"{note}; {said}" if note else said


def significant_bits(max_value: int, stored_bits: int = 16) -> int:
    """The bit depth a ``stored_bits`` image holds, guessed from its maximum value.

    The smallest of :data:`DETECTED_BIT_DEPTHS` whose range holds ``max_value``, else ``stored_bits``
    (also for an all-zero image, where the scale does not matter). The guess cannot tell 12-bit camera
    data from a genuinely dark 16-bit image whose brightest pixel is below 4096: such an image is scaled
    as 12-bit (16x brighter). That is why every detected scaling is noted in the result row, and why a
    declared depth (``--bit-depth``, a ``bit_depth`` manifest column) replaces the guess.
    """
    if max_value <= 0:
        return stored_bits
    for bits in DETECTED_BIT_DEPTHS:
        if bits < stored_bits and max_value < (1 << bits):
            return bits
    return stored_bits


def scale_wide(values: np.ndarray, bit_depth: int | None = None) -> tuple[np.ndarray, str | None]:
    """Scale 16-bit (or wider) integer samples to uint8 from ``bit_depth`` bits (None: detect them).

    Returns ``(uint8 array of the same shape, note)``; the note is None when the full 16 bits were used.
    Values below 0 clip to 0, values above the scale's range clip to 255 (and the note counts them).
    """
    wide = np.clip(values.astype(np.int64), 0, 65535)
    top = int(wide.max()) if wide.size else 0
    declared = bit_depth is not None
    bits = bit_depth if declared else significant_bits(top)
    full = (1 << bits) - 1
    scaled = np.minimum((wide * 510 + full) // (2 * full), 255).astype(np.uint8)  # round(v * 255 / full)
    if bits >= 16:
        return scaled, None
    if declared:
        note = f"16-bit image scaled from {bits} significant bits (declared)"
        over = int((wide > full).sum())
        if over:
            note += f"; {over} samples above {full} clipped to white"
    else:
        note = (
            f"16-bit image with maximum {top}: scaled from {bits} significant bits (detected; "
            "--bit-depth or a bit_depth manifest column sets it)"
        )
    return scaled, note


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
        raise ImageDecodeError("too_large", f"image is a decompression bomb ({describe_bytes(data)})") from e
    except UnidentifiedImageError as e:
        if data.startswith(_SIGNATURES):
            raise ImageDecodeError("corrupt", f"image header is damaged ({describe_bytes(data)})") from e
        raise ImageDecodeError("unsupported", f"not a recognised image format ({describe_bytes(data)})") from e
    except Exception as e:  # Pillow raises many types for broken headers
        raise ImageDecodeError(
            "corrupt", f"cannot read image header ({describe_exception(e)}; {describe_bytes(data)})"
        ) from e
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
        raise ImageDecodeError(
            "corrupt",
            f"{img.format or 'image'} data is corrupt or truncated ({describe_exception(e)}; "
            f"{describe_bytes(data)})",
        ) from e
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("L", "1"):
        return _gray_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit)
        return _gray_to_rgb(scale_wide(np.asarray(img), 16)[0])
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
        raise ImageDecodeError(
            "unsupported", f"cannot convert image mode {mode!r} to RGB ({describe_exception(e)})"
        ) from e


def _wide_samples(img: Image.Image, data: bytes) -> np.ndarray | None:
    """Integer samples of an image stored with more than 8 bits: ``[H, W]`` or ``[H, W, 3]``, else None."""
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit)
        return np.asarray(img)
    if img.format == "TIFF" and img.mode == "RGB":
        bits = img.tag_v2.get(258)  # BitsPerSample; Pillow keeps only the 8 high bits of 16-bit RGB
        if max(bits if isinstance(bits, tuple) else (bits or 8,)) > 8:
            import tifffile

            arr = tifffile.imread(io.BytesIO(data), key=0)
            if arr.ndim == 3 and arr.shape[2] == 3 and np.issubdtype(arr.dtype, np.integer):
                return arr
    return None


def _colour_png16_note(data: bytes) -> str | None:
    # IHDR is the first chunk: bit depth at byte 24, colour type at 25 (2 RGB, 4 LA, 6 RGBA).
    if len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 4, 6):
        return "16-bit colour PNG read at its 8 high bits (store such images as 16-bit TIFF for full precision)"
    return None


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)
