"""Request bodies and answers of the endpoint, with the checks that keep a server safe.

The endpoint takes what the built-in Image Classification algorithm takes (AWS, "Image
Classification - MXNet", *Inference with the Image Classification Algorithm*): one encoded
``.jpg`` or ``.png`` image per request, labelled ``image/jpeg``, ``image/png`` or
``application/x-image`` (any of the three may hold either format). It answers with the class
probabilities as a JSON list (``Accept: application/json``) or as one JSON Lines record
``{"prediction": [...]}`` (``Accept: application/jsonlines``). Its own extension is a batch form,
``application/x-npy``: a NumPy ``.npy`` file (never pickled) holding a uint8 array of shape
(N, H, W, 3), or (H, W, 3) for one image.

Every function here raises :class:`~pcamflow.errors.ImageError` with a message fit to send
back to the client. Sizes are checked before any pixel is decoded (from an image's header, from
a ``.npy`` header), so a small file that claims to be a huge image (a decompression bomb), or a
small ``.npy`` that holds thousands of tiny images, is refused at no cost.

>>> import io
>>> from PIL import Image
>>> buffer = io.BytesIO()
>>> Image.new("RGB", (96, 96), (200, 120, 180)).save(buffer, "PNG")
>>> decode_body(buffer.getvalue(), "image/png")[0][0].shape
(96, 96, 3)
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from pcamflow.config import DeploySettings
from pcamflow.errors import ImageError

__all__ = [
    "ANSWER_TYPES",
    "IMAGE_TYPES",
    "JSONLINES_TYPE",
    "JSON_TYPE",
    "MAX_IMAGES",
    "MAX_IMAGE_PIXELS",
    "NPY_TYPE",
    "SUPPORTED_TYPES",
    "answer_type",
    "decode_body",
    "decode_image",
    "decode_npy",
    "encode_answer",
    "media_type",
]

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
NPY_TYPE = "application/x-npy"
SUPPORTED_TYPES = (*IMAGE_TYPES, NPY_TYPE)
JSON_TYPE = "application/json"
JSONLINES_TYPE = "application/jsonlines"
ANSWER_TYPES = (JSON_TYPE, JSONLINES_TYPE)

_DEFAULTS = DeploySettings()

MAX_IMAGE_PIXELS = _DEFAULTS.max_pixels
"""The most pixels decoded for one request by default (``deploy.max_pixels``: one image's
width x height, or all the images of a batch together)."""

MAX_IMAGES = _DEFAULTS.max_images
"""The most images in one batch-form request by default (``deploy.max_images``)."""

# Formats Pillow may open: the ones the algorithm documents (JPEG and PNG, whichever of its
# three image types labels them), BMP and WebP for the generic type (what the web page sends
# for such files), and nothing else, so a request cannot reach rarely used decoders.
_DOCUMENTED = ("JPEG", "PNG")
_FORMATS = {
    "image/jpeg": _DOCUMENTED,
    "image/png": _DOCUMENTED,
    "application/x-image": (*_DOCUMENTED, "BMP", "WEBP"),
}


def media_type(header: str | None) -> str:
    """The bare media type of a ``Content-Type`` header (``image/jpeg; q=1`` -> ``image/jpeg``)."""
    return (header or "").split(";", 1)[0].strip().lower()


def answer_type(accept: str | None) -> str:
    """The answer's media type for an ``Accept`` header: JSON unless JSON Lines is asked for.

    Raises:
        ImageError: the header accepts neither (``text/csv``, say).
    """
    wanted = [media_type(kind) for kind in (accept or "").split(",") if kind.strip()]
    if not wanted:
        return JSON_TYPE
    for kind in wanted:
        if kind in ANSWER_TYPES:
            return kind
        if kind in ("*/*", "application/*"):
            return JSON_TYPE
    raise ImageError(
        f"Accept {accept!r} is not supported; accept one of {', '.join(ANSWER_TYPES)}"
    )


def encode_answer(probabilities: np.ndarray, kind: str, batch: bool) -> bytes:
    """The answer body: a JSON list per image (a list of them for the batch form), or one
    JSON Lines record ``{"prediction": [...]}`` per image."""
    rows = np.asarray(probabilities, dtype=np.float64).tolist()
    if kind == JSONLINES_TYPE:
        return "".join(json.dumps({"prediction": row}) + "\n" for row in rows).encode()
    return json.dumps(rows if batch else rows[0]).encode()


def decode_body(
    body: bytes,
    content_type: str | None,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_images: int = MAX_IMAGES,
    min_size: tuple[int, int] = (1, 1),
) -> tuple[list[np.ndarray], bool]:
    """Decode a request body.

    Args:
        body: the request's bytes.
        content_type: its ``Content-Type`` header.
        max_pixels: the most pixels decoded (width x height, summed over a batch's images).
        max_images: the most images in the batch form.
        min_size: the smallest ``(height, width)`` accepted (the model's input).

    Returns:
        The images as uint8 (H, W, 3) arrays, and whether the body was the batch form (whose
        answer is a list of lists).

    Raises:
        ImageError: the body is empty, of an unsupported type, too large, or cannot be decoded.
    """
    kind = media_type(content_type)
    if kind not in SUPPORTED_TYPES:
        shown = f"content type {kind!r}" if kind else "no content type"
        raise ImageError(f"{shown} is not supported; send one of {', '.join(SUPPORTED_TYPES)}")
    if not body:
        raise ImageError("the request body is empty; send an image")
    if kind == NPY_TYPE:
        images = decode_npy(body, max_pixels=max_pixels, max_images=max_images, min_size=min_size)
        return images, True
    return [decode_image(body, kind, max_pixels=max_pixels, min_size=min_size)], False


def _check_size(height: int, width: int, max_pixels: int, min_size: Sequence[int]) -> None:
    if height * width > max_pixels:
        raise ImageError(
            f"the image is {width}x{height} pixels; the most decoded for one request is "
            f"{max_pixels:,} pixels (a 96x96 patch is expected)"
        )
    _check_min_size(height, width, min_size)


def _check_min_size(height: int, width: int, min_size: Sequence[int]) -> None:
    # an image smaller than the model's input would be scaled up into pixels the model never
    # saw in training: a 1x1 image got a confident answer; refuse it instead
    if height < min_size[0] or width < min_size[1]:
        raise ImageError(
            f"the image is {width}x{height} pixels, smaller than the model's "
            f"{min_size[1]}x{min_size[0]} input; send the patch at its full size"
        )


def decode_image(
    body: bytes,
    content_type: str = "application/x-image",
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_size: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Decode one JPEG/PNG image to a uint8 (H, W, 3) RGB array.

    Transparency (an alpha channel, or a transparent colour) is composited over white (a patch
    has none; a PNG with transparency is shown as a viewer shows it); grey and palette images
    become RGB.

    Raises:
        ImageError: the bytes are not a complete image of an accepted format, or the image
            is larger than ``max_pixels`` or smaller than ``min_size`` (height, width).
    """
    formats = _FORMATS.get(media_type(content_type), _FORMATS["application/x-image"])
    try:
        with warnings.catch_warnings():
            # Pillow warns past ~89 million pixels (and raises past twice that); our own,
            # lower limit is checked below, so its warning would only be noise in the log
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body), formats=formats)
            width, height = image.size  # read from the header: nothing decoded yet
            _check_size(height, width, max_pixels, min_size)
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
    # a transparent colour (PNG's tRNS chunk, in a palette, grey or RGB image) is transparency
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        image = image.convert("RGBA")
    # the modes with alpha that the decoders of the accepted formats give
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_npy(
    body: bytes,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_images: int = MAX_IMAGES,
    min_size: tuple[int, int] = (1, 1),
) -> list[np.ndarray]:
    """Decode the batch form: a ``.npy`` uint8 array (N, H, W, 3) or (H, W, 3).

    The header is checked (pickled objects, shape, image count, pixels) before the data is
    read.

    Raises:
        ImageError: the body is not such an array, or holds too many or too small images.
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
    if count < 1 or height < 1 or width < 1:
        raise ImageError(f"the .npy array's shape {tuple(shape)} holds no image")
    if count > max_images:
        raise ImageError(
            f"the .npy array holds {count:,} images; the most in one request is {max_images}"
        )
    if count * height * width > max_pixels:
        raise ImageError(
            f"the .npy array holds {count:,} images of {width}x{height}, "
            f"{count * height * width:,} pixels in all; the most decoded for one request is "
            f"{max_pixels:,} pixels"
        )
    _check_min_size(height, width, min_size)
    expected = count * height * width * 3
    data = stream.read()
    if len(data) != expected:
        raise ImageError(f"the .npy array should hold {expected} bytes of data, not {len(data)}")
    array = np.frombuffer(data, dtype=np.uint8)
    array = array.reshape(shape, order="F" if fortran else "C")
    return list(array)
