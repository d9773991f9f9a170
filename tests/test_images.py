"""Every image input read at its real depth and orientation, or refused with a typed error."""

from __future__ import annotations

import itertools
import math
import re
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from smoothapi import InvalidInputError, LocalModelAdapter, SmoothedClassifier
from smoothapi._image_files import scan_images
from smoothapi._images import (
    ImageWarning,
    as_image_tensor,
    batch_memory_bytes,
    check_batch_memory,
    load_image,
)
from smoothapi.certification import check_alpha, check_count, check_radius, check_seed, check_sigma
from smoothapi.cli import main
from smoothapi.training import create_classifier

GIB = 2**30


def _gradient16(height: int = 32, width: int = 64) -> np.ndarray:
    """A uint16 left-to-right ramp over the full 0..65535 range: mean exactly 0.5 of full scale."""
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(path: Path, size: tuple[int, int], depth: int, colour_type: int, rows: Iterable[bytes],
         *, interlace: bool = False, chunks: bytes = b"") -> None:
    """A PNG written by hand (PIL writes no 16-bit colour), ``rows`` its filtered scanlines,
    compressed as they come, the data split over IDAT chunks of 1000 bytes."""
    compressor = zlib.compressobj()
    data = b"".join(compressor.compress(row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", *size, depth, colour_type, 0, 0, int(interlace))
    idat = b"".join(_chunk(b"IDAT", data[i:i + 1000]) for i in range(0, len(data), 1000))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + chunks + idat
                     + _chunk(b"IEND", b""))


def _filtered(values: np.ndarray) -> bytes:
    """The big-endian scanlines of ``(H, W, C)`` 16-bit ``values``, row y with PNG filter y % 5
    (none, sub, up, average, Paeth), so that decoders undo every filter."""
    rows = values.astype(">u2").view(np.uint8).reshape(values.shape[0], -1).astype(np.int32)
    step = 2 * values.shape[2]  # bytes per pixel: the filters predict from the pixel to the left
    up = np.vstack([np.zeros_like(rows[:1]), rows[:-1]])
    left = np.hstack([np.zeros_like(rows[:, :step]), rows[:, :-step]])
    up_left = np.hstack([np.zeros_like(up[:, :step]), up[:, :-step]])
    guess = left + up - up_left
    off = [np.abs(guess - near) for near in (left, up, up_left)]
    paeth = np.where((off[0] <= off[1]) & (off[0] <= off[2]), left,
                     np.where(off[1] <= off[2], up, up_left))
    predicted = [np.zeros_like(rows), left, up, (left + up) // 2, paeth]
    return b"".join(bytes([y % 5]) + ((row - predicted[y % 5][y]) % 256).astype(np.uint8).tobytes()
                    for y, row in enumerate(rows))


def _png16(path: Path, values: np.ndarray, *, interlace: bool = False,
           chunks: bytes = b"") -> None:
    """``(H, W, C)`` uint16 ``values`` as a 16-bit PNG: grey, grey + alpha, RGB or RGBA."""
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[values.shape[2]]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)] if interlace else [(0, 0, 1, 1)]  # Adam7's (x, y, step x, step y)
    images = [values[y::dy, x::dx] for x, y, dx, dy in passes]
    rows = [_filtered(image) for image in images if image.size]
    _png(path, values.shape[1::-1], 16, colour_type, rows, interlace=interlace, chunks=chunks)


# --- depth -------------------------------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "ramp16.png"
    Image.fromarray(_gradient16()).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
        images = (load_image(path), as_image_tensor(opened))
    for image in images:
        assert image.shape == (1, 32, 64)
        assert abs(image.mean().item() - 0.5) < 0.01  # clipped at 255 it was 0.997
        assert image.min().item() == 0.0 and image.max().item() == 1.0


def test_big_endian_16_bit_and_32_bit_integer_images_are_read_as_16_bit():
    ramp = _gradient16()
    big_endian = Image.frombytes("I;16B", (64, 32), ramp.astype(">u2").tobytes())
    as_int32 = Image.fromarray(ramp.astype(np.int32))
    assert as_int32.mode == "I"
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535)[None]
    for image in (big_endian, as_int32):
        assert torch.allclose(as_image_tensor(image), expected, atol=1e-6)


def test_32_bit_integers_beyond_16_bits_are_refused():
    with pytest.raises(InvalidInputError, match="0..65535"):
        as_image_tensor(Image.fromarray(np.full((4, 4), 70_000, dtype=np.int32)))


