"""Pixel decoding shared by every source: image files → grayscale arrays → square S×S uint8.

One convention for every format: a decoder returns a 2-D array that is either ``uint8`` (already
display-ready 8-bit grayscale, kept as is) or ``float32`` in 0..255 (from deeper sources, e.g. 16-bit
PNGs or DICOM, scaled by their real value range). :func:`crop_and_resize` then takes the centred
square and resizes it with Pillow's Lanczos filter (antialiased); float inputs are resized before
rounding so no precision is lost twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cxrsynth.errors import CxrsynthError

CROP_METHOD = "center-square"
RESIZE_METHOD = "PIL.LANCZOS"
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
SKIP_BAD_FIX = "replace or remove the file, or pass --skip-bad to leave such images out (they are counted in meta.json)"


def scale_to_display_range(values: np.ndarray) -> np.ndarray:
    """Linearly map an array's real min..max onto 0..255.

    Args:
        values: any numeric array.

    Returns:
        float32 array in 0..255 (all zeros when the array is constant).
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) * (255.0 / (high - low))).astype(np.float32)


def grayscale_from_pil(image: Image.Image) -> np.ndarray:
    """Turn a loaded Pillow image of any mode into a 2-D grayscale array.

    8-bit modes (``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``CMYK``…) become ``uint8`` luminance
    (ITU-R 601-2 weights; an alpha channel is ignored, radiographs are opaque). Deeper modes
    (``I;16*``, ``I``, ``F``) become ``float32`` scaled by their real min..max onto 0..255, so a
    16-bit image that uses only part of its range is stretched, never clipped at 255.

    Returns:
        ``uint8`` or ``float32`` 2-D array (see the module docstring).
    """
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if image.mode.startswith("I") or image.mode == "F":
        return scale_to_display_range(np.asarray(image))
    return np.asarray(image.convert("L"), dtype=np.uint8)


MAX_DECODE_PIXELS = 40_000_000
"""Largest image (width × height) decoded: ~6300², above any clinical radiograph. A 12000² 16-bit PNG
is 300 KB on disk when flat but 1.7 GB once decoded per worker; such a file is refused before decoding."""


def decode_image_file(path: str) -> np.ndarray:
    """Decode a PNG/JPEG (or any Pillow-readable) file to a grayscale array, upright.

    The EXIF orientation tag is applied (``ImageOps.exif_transpose``): a photo or scanner JPEG
    stored sideways with a rotation tag is prepared the way viewers show it. An image above
    :data:`MAX_DECODE_PIXELS` is refused from its header, before any pixel is decoded, so a tiny
    compressed file cannot take gigabytes of memory in each decoding worker.

    Args:
        path: the image file.

    Returns:
        ``uint8`` or ``float32`` 2-D array, as :func:`grayscale_from_pil`.

    Raises:
        CxrsynthError: when the file is missing, truncated, not an image, or too large, naming it.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_DECODE_PIXELS:
                raise CxrsynthError(
                    f"image file {path} is {width}×{height} pixels, above the decoding budget of "
                    f"{MAX_DECODE_PIXELS:,} pixels (a decompression bomb, or a scan far larger than any radiograph)",
                    "downscale it below ~6000×6000 first, or " + SKIP_BAD_FIX.replace("replace or remove the file, or ", ""),
                )
            image.load()
            upright = ImageOps.exif_transpose(image)
            return grayscale_from_pil(upright)
    except CxrsynthError:
        raise
    except FileNotFoundError:
        raise CxrsynthError(f"image file {path} is missing", SKIP_BAD_FIX) from None
    except Exception as exc:  # Pillow raises many types for broken files; all mean "unreadable"
        raise CxrsynthError(f"image file {path} cannot be decoded ({type(exc).__name__}: {exc})", SKIP_BAD_FIX) from None


def geometry_warning(shape: tuple[int, int], size: int) -> str | None:
    """Why an image of ``shape`` (height, width) prepares badly at ``size``², or None when it is fine.

    Flags an image whose short side is below ``size`` (it is upscaled: blur, no detail) and one whose
    long side is over twice its short side (the centre square drops more than half of it).
    """
    height, width = shape
    short, long = min(height, width), max(height, width)
    if short < size:
        return f"{width}×{height} is smaller than {size}×{size}: upscaled"
    if long > 2 * short:
        return f"{width}×{height} has aspect ratio {long / short:.1f}: the centre square crop drops {1 - short / long:.0%} of it"
    return None


def center_square(pixels: np.ndarray) -> np.ndarray:
    """The largest centred square of a 2-D array (a view, no copy)."""
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


def crop_and_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop a grayscale array to a square and resize it to ``size``×``size``, antialiased.

    Args:
        pixels: 2-D ``uint8`` array, or float array in 0..255.
        size: output side in pixels.

    Returns:
        ``uint8`` array ``size``×``size``.

    Raises:
        ValueError: when ``pixels`` is not 2-D or is empty.
    """
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a non-empty 2-D grayscale array, got shape {pixels.shape}")
    square = np.ascontiguousarray(center_square(pixels))
    if square.dtype == np.uint8:
        image = Image.fromarray(square)
        if square.shape[0] != size:
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)
    image = Image.fromarray(square.astype(np.float32))
    if square.shape[0] != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)


def find_image_files(root: Path) -> list[Path]:
    """All PNG/JPEG files under ``root`` (recursive, hidden folders skipped), sorted by relative path."""
    found = [
        path
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())
