"""Request bodies of the endpoint -> uint8 RGB arrays, with the checks that keep a server safe.

The endpoint takes what the built-in Image Classification algorithm takes, one image per
request as ``image/jpeg``, ``image/png`` or ``application/x-image``, and a batch form,
``application/x-npy``: a NumPy ``.npy`` file (never pickled) holding a uint8 array of shape
(N, H, W, 3), or (H, W, 3) for one image.

Every function here raises :class:`~pcamflow.errors.ImageError` with a message fit to send
back to the client. Image sizes are checked from the header, before any pixel is decoded, so a
small file that claims to be a huge image (a decompression bomb) costs nothing.

>>> import io
>>> from PIL import Image
>>> buffer = io.BytesIO()
>>> Image.new("RGB", (96, 96), (200, 120, 180)).save(buffer, "PNG")
>>> decode_body(buffer.getvalue(), "image/png")[0][0].shape
(96, 96, 3)
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from pcamflow.errors import ImageError

__all__ = [
    "IMAGE_TYPES",
    "MAX_IMAGE_PIXELS",
    "NPY_TYPE",
    "SUPPORTED_TYPES",
    "decode_body",
    "decode_image",
    "decode_npy",
    "media_type",
]

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
NPY_TYPE = "application/x-npy"
SUPPORTED_TYPES = (*IMAGE_TYPES, NPY_TYPE)

MAX_IMAGE_PIXELS = 4096 * 4096
"""The largest image (width x height) decoded by default: far above a 96x96 patch, far below
what would exhaust memory (Pillow's own guard only starts at ~89 million pixels)."""

# Formats Pillow may open: the image types the endpoint promises, and nothing else, so a
# request cannot reach rarely used decoders.
_FORMATS = {
    "image/jpeg": ("JPEG",),
    "image/png": ("PNG",),
    "application/x-image": ("JPEG", "PNG", "BMP", "WEBP"),
}


def media_type(header: str | None) -> str:
    """The bare media type of a ``Content-Type`` header (``image/jpeg; q=1`` -> ``image/jpeg``)."""
    return (header or "").split(";", 1)[0].strip().lower()



def decode_body(
    body: bytes, content_type: str | None, *, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[list[np.ndarray], bool]:
    """Decode a request body.

    Args:
        body: the request's bytes.
        content_type: its ``Content-Type`` header.
        max_pixels: the largest image (width x height) accepted.

    Returns:
        The images as uint8 (H, W, 3) arrays, and whether the body was the batch form (whose
        answer is a list of lists).

    Raises:
        ImageError: the body is empty, of an unsupported type, or cannot be decoded.
    """
    kind = media_type(content_type)
    if kind not in SUPPORTED_TYPES:
        shown = f"content type {kind!r}" if kind else "no content type"
        raise ImageError(f"{shown} is not supported; send one of {', '.join(SUPPORTED_TYPES)}")
    if not body:
        raise ImageError("the request body is empty; send an image")
    if kind == NPY_TYPE:
        return decode_npy(body, max_pixels=max_pixels), True
    return [decode_image(body, kind, max_pixels=max_pixels)], False


def decode_image(
    body: bytes, content_type: str = "application/x-image", *, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode one JPEG/PNG image to a uint8 (H, W, 3) RGB array.

    Transparency is composited over white (a patch has none; a PNG with an alpha channel is
    shown as a viewer shows it); grey and palette images become RGB.

    Raises:
        ImageError: the bytes are not a complete image of an accepted format, or the image
            is larger than ``max_pixels``.
    """
    formats = _FORMATS.get(media_type(content_type), _FORMATS["application/x-image"])
    try:
        with warnings.catch_warnings():
            # Pillow warns past ~89 million pixels (and raises past twice that); our own,
            # lower limit is checked below, so its warning would only be noise in the log
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body), formats=formats)
            width, height = image.size  # read from the header: nothing decoded yet
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ImageError(
                    f"the image is {width}x{height} pixels; the most accepted is "
                    f"{max_pixels:,} pixels (a 96x96 patch is expected)"
                )
            image.load()
            return _to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"the image is too large to decode: {error}") from None
    except UnidentifiedImageError:
        allowed = " or ".join(formats)
        raise ImageError(f"the body is not a {allowed} image that can be decoded") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        # Pillow reports truncated and corrupt files with these
        raise ImageError(f"the image cannot be decoded: {error}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_npy(body: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> list[np.ndarray]:
    """Decode the batch form: a ``.npy`` uint8 array (N, H, W, 3) or (H, W, 3).

    The header is checked before the data is read, and pickled objects are refused.

    Raises:
        ImageError: the body is not such an array.
    """
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, SyntaxError) as error:
        raise ImageError(f"the body is not a .npy array: {error}") from None
    if len(shape) == 3:
        shape = (1, *shape)
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
        raise ImageError(
            f"the .npy array is {dtype} of shape {tuple(shape)}; expected uint8 of shape "
            "(N, height, width, 3) or (height, width, 3)"
        )
    count, height, width = shape[:3]
    if count < 1 or height < 1 or width < 1 or height * width > max_pixels:
        raise ImageError(f"the .npy array's shape {tuple(shape)} holds no usable image")
    expected = count * height * width * 3
    data = stream.read()
    if len(data) != expected:
        raise ImageError(f"the .npy array should hold {expected} bytes of data, not {len(data)}")
    array = np.frombuffer(data, dtype=np.uint8)
    array = array.reshape(shape, order="F" if fortran else "C")
    return [np.ascontiguousarray(image) for image in array]