def test_float_images_are_read_as_is_and_refused_outside_0_1(tmp_path):
    values = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert torch.equal(load_image(path), torch.from_numpy(values)[None])
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        as_image_tensor(Image.fromarray(values * 255))
    with pytest.raises(InvalidInputError, match="NaN"):
        as_image_tensor(Image.fromarray(np.full((2, 2), math.nan, dtype=np.float32)))


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])  # grey, grey + alpha, RGB, RGBA
def test_16_bit_pngs_of_every_colour_type_are_read_at_full_depth(
    tmp_path, recwarn, channels, interlace
):
    values = np.random.default_rng(channels).integers(0, 65536, (21, 13, channels), np.uint16)
    path = tmp_path / "deep.png"
    _png16(path, values, interlace=interlace)
    expected = values.astype(np.float32) / np.float32(65535)  # PIL alone: the high byte only
    if channels in (2, 4):  # alpha composited over white, as at 8 bits
        expected = expected[..., :-1] * expected[..., -1:] + (1 - expected[..., -1:])
    expected_tensor = torch.from_numpy(expected.transpose(2, 0, 1).copy())
    with Image.open(path) as opened, path.open("rb") as file:
        images = [load_image(path), as_image_tensor(opened), as_image_tensor(opened),
                  as_image_tensor(Image.open(file))]
        assert np.asarray(opened).shape[:2] == (21, 13)  # the caller's image still loads
    for image in images:
        assert image.shape == (1 if channels <= 2 else 3, 21, 13)  # grey + alpha stays grey
        assert torch.allclose(image, expected_tensor, rtol=0, atol=1e-7)
    warned = {str(w.message).split(":")[0] for w in recwarn if w.category is ImageWarning}
    assert warned == ({str(path), "image"} if channels in (2, 4) else set())


