"""Decode one image file into an RGB :class:`PIL.Image.Image`, whatever mode PIL reads it in.

Every failure becomes :class:`~negspace.errors.UnreadableImageError` with a short reason, so that
callers (the encoders) can skip the file, count it and list it in the results.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from negspace.errors import UnreadableImageError

__all__ = ["decode_rgb", "load_rgb"]

logger = logging.getLogger(__name__)

# Modes whose alpha channel is composited onto white (dropping alpha would turn transparent
# regions into whatever colour the hidden pixels happen to hold, usually black).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)
_MAX_REASON_CHARS = 200
MAX_DECODE_SIDE = 2048  # JPEGs with both sides over twice this are decoded at a reduced scale


class _ConversionError(Exception):
    """A decoded image whose mode PIL cannot turn into RGB; the message is the reason."""


def load_rgb(path: Path | str) -> Image.Image:
    """Read an image file fully and return it as an RGB image.

    * EXIF orientation is applied (a portrait photo stored sideways comes out upright).
    * Modes: L, P, CMYK, 1, YCbCr, ... are converted by PIL; images with transparency (LA, PA,
      RGBA, P or L/RGB with a transparent colour) are composited onto white; 16-bit and 32-bit
      integer grayscale (``I;16*``, ``I``) and float (``F``) images are rescaled to 8 bits rather
      than clipped (see :func:`_wide_gray_to_l`).
    * The whole file is decoded here, so a truncated file fails now rather than inside a batch.
      ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone (no global state is changed).
    * Multi-frame files (GIF, TIFF, WebP) give their first frame.
    * A JPEG larger than ``2 * MAX_DECODE_SIDE`` on both sides is decoded at 1/2, 1/4 or 1/8
      scale (PIL's ``draft``), never below ``MAX_DECODE_SIDE``: the model sees it at 224 px
      anyway, and memory stays bounded. Images over PIL's decompression-bomb warning size are
      logged with their file name.

    Raises:
        UnreadableImageError: the file is missing, empty, not an image, truncated or corrupt,
            too large (PIL's decompression-bomb limit), or in a mode that cannot become RGB.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnreadableImageError(path, _reason(exc)) from exc
    return _decode(path, path, size)


def decode_rgb(data: bytes, name: str = "image") -> Image.Image:
    """:func:`load_rgb` for an image's bytes held in memory (a request to ``negspace serve``): the
    same decoding, conversion and errors, ``name`` standing for the file's path in them."""
    return _decode(io.BytesIO(data), Path(name), len(data))


def _decode(source: Path | io.BytesIO, path: Path, size: int) -> Image.Image:
    """Decode ``source`` (a file, or bytes named ``path``) of ``size`` bytes to RGB."""
    try:
        if size == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            im = Image.open(source)
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
            logger.warning(
                "%s is very large (%d x %d pixels); decoding it reduced where its format allows", path, *im.size
            )
        with im:
            # JPEG decodes at 1/2, 1/4 or 1/8 scale for free: huge photos stay small in memory,
            # and nothing below 2 x MAX_DECODE_SIDE changes.
            im.draft("RGB", (MAX_DECODE_SIDE, MAX_DECODE_SIDE))
            im.load()
            has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
            _apply_exif_orientation(im, path)
            return _to_rgb(im, has_alpha)
    except UnreadableImageError:
        raise
    except Exception as exc:
        raise UnreadableImageError(path, _reason(exc)) from exc


def _apply_exif_orientation(im: Image.Image, path: Path) -> None:
    """Rotate/flip ``im`` in place as its EXIF orientation tag says.

    A broken EXIF block does not make the pixels unusable, so it is logged and ignored.
    """
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF raises assorted errors
        logger.debug("Ignoring unreadable EXIF orientation of %s: %s", path, exc)


def _to_rgb(im: Image.Image, has_alpha: bool) -> Image.Image:
    """Convert a loaded image of any mode to a new RGB image."""
    mode = im.mode
    try:
        if mode in {"F", "I"} or mode.startswith("I;"):
            return _wide_gray_to_l(im).convert("RGB")
        if has_alpha:
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise _ConversionError(f"cannot convert mode {mode} to RGB ({exc})") from exc


def _wide_gray_to_l(im: Image.Image) -> Image.Image:
    """Map a 16/32-bit integer or float grayscale image to 8-bit ``L`` by scaling, not clipping.

    PIL's own conversion clips every value above 255 to white, which turns a normal 16-bit
    photograph into a white sheet.  Scaling rules:

    * ``I;16*``: the full 0..65535 range maps to 0..255.
    * ``I`` (e.g. 16-bit PGM, 32-bit TIFF): treated as 16-bit when all values lie in 0..65535,
      otherwise stretched linearly from its minimum to its maximum.
    * ``F``: values in [0, 1] are taken as fractions, values in [0, 255] as 8-bit levels, anything
      else is stretched from minimum to maximum; NaN and infinities become 0.
    """
    arr = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr
        else:
            scaled = _stretch(arr, lo, hi)
    elif im.mode.startswith("I;16"):
        scaled = arr / 257.0  # 65535 / 255 == 257 exactly
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        scaled = arr / 257.0 if lo >= 0.0 and hi <= 65535.0 else _stretch(arr, lo, hi)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 255]; a constant image maps to 0."""
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) * (255.0 / (hi - lo))


def _reason(exc: BaseException) -> str:
    """A short, human-readable reason for a failed read."""
    if isinstance(exc, _ConversionError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "file does not exist"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read (unknown or corrupt format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large, refused as a possible decompression bomb ({exc})"
    text = str(exc).strip() or type(exc).__name__
    # PIL's "image file is truncated (N bytes not processed)" already says it all.
    reason = text if "truncated" in text else f"corrupt image data ({type(exc).__name__}: {text})"
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    return reason
