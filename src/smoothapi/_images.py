"""Turning what users pass (PIL images, numpy arrays, float tensors, files) into one CHW tensor.

Every input comes out as a float32 ``(C, H, W)`` tensor in [0, 1] with C = 1 (grey) or
3 (RGB), or is refused with an :class:`~smoothapi.errors.InvalidInputError`. The rules
for image files and PIL images (README, "Image inputs"):

* samples are read at their real depth: 8-bit / 255, 16-bit (``I;16``, ``I;16B``) /
  65535; 32-bit integer (``I``, what PIL also uses for 16-bit files) / 65535, refused
  outside 0..65535; float (``F``) as is, refused outside [0, 1] or when not finite;
  16-bit PNGs with colour or alpha, which PIL decodes to their high byte, are decoded
  with raw modes that keep every byte (:func:`_png16_pixels`) and read / 65535 too;
* the EXIF orientation is applied, so a phone photo is certified upright;
* transparency is composited over white (:data:`ALPHA_BACKGROUND`), with an
  :class:`ImageWarning` when any pixel is not fully opaque; the transparent colour of a
  16-bit image (PNG's ``tRNS``) is matched at 16 bits;
* grey (``1``, ``L``, ``I``, ``F``, grey with alpha at 8 or 16 bits, and palettes whose
  colours are all grey) stays one channel; everything else (palette, CMYK, YCbCr, LAB,
  HSV ...) becomes RGB;
* of an animated image, the current frame (the first, for a file) is used, with a warning;
* an image over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is refused
  from its header, before any pixel is decoded (PIL itself only warns below twice the limit).

Before any batch is built, :func:`check_batch_memory` refuses an image and batch size whose
noisy batch would not fit in the device's memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import warnings
from collections.abc import Iterator
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from .errors import InvalidInputError

__all__ = [
    "ALPHA_BACKGROUND",
    "IMAGE_EXTENSIONS",
    "PEAK_FLOATS_PER_PIXEL",
    "ImageLike",
    "ImageWarning",
    "as_image_tensor",
    "available_memory",
    "batch_memory_bytes",
    "check_batch_memory",
    "fit_batch_size",
    "fit_side",
    "load_image",
]

ImageLike = Image.Image | np.ndarray | torch.Tensor

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ALPHA_BACKGROUND = 1.0  # white: transparent pixels are read as if drawn on white paper

_CHANNELS = (1, 3)
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
# What decoders raise on damaged or hostile files: PIL uses all of these.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    struct.error,
    Image.DecompressionBombError,
)
# Over PIL's MAX_IMAGE_PIXELS: an error from twice the limit, a warning below (made an error).
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# 16-bit PNGs that PIL decodes to 8 bits, the high byte of each sample (it has no 16-bit RGB,
# RGBA or grey-with-alpha mode), by PIL's raw mode for them, and the raw modes that decode
# the same data into every byte: the high bytes, then the low bytes, of RGB and RGBA; for
# grey with alpha, the four bytes of a pixel at once (grey high, grey low, alpha high, low).
_PNG16_RAWMODES = {
    "RGB;16B": ("RGB;16B", "RGB;16L"),
    "RGBA;16B": ("RGBA;16B", "RGBA;16L"),
    "LA;16B": ("RGBA",),
}


class ImageWarning(UserWarning):
    """An image was read with a documented change: alpha composited, or one frame of many."""


# --- one image --------------------------------------------------------------------------


def as_image_tensor(image: ImageLike) -> torch.Tensor:
    """A float32 ``(C, H, W)`` tensor in [0, 1], with C = 1 (grey) or 3 (RGB).

    Accepts a PIL image (any mode, read by the rules in this module's docstring), a
    ``uint8`` (0..255) or ``uint16`` (0..65535) numpy array ``(H, W)`` or ``(H, W, C)``,
    or a floating torch tensor ``(C, H, W)`` with finite values in [0, 1].
    """
    if isinstance(image, Image.Image):
        tensor = _from_pil(image, "image")
    elif isinstance(image, np.ndarray):
        tensor = _from_array(image)
    elif isinstance(image, torch.Tensor):
        tensor = _from_tensor(image)
    else:
        raise InvalidInputError(
            "expected a PIL image, a uint8 numpy array or a float tensor, "
            f"got {type(image).__name__}"
        )
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise InvalidInputError(f"image has no pixels: shape {tuple(tensor.shape)}")
    return tensor


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file (its first frame) into the tensor :func:`as_image_tensor` returns.

    Every failure, a missing, truncated, undecodable or oversized file included, is an
    :class:`InvalidInputError` naming the file, with the decoder's error as its cause. A
    file over PIL's decompression-bomb limit is refused from its header, never decoded.
    """
    try:
        with _bombs_refused(), Image.open(path) as image:
            return _from_pil(image, str(path))
    except InvalidInputError:
        raise
    except FileNotFoundError:
        raise InvalidInputError(f"image not found: {path}") from None
    except _BOMBS as exc:
        raise _too_many_pixels(str(path), _pixels(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from exc


@contextlib.contextmanager
def _bombs_refused() -> Iterator[None]:
    """PIL's warning for an image between its pixel limit and twice it raised, as its error is."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _pixels(exc: Exception) -> int | None:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def _too_many_pixels(source: str, pixels: int | None) -> InvalidInputError:
    image = f"the image ({pixels:,} pixels)" if pixels else "the image"
    return InvalidInputError(
        f"{source}: {image} is over PIL's decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS or 0:,} pixels; resize it first"
    )


def _check_pixels(image: Image.Image, source: str) -> None:
    """Refuse an image over PIL's decompression-bomb limit by its size alone, which a file's
    header gives: before anything is decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        raise _too_many_pixels(source, pixels)


def _from_pil(image: Image.Image, source: str) -> torch.Tensor:
    _check_pixels(image, source)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        warnings.warn(
            f"{source}: animated, {frames} frames; only frame {image.tell()} is certified",
            ImageWarning,
            stacklevel=3,
        )
    try:
        pixels = _png16_pixels(image, source)
        if pixels is None:
            image.load()
            pixels = _pil_pixels(ImageOps.exif_transpose(image), source)
    except InvalidInputError:
        raise
    except _BOMBS as exc:
        raise _too_many_pixels(source, _pixels(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInputError(f"cannot read {source}: {exc}") from exc
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def _png16_pixels(image: Image.Image, source: str) -> np.ndarray | None:
    """``(H, W, C)`` float32 in [0, 1] of a 16-bit PNG that PIL decodes to 8 bits and has not
    decoded yet, at full depth, grey with alpha staying grey; None for every other image.
    ``image`` itself is left as it is."""
    if not isinstance(image, PngImagePlugin.PngImageFile) or image.fp is None:
        return None
    if image.tell() != 0 or len(image.tile) != 1 or image.tile[0].args not in _PNG16_RAWMODES:
        return None
    rawmodes = _PNG16_RAWMODES[str(image.tile[0].args)]
    decoded = [np.asarray(_decoded(image.fp, rawmode)) for rawmode in rawmodes]
    data = np.concatenate(decoded, axis=2).astype(np.uint16)
    if len(rawmodes) == 1:  # grey with alpha: grey high, grey low, alpha high, alpha low
        data = data[:, :, [0, 2, 1, 3]]
    half = data.shape[2] // 2
    values = _with_key((data[:, :, :half] << 8) | data[:, :, half:], image.info.get("transparency"))
    pixels = _scaled(values, 65535)
    return _composite(pixels, source) if values.shape[2] in (2, 4) else pixels


def _decoded(file: IO[bytes], rawmode: str) -> Image.Image:
    """The PNG in ``file`` decoded with PIL's ``rawmode`` for its data, upright."""
    with Image.open(file, formats=["PNG"]) as image:  # leaves the file open: its owner closes it
        image.tile = [tile._replace(args=rawmode) for tile in image.tile]
        image.load()
        return ImageOps.exif_transpose(image)


def _pil_pixels(image: Image.Image, source: str) -> np.ndarray:
    """``(H, W, C)`` float32 in [0, 1] by the module's rules."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = _with_key(_sixteen_bits(image, source), image.info.get("transparency"))
        pixels = _scaled(values, 65535)
        return _composite(pixels, source) if values.shape[2] == 2 else pixels
    if mode in _ALPHA_MODES or "transparency" in image.info:
        grey = mode in ("LA", "La", "L") or (mode in ("P", "PA") and _grey_palette(image))
        rgba = np.asarray(image.convert("LA" if grey else "RGBA"))
        return _composite(_scaled(rgba, 255), source)
    if mode in ("1", "L"):
        return _scaled(np.asarray(image.convert("L")), 255)
    if mode == "F":
        return _scaled(_unit_floats(np.asarray(image), source), 1)
    if mode == "P" and _grey_palette(image):
        return _scaled(np.asarray(image.convert("L")), 255)
    return _scaled(np.asarray(image if mode == "RGB" else image.convert("RGB")), 255)


def _sixteen_bits(image: Image.Image, source: str) -> np.ndarray:
    """The samples of a 16-bit (``I;16``, ``I;16B``) or 32-bit integer (``I``) image, the
    latter refused outside 0..65535."""
    values = np.asarray(image)
    if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise InvalidInputError(
            f"{source}: 32-bit integer pixels are read as 16-bit (0..65535), got "
            f"values in [{values.min()}, {values.max()}]"
        )
    return values


def _with_key(values: np.ndarray, key: object) -> np.ndarray:
    """16-bit ``values`` as ``(H, W, C)``; with a transparent colour ``key`` (PNG's tRNS: an int
    for grey, a tuple for RGB), an alpha channel is appended, 0 where a pixel is that colour."""
    values = values[:, :, None] if values.ndim == 2 else values
    if not isinstance(key, int | tuple) or np.size(key) != values.shape[2]:
        return values
    opaque = (values != np.asarray(key)).any(axis=2, keepdims=True)
    return np.concatenate([values, np.where(opaque, 65535, 0).astype(values.dtype)], axis=2)


def _scaled(values: np.ndarray, top: float) -> np.ndarray:
    pixels = values.astype(np.float32) / np.float32(top)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _unit_floats(values: np.ndarray, source: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise InvalidInputError(f"{source}: float pixels contain NaN or infinite values")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise InvalidInputError(
            f"{source}: float pixels must lie in [0, 1], got values in "
            f"[{values.min():.4g}, {values.max():.4g}]"
        )
    return values


def _grey_palette(image: Image.Image) -> bool:
    palette = image.getpalette("RGB")
    if not palette:
        return False
    colours = np.asarray(palette).reshape(-1, 3)
    return bool((colours == colours[:, :1]).all())


def _composite(values: np.ndarray, source: str) -> np.ndarray:
    """``(H, W, C + 1)`` pixels in [0, 1], alpha last, over a white background; warns when any
    pixel is not fully opaque."""
    colour, alpha = values[:, :, :-1], values[:, :, -1:]
    if alpha.size and alpha.min() < 1:
        warnings.warn(
            f"{source}: transparent pixels composited over white; composite it yourself "
            "(Image.alpha_composite) for another background",
            ImageWarning,
            stacklevel=4,
        )
    return colour * alpha + np.float32(ALPHA_BACKGROUND) * (1 - alpha)


def _from_array(image: np.ndarray) -> torch.Tensor:
    tops = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
    if image.dtype not in tops:
        raise InvalidInputError(
            f"numpy images must be uint8 (0..255) or uint16 (0..65535), got {image.dtype}; "
            "pass floats as a (C, H, W) torch tensor in [0, 1]"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in _CHANNELS:
        raise InvalidInputError(
            f"numpy images must be (H, W) or (H, W, C) with C in {_CHANNELS}, got {image.shape}"
        )
    pixels = _scaled(image, tops[image.dtype])
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def _from_tensor(image: torch.Tensor) -> torch.Tensor:
    if not image.is_floating_point():
        raise InvalidInputError(
            f"tensor images must be floating point in [0, 1], got {image.dtype}"
        )
    if image.ndim != 3 or image.shape[0] not in _CHANNELS:
        raise InvalidInputError(
            f"tensor images must be (C, H, W) with C in {_CHANNELS}, got {tuple(image.shape)}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise InvalidInputError(f"image has no pixels: shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise InvalidInputError("image contains NaN or infinite values")
    if image.min() < 0 or image.max() > 1:
        raise InvalidInputError(
            f"tensor images must lie in [0, 1], got values in "
            f"[{image.min().item():.4g}, {image.max().item():.4g}]"
        )
    return image.detach().float()


# --- memory, before a batch is built -----------------------------------------------------

# A rough peak for one noisy sample: the image itself plus two 64-channel float32 feature
# maps at full resolution, the peak of a DnCNN-style denoiser or a ResNet's first stage.
PEAK_FLOATS_PER_PIXEL = 128


def batch_memory_bytes(
    shape: tuple[int, ...], batch_size: int, floats_per_pixel: int = PEAK_FLOATS_PER_PIXEL
) -> int:
    """Estimated peak bytes of one batch of ``batch_size`` noisy copies of a ``(C, H, W)`` image."""
    channels, height, width = (int(s) for s in shape)
    return int(batch_size) * height * width * 4 * (channels + floats_per_pixel)


def available_memory(device: str | torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: MemAvailable), or None."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_batch_memory(
    shape: tuple[int, ...],
    batch_size: int,
    device: str | torch.device,
    *,
    available: int | None = None,
    floats_per_pixel: int = PEAK_FLOATS_PER_PIXEL,
) -> None:
    """Refuse, before anything is allocated, a batch whose estimated peak exceeds free memory.

    The estimate is :func:`batch_memory_bytes`; ``available`` defaults to
    :func:`available_memory` of ``device`` (no check when that is unknown). The message
    names the largest batch size that fits, or says to resize the image when none does.
    """
    available = available_memory(device) if available is None else available
    if available is None:
        return
    per_sample = batch_memory_bytes(shape, 1, floats_per_pixel)
    needed = per_sample * int(batch_size)
    if needed <= available:
        return
    size = "x".join(str(int(s)) for s in shape[1:])
    if per_sample > available:
        raise InvalidInputError(
            f"a {size} image needs about {_gib(per_sample)} per noisy sample, more than the "
            f"{_gib(available)} free on {device}; resize it first"
        )
    raise InvalidInputError(
        f"batch_size={batch_size} on a {size} image needs about {_gib(needed)}, more than the "
        f"{_gib(available)} free on {device}; use batch_size={available // per_sample} or less"
    )


#: The share of free memory an automatically sized batch may take (the rest: the model, the
#: process, other work on the machine).
AUTO_BATCH_SHARE = 0.5


def fit_batch_size(
    shapes: list[tuple[int, ...]] | tuple[tuple[int, ...], ...],
    largest: int,
    device: str | torch.device,
    *,
    available: int | None = None,
    floats_per_pixel: int = PEAK_FLOATS_PER_PIXEL,
) -> int:
    """The batch size for images of ``shapes``: ``largest``, or the largest power of two
    below it whose batch of the biggest image takes at most half the free memory of
    ``device`` (at least 1; ``largest`` when the free memory is unknown). A power of two, so
    that the same machine picks the same size again (the batch size decides the noise)."""
    available = available_memory(device) if available is None else available
    if available is None or not shapes:
        return int(largest)
    per_sample = max(batch_memory_bytes(shape, 1, floats_per_pixel) for shape in shapes)
    fits = int(available * AUTO_BATCH_SHARE) // max(per_sample, 1)
    if fits >= largest:
        return int(largest)
    size = 1
    while size * 2 <= fits:
        size *= 2
    return size


def fit_side(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """``image`` (C, H, W) shrunk so that its longer side is at most ``max_side``, keeping
    the aspect ratio (antialiased bilinear, clipped to [0, 1]); as it is when it fits or
    ``max_side`` is ``None``. Certified radii are then in the shrunk image's pixel space."""
    if max_side is None:
        return image
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].clamp_(0, 1)


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