def test_a_16_bit_transparent_colour_is_matched_at_16_bits(tmp_path):
    rgb = np.array([[[1000, 2000, 3000], [1000, 2000, 3001]]], dtype=np.uint16)
    _png16(tmp_path / "rgb.png", rgb, chunks=_chunk(b"tRNS", struct.pack(">3H", 1000, 2000, 3000)))
    grey16 = np.array([[[1000], [1001]]], dtype=np.uint16)  # in each pair, the high bytes match
    _png16(tmp_path / "grey.png", grey16, chunks=_chunk(b"tRNS", struct.pack(">H", 1000)))
    with pytest.warns(ImageWarning, match="over white"):
        colour, grey = load_image(tmp_path / "rgb.png"), load_image(tmp_path / "grey.png")
    assert colour.shape == (3, 1, 2) and grey.shape == (1, 1, 2)
    assert colour[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # exactly the key: transparent
    assert torch.allclose(colour[:, 0, 1], torch.tensor([1000, 2000, 3001]) / 65535)  # low byte
    assert torch.allclose(grey[0, 0], torch.tensor([1.0, 1001 / 65535]))


def test_a_16_bit_colour_png_is_turned_upright(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (4, 6, 3), np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.png"
    _png16(path, values, chunks=_chunk(b"eXIf", exif.tobytes()[6:]))  # less "Exif\0\0"
    upright = np.rot90(values, -1).astype(np.float32) / np.float32(65535)
    image = load_image(path)
    assert image.shape == (3, 6, 4)
    assert torch.allclose(image, torch.from_numpy(upright.transpose(2, 0, 1).copy()), atol=1e-7)


def test_uint16_arrays_are_scaled_like_16_bit_files():
    ramp = _gradient16()
    assert torch.equal(as_image_tensor(ramp), as_image_tensor(Image.fromarray(ramp)))


# --- orientation, transparency, palettes, frames, other modes -------------------------------


def test_exif_rotated_jpeg_loads_upright(tmp_path):
    upright = np.zeros((40, 20), dtype=np.uint8)
    upright[20:] = 255  # dark top half, bright bottom half, taller than wide
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    with Image.open(path) as opened:
        images = (load_image(path), as_image_tensor(opened))
    for image in images:
        assert image.shape == (1, 40, 20)
        assert image[0, :20].mean() < 0.1 and image[0, 20:].mean() > 0.9


def test_transparency_is_composited_over_white_with_a_warning(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, :, 3] = 0, 128, 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    with pytest.warns(ImageWarning, match="over white"):
        image = load_image(path)
    assert image.shape == (3, 2, 2)
    assert torch.allclose(image[:, 0, 0], torch.ones(3))  # fully transparent: the background
    assert torch.allclose(image[:, 0, 1], torch.tensor([1.0, 127 / 255, 127 / 255]), atol=1e-6)
    assert torch.allclose(image[:, 1, 0], torch.tensor([1.0, 0.0, 0.0]))  # opaque: as drawn


def test_opaque_alpha_needs_no_warning_and_grey_alpha_stays_grey(recwarn):
    la = np.stack([np.full((3, 3), 51, np.uint8), np.full((3, 3), 255, np.uint8)], axis=-1)
    image = as_image_tensor(Image.fromarray(la, mode="LA"))
    assert image.shape == (1, 3, 3) and torch.allclose(image, torch.full((1, 3, 3), 0.2))
    assert not [w for w in recwarn if issubclass(w.category, ImageWarning)]


def test_palette_images_become_grey_or_rgb_by_their_colours():
    indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    grey = Image.fromarray(indices, mode="P")
    grey.putpalette([0, 0, 0, 200, 200, 200])
    expected = torch.from_numpy(indices * 200 / 255).float()[None]
    assert torch.allclose(as_image_tensor(grey), expected)
    colour = Image.fromarray(indices, mode="P")
    colour.putpalette([0, 0, 255, 255, 0, 0])
    image = as_image_tensor(colour)
    assert image.shape == (3, 2, 2)
    assert image[:, 0, 0].tolist() == [0.0, 0.0, 1.0] and image[:, 0, 1].tolist() == [1.0, 0, 0]
    colour.info["transparency"] = 0  # palette entry 0 is transparent
    with pytest.warns(ImageWarning):
        assert as_image_tensor(colour)[:, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_animated_images_use_the_first_frame_with_a_warning(tmp_path):
    frames = [Image.fromarray(np.full((4, 4), v, dtype=np.uint8)) for v in (0, 255)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.warns(ImageWarning, match="2 frames; only frame 0"):
        image = load_image(path)
    assert image.max().item() == 0.0


def test_cmyk_ycbcr_and_bilevel_images_are_read():
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # red
    assert as_image_tensor(cmyk)[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    ycbcr = Image.new("RGB", (3, 2), (0, 255, 0)).convert("YCbCr")
    assert as_image_tensor(ycbcr).shape == (3, 2, 3)
    bilevel = Image.new("1", (3, 2), 1)
    assert torch.equal(as_image_tensor(bilevel), torch.ones(1, 2, 3))


# --- damaged and oversized files -------------------------------------------------------------


def _truncated_png(tmp_path: Path) -> Path:
    path = tmp_path / "cut.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:600])
    return path


def test_a_truncated_image_is_a_typed_error_with_its_cause(tmp_path):
    path = _truncated_png(tmp_path)
    with pytest.raises(InvalidInputError, match="cut.png") as raised:
        load_image(path)
    assert isinstance(raised.value.__cause__, OSError)
    smoothed = SmoothedClassifier(LocalModelAdapter(torch.nn.Flatten()), 0.25, device="cpu")
    with Image.open(path) as opened, pytest.raises(InvalidInputError) as raised:
        smoothed.certify(opened, n0=1, n=1)  # a lazily opened file, decoded by certify
    assert isinstance(raised.value.__cause__, OSError)


def test_a_decompression_bomb_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "images" / "big.png"
    path.parent.mkdir()
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # 10,000 pixels: over twice the limit
    with pytest.raises(InvalidInputError, match="decompression-bomb limit of 1,000") as raised:
        load_image(path)
    assert "\n" not in str(raised.value)
    model = tmp_path / "model.safetensors"
    classifier = create_classifier("small_cnn", in_channels=1, num_classes=2, width=4)
    LocalModelAdapter(classifier).save(model, dataset="none")
    code = main(["predict", "--model", str(model), str(path.parent), "--sigma", "0.25",
                 "--n", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "decompression-bomb" in err, err


def test_batch_memory_is_estimated_and_refused_before_allocating():
    assert batch_memory_bytes((3, 32, 32), 10) == 10 * 32 * 32 * 4 * (3 + 128)
    check_batch_memory((1, 28, 28), 256, "cpu", available=GIB)  # 0.1 GiB: fits
    with pytest.raises(InvalidInputError, match="resize it") as raised:
        check_batch_memory((3, 10_000, 10_000), 1, "cpu", available=16 * GIB)
    assert "10000x10000" in str(raised.value)
    per_sample = batch_memory_bytes((3, 1000, 1000), 1)
    with pytest.raises(InvalidInputError, match=r"use batch_size=(\d+) or less") as raised:
        check_batch_memory((3, 1000, 1000), 256, "cpu", available=8 * GIB)
    suggested = int(raised.value.args[0].rsplit("batch_size=", 1)[1].split()[0])
    assert suggested == 8 * GIB // per_sample
    check_batch_memory((3, 1000, 1000), suggested, "cpu", available=8 * GIB)


def test_a_huge_png_is_refused_from_its_header_never_decoded(tmp_path, monkeypatch, recwarn):
    path = tmp_path / "huge.png"
    row = bytes(1 + 3 * 10_000)  # filter "none", then a black RGB row
    _png(path, (10_000, 10_000), 8, 2, itertools.repeat(row, 10_000))
    assert path.stat().st_size < 2**20  # 300 MB of pixels, 3.6 GB at the peak of reading them
    assert Image.MAX_IMAGE_PIXELS < 10_000**2 < 2 * Image.MAX_IMAGE_PIXELS  # PIL only warns

    def decode(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    monkeypatch.setattr(Image.Image, "load", decode)
    reason = ("the image (100,000,000 pixels) is over PIL's decompression-bomb limit of "
              f"{Image.MAX_IMAGE_PIXELS:,} pixels")
    with pytest.raises(InvalidInputError, match=re.escape(f"huge.png: {reason}")) as raised:
        load_image(path)
    assert isinstance(raised.value.__cause__, Image.DecompressionBombWarning)
    unreadable = scan_images(tmp_path).unreadable
    assert [u.name for u in unreadable] == ["huge.png"] and reason in unreadable[0].reason
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    with pytest.warns(Image.DecompressionBombWarning):
        opened = Image.open(path)  # by the caller, who saw PIL's warning
    with opened, pytest.raises(InvalidInputError, match=re.escape(reason)):
        as_image_tensor(opened)


# --- a folder with unreadable files ---------------------------------------------------------


def test_a_folder_scan_reports_every_unreadable_file(tmp_path):
    Image.new("L", (4, 4), 9).save(tmp_path / "10.png")
    Image.new("RGB", (5, 3)).save(tmp_path / "2.png")
    (tmp_path / "cat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "cat" / "a.jpg")
    (tmp_path / "3.png").write_text("not a png")
    _truncated_png(tmp_path).rename(tmp_path / "cat" / "b.png")
    (tmp_path / "cat" / "c.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "notes.txt").write_text("ignored: not named like an image")
    (tmp_path / ".hidden.png").write_text("ignored: hidden")
    scan = scan_images(tmp_path)
    readable = [(f.name, f.label, f.shape) for f in scan.readable]
    assert readable == [("2.png", None, (3, 3, 5)), ("10.png", None, (1, 4, 4)),
                        ("cat/a.jpg", "cat", (1, 4, 4))]
    assert [u.name for u in scan.unreadable] == ["3.png", "cat/b.png", "cat/c.png"]
    assert "broken symbolic link" in scan.unreadable[2].reason
    assert all("\n" not in u.reason for u in scan.unreadable)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no images"):
        scan_images(tmp_path / "empty")


# --- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize("check", [check_sigma, check_radius, check_alpha])
def test_booleans_are_not_numbers(check):
    with pytest.raises(InvalidInputError):
        check(True)


def test_booleans_are_not_seeds_or_counts():
    for value in (True, np.bool_(True)):
        with pytest.raises(InvalidInputError, match="seed"):
            check_seed(value)
        with pytest.raises(InvalidInputError):
            check_count("n", value)
    with pytest.raises(InvalidInputError):
        SmoothedClassifier(LocalModelAdapter(torch.nn.Flatten()), True)


def test_numpy_numbers_are_accepted_wherever_python_ones_are():
    assert check_sigma(np.int64(1)) == 1.0 and check_sigma(np.float32(0.25)) == 0.25
    assert check_radius(np.int32(2)) == 2.0
    assert check_alpha(np.float64(0.001)) == 0.001
    assert check_count("n", np.uint16(7)) == 7
    seed = check_seed(np.uint64(2**63))
    assert seed == 2**63 and type(seed) is int
    assert check_seed(None) is None
