"""Request images to model inputs, in memory: the pixel limit checked on the header before any
decoding, then the same decoding as every other command (:func:`negspace.data.images.decode_rgb`,
:func:`~negspace.data.images.load_rgb`'s twin) and the encoder's own transform; the batch worker
encodes the stacked inputs as :meth:`ClipEncoder.encode_image_files` does. No image is written to
disk or kept after its batch."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from negspace.data.images import decode_rgb
from negspace.errors import UnreadableImageError


class RequestError(Exception):
    """A request the server refuses: its HTTP status, a kind for the metrics, one sentence."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


@dataclass
class DecodedImage:
    """One request image, ready for the model: its name, content hash, model input and (only for
    a detector that sends images to an MLLM) the RGB image itself."""

    name: str
    sha256: str
    pixels: Any  # (3, H, W): a torch tensor, or a NumPy array for the torch-free encoder
    image: Image.Image | None = None


def image_pixels(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """Width and height read from the header alone; a refusal names the image."""
    if not data:
        raise RequestError(422, "unreadable_image", f"image {name!r} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        raise RequestError(413, "too_many_pixels", f"image {name!r} is too large to decode ({err}).") from None
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types on garbage
        kind = type(err).__name__
        raise RequestError(
            422,
            "unreadable_image",
            f"image {name!r} is not an image PIL can read ({kind}); send "
            "the bytes of a JPEG, PNG, WebP, GIF, BMP or TIFF file.",
        ) from None
    if width * height > max_pixels:
        raise RequestError(
            413,
            "too_many_pixels",
            f"image {name!r} has {width} x {height} = {width * height:,} "
            f"pixels, more than this server accepts ({max_pixels:,}, "
            "--max-pixels).",
        )
    return width, height


def decode_image(data: bytes, name: str, transform: Any, max_pixels: int, keep_image: bool) -> DecodedImage:
    """Check, decode and transform one image (runs in a decoding thread, beside the model)."""
    image_pixels(data, name, max_pixels)
    try:
        rgb = decode_rgb(data, name)
    except UnreadableImageError as err:
        raise RequestError(422, "unreadable_image", f"image {name!r} cannot be decoded: {err.reason}.") from None
    return DecodedImage(name, hashlib.sha256(data).hexdigest(), transform(rgb), rgb if keep_image else None)


def model_thread(threads: int) -> None:
    """The model's thread (the batch worker, the adaptive writer) uses ``threads`` cores, the
    number torch had where the model was loaded: set explicitly in the thread that runs it
    (0: nothing to set, the model does not run on torch)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def model_threads(encoder: Any) -> int:
    """How many cores torch uses in this thread (what the model threads are given), or 0 for an
    encoder that runs without torch (its ONNX Runtime session has its threads from the start)."""
    from negspace.encoders.onnx_images import OnnxImageEncoder

    if encoder is None or isinstance(encoder, OnnxImageEncoder):
        return 0
    import torch

    return torch.get_num_threads()


def encode_image_bytes(encoder: Any, images: list[bytes], max_pixels: int = 40_000_000) -> np.ndarray:
    """Features of images given as bytes, in memory (one batch): what the server encodes."""
    transform = encoder.backend.pixel_transform()
    decoded = [decode_image(data, f"image {i}", transform, max_pixels, False) for i, data in enumerate(images)]
    if not decoded:
        return np.zeros((0, encoder.dim), np.float32)
    return encoder.encode_transformed([d.pixels for d in decoded])
