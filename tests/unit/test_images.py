"""decode_image / read_mask: every mode maps to uint8 RGB, every failure to one typed error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from adray.io.images import (
    ImageDecodeError,
    decode_image,
    decode_image_noted,
    read_mask,
    resize_mask,
    resize_rgb,
    significant_bits,
)


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_round_trips_exactly():
    arr = _rgb()
    out = decode_image(_encode(Image.fromarray(arr)))
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, arr)


def test_jpeg_decodes_to_rgb():
    out = decode_image(_encode(Image.fromarray(_rgb()), "JPEG", quality=95))
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8


def test_grayscale_l_is_replicated_to_three_channels():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    out = decode_image(_encode(Image.fromarray(gray, mode="L")))
    assert out.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_one_bit_image_maps_to_black_and_white():
    bits = np.zeros((4, 4), dtype=bool)
    bits[1, 2] = True
    out = decode_image(_encode(Image.fromarray(bits).convert("1")))
    assert out[1, 2].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_sixteen_bit_gray_png_scales_the_full_range_to_eight_bits():
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    data = _encode(Image.fromarray(arr))  # PNG with 16-bit depth
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_sixteen_bit_tiff_decodes():
    arr = np.full((5, 7), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    out = decode_image(_encode(Image.fromarray(arr), "TIFF"))
    assert out.shape == (5, 7, 3) and out[0, 0, 0] == 0 and out[4, 6, 2] == 255


def test_32bit_integer_mode_i_is_clipped_to_the_16bit_range():
    arr = np.array([[-5, 70000, 65535]], dtype=np.int32)
    img = Image.fromarray(arr, mode="I")
    out = decode_image(_encode(img, "TIFF"))
    assert out[0, :, 0].tolist() == [0, 255, 255]


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_encode(cmyk, "JPEG", quality=100))
    assert out.shape == (6, 8, 3)
    r, g, b = out[3, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_rgba_is_composited_on_black():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3] = 255  # opaque keeps colour
    rgba[0, 1, 3] = 0  # transparent becomes black
    rgba[1, 0, 3] = 128  # half: scaled
    out = decode_image(_encode(Image.fromarray(rgba, mode="RGBA")))
    assert out[0, 0].tolist() == [200, 200, 200]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[1, 0].tolist() == [100, 100, 100]


def test_la_gray_with_alpha():
    la = Image.fromarray(np.stack([np.full((3, 3), 90, np.uint8), np.full((3, 3), 255, np.uint8)], -1), "LA")
    out = decode_image(_encode(la))
    assert out.shape == (3, 3, 3) and (out == 90).all()


def test_palette_image_and_palette_with_transparency():
    pal = Image.fromarray(_rgb(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = decode_image(_encode(pal))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    out_t = decode_image(_encode(pal, transparency=0))
    idx = np.asarray(pal)
    assert (out_t[idx == 0] == 0).all()


def test_gif_gives_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_empty_bytes():
    with pytest.raises(ImageDecodeError) as e:
        decode_image(b"")
    assert e.value.kind == "empty"


def test_truncated_png_is_corrupt_not_silently_partial():
    data = _encode(Image.fromarray(_rgb(64, 64)))
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.kind == "corrupt"


def test_truncated_jpeg_is_corrupt():
    data = _encode(Image.fromarray(_rgb(64, 64)), "JPEG")
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.kind == "corrupt"


def test_damaged_header_with_image_signature_is_corrupt():
    with pytest.raises(ImageDecodeError) as e:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert e.value.kind == "corrupt"


def test_random_bytes_are_unsupported():
    with pytest.raises(ImageDecodeError) as e:
        decode_image(b"hello, this is a text file, not an image")
    assert e.value.kind == "unsupported"
    assert "not a recognised image format" in str(e.value)


def test_float_image_is_unsupported():
    data = _encode(Image.fromarray(np.zeros((3, 3), np.float32), mode="F"), "TIFF")
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data)
    assert e.value.kind == "unsupported"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a huge size, with one tiny IDAT: decoding it would allocate W*H*3 bytes."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [(11_000, 10_000), (30_000, 30_000)])  # over our limit / over Pillow's too
def test_decompression_bomb_is_refused_from_the_header(side):
    data = _png_header_only(*side)  # 110 Mpx or 900 Mpx claimed in ~60 bytes
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data)
    assert e.value.kind == "too_large"


def test_max_pixels_is_checked_before_decoding():
    data = _encode(Image.fromarray(_rgb(20, 20)))
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data, max_pixels=399)
    assert e.value.kind == "too_large" and "20x20 = 400 pixels" in str(e.value)
    assert decode_image(data, max_pixels=400).shape == (20, 20, 3)


def test_error_kind_is_validated():
    with pytest.raises(ValueError):
        ImageDecodeError("weird", "x")


def test_read_mask_any_nonzero_is_anomalous():
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1, 1] = 255
    m[2, 3] = 253  # MVTec 3D-AD class id
    out = read_mask(_encode(Image.fromarray(m)))
    assert out.dtype == bool and out.shape == (4, 5)
    assert out.sum() == 2 and out[1, 1] and out[2, 3]


def test_read_mask_from_rgb_1bit_and_16bit():
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[0, 0, 2] = 10
    assert read_mask(_encode(Image.fromarray(rgb))).sum() == 1
    bits = np.zeros((3, 3), bool)
    bits[2, 2] = True
    assert read_mask(_encode(Image.fromarray(bits).convert("1")))[2, 2]
    wide = np.zeros((3, 3), np.uint16)
    wide[1, 0] = 1
    assert read_mask(_encode(Image.fromarray(wide))).sum() == 1


def test_read_mask_errors_are_typed():
    with pytest.raises(ImageDecodeError) as e:
        read_mask(b"")
    assert e.value.kind == "empty"


def test_resize_helpers():
    img = _rgb(10, 20)
    assert resize_rgb(img, 8).shape == (8, 8, 3)
    assert resize_rgb(img, (5, 7)).shape == (5, 7, 3)
    assert resize_rgb(img, (10, 20)) is img
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    small = resize_mask(mask, 4)
    assert small.dtype == bool and small[0].all() and not small[3].any()


# ------------------------------------------------------------------ fewer significant bits (issue 13, item 8)


def _gray16(values: np.ndarray, fmt: str = "PNG") -> bytes:
    return _encode(Image.fromarray(values.astype(np.uint16)), fmt)


def _expected(values: np.ndarray, bits: int) -> np.ndarray:
    full = 2**bits - 1
    return np.floor(np.minimum(values, full) * 255 / full + 0.5).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_12_bit_camera_data_in_a_16_bit_file_is_scaled_from_12_bits_and_noted(fmt):
    values = np.linspace(0, 4095, 64 * 48).reshape(48, 64).round()
    got = decode_image_noted(_gray16(values, fmt))
    np.testing.assert_array_equal(got.rgb[..., 0], _expected(values, 12))
    assert got.rgb[..., 0].max() == 255  # before: 4095 / 257 -> 16, a nearly black image
    assert "12 significant bits" in got.note and "maximum 4095" in got.note and "detected" in got.note


@pytest.mark.parametrize(("top", "bits"), [(1000, 10), (1023, 10), (1024, 12), (4095, 12), (4096, 14), (16383, 14)])
def test_detected_depth_is_the_smallest_standard_one_that_holds_the_maximum(top, bits):
    assert significant_bits(top) == bits
    values = np.full((4, 4), top)
    got = decode_image_noted(_gray16(values))
    assert f"from {bits} significant bits" in got.note
    assert got.rgb[0, 0, 0] == _expected(np.array(top), bits)


def test_full_range_16_bit_image_keeps_the_16_bit_scale_without_a_note():
    values = np.array([[0, 257, 16384], [32768, 60000, 65535]])
    got = decode_image_noted(_gray16(values))
    assert got.note is None
    np.testing.assert_array_equal(got.rgb[..., 0], np.floor(values / 257 + 0.5).astype(np.uint8))


def test_all_black_16_bit_image_is_not_noted():
    got = decode_image_noted(_gray16(np.zeros((3, 3))))
    assert got.note is None and not got.rgb.any()


def test_a_declared_depth_replaces_detection():
    # The documented limit: a genuinely dark 16-bit image (max 3000) looks like 12-bit data; declaring
    # 16 bits keeps its true (dark) scale.
    dark = np.full((2, 2), 3000)
    assert decode_image_noted(_gray16(dark)).rgb[0, 0, 0] == _expected(np.array(3000), 12)
    kept = decode_image_noted(_gray16(dark), bit_depth=16)
    assert kept.note is None and kept.rgb[0, 0, 0] == round(3000 / 257)
    declared = decode_image_noted(_gray16(dark), bit_depth=14)
    assert declared.rgb[0, 0, 0] == _expected(np.array(3000), 14)
    assert declared.note == "16-bit image scaled from 14 significant bits (declared)"


def test_declared_depth_clips_and_counts_values_above_its_range():
    values = np.array([[100, 4095, 4096, 9000]])
    got = decode_image_noted(_gray16(values), bit_depth=12)
    np.testing.assert_array_equal(got.rgb[0, :, 0], [_expected(np.array(100), 12), 255, 255, 255])
    assert "2 samples above 4095 clipped" in got.note


def test_8_bit_images_ignore_the_declared_depth():
    arr = _rgb()
    got = decode_image_noted(_encode(Image.fromarray(arr)), bit_depth=12)
    np.testing.assert_array_equal(got.rgb, arr)
    assert got.note is None


def test_16_bit_rgb_tiff_is_read_at_full_precision_and_scaled_from_its_bits():
    import tifffile

    rgb = np.stack([np.full((5, 6), v, np.uint16) for v in (4095, 2048, 7)], axis=-1)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, photometric="rgb")
    got = decode_image_noted(buf.getvalue())
    np.testing.assert_array_equal(got.rgb[0, 0], _expected(np.array([4095, 2048, 7]), 12))
    assert "12 significant bits" in got.note


def test_16_bit_colour_png_says_it_was_read_at_8_bits():
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    raw = b"".join(b"\x00" + np.full((2, 3), 40000, ">u2").tobytes() for _ in range(2))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    got = decode_image_noted(png)
    assert got.rgb[0, 0, 0] == 40000 >> 8 and "8 high bits" in got.note


# ------------------------------------------------------------ errors never quote the file (issue 13, item 10)

SECRET = "root:$6$Zq8xKp2W$AKIAVERYSECRETKEY9f3hunter2:19000:0:99999:7:::"


def _windows(text: str, n: int = 4) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def assert_quotes_nothing_of(message: str, secret: str = SECRET) -> None:
    leaked = [w for w in _windows(secret) if w in message or w.encode().hex() in message]
    assert not leaked, f"error quotes the file: {leaked[:3]} in {message!r}"


@pytest.mark.parametrize(
    "data",
    [
        SECRET.encode() + b"\n",  # /etc/shadow-like text
        b"AWS_SECRET_ACCESS_KEY=" + SECRET.encode() + b"\x00PATH=/usr/bin\x00",  # /proc/self/environ-like
        b"\x89PNG\r\n\x1a\n" + SECRET.encode(),  # a PNG signature, then the secret
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + SECRET.encode(),
        b"II*\x00" + SECRET.encode(),
        b"\xff\xd8\xff" + SECRET.encode(),
        b"GIF89a" + SECRET.encode(),
    ],
)
def test_image_errors_describe_the_file_and_never_quote_it(data):
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data)
    assert_quotes_nothing_of(str(e.value))
    assert f"{len(data)} bytes" in str(e.value)


def test_unrecognised_text_is_called_text():
    with pytest.raises(ImageDecodeError) as e:
        decode_image(SECRET.encode())
    assert str(e.value) == f"not a recognised image format ({len(SECRET)} bytes, text)"
