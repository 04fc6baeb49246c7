"""Request bodies, answers and the API key, checked function by function (no server).

The contract is the built-in algorithm's (AWS, "Image Classification - MXNet", inference:
JPEG/PNG under image/jpeg, image/png or application/x-image; answers as a JSON list or JSON
Lines records) plus the .npy batch form (NumPy's format: "A Simple File Format for NumPy
Arrays", header versions 1.0 and 2.0, C or Fortran order).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from _endpoint import encode, npy, patch
from PIL import Image
from starlette.requests import Request

from pcamflow.errors import ImageError
from pcamflow.local.serving.guards import ApiError, api_key_check
from pcamflow.local.serving.payloads import (
    answer_type,
    decode_body,
    decode_image,
    decode_npy,
    encode_answer,
    media_type,
)


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(ImageError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_media_types_and_answer_types() -> None:
    assert media_type(" Image/JPEG ; q=0.9") == "image/jpeg"
    assert media_type(None) == "" and media_type("") == ""
    assert answer_type(None) == answer_type("") == "application/json"
    assert answer_type("text/html, application/jsonlines") == "application/jsonlines"
    assert answer_type("text/html,application/jsonlines") == "application/jsonlines"
    assert answer_type("application/jsonlines;q=1, application/json") == "application/jsonlines"
    assert answer_type("*/*") == answer_type("application/*") == "application/json"
    assert answer_type(" , application/json") == "application/json"
    assert _message(answer_type, "text/csv") == (
        "Accept 'text/csv' is not supported; accept one of application/json, "
        "application/jsonlines")


def test_answers_are_json_lists_or_jsonlines_records() -> None:
    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)
    assert json.loads(encode_answer(probabilities, "application/json", batch=True)) == [
        [0.25, 0.75], [1.0, 0.0]]
    assert json.loads(encode_answer(probabilities[:1], "application/json", batch=False)) == [
        0.25, 0.75]
    assert encode_answer(np.array([[0, 1]]), "application/json", batch=True) == b"[[0.0, 1.0]]"
    assert encode_answer(probabilities, "application/jsonlines", batch=True) == (
        b'{"prediction": [0.25, 0.75]}\n{"prediction": [1.0, 0.0]}\n')


def test_a_body_is_decoded_by_its_type() -> None:
    image = patch(2)
    images, batch = decode_body(encode(image, "PNG"), "image/png; charset=x")
    assert not batch and len(images) == 1 and np.array_equal(images[0], image)
    images, batch = decode_body(npy(np.stack([image, image])), "application/x-npy")
    assert batch and len(images) == 2 and np.array_equal(images[1], image)
    assert _message(decode_body, b"x", "text/plain") == (
        "content type 'text/plain' is not supported; send one of image/jpeg, image/png, "
        "application/x-image, application/x-npy")
    assert _message(decode_body, b"x", None).startswith("no content type is not supported")
    assert _message(decode_body, b"", "image/png") == "the request body is empty; send an image"


def test_sizes_are_checked_from_the_header() -> None:
    body = encode(patch(0, size=40), "PNG")
    assert _message(decode_image, body, "image/png", max_pixels=1599) == (
        "the image is 40x40 pixels; the most decoded for one request is 1,599 pixels "
        "(a 96x96 patch is expected)")
    assert decode_image(body, "image/png", max_pixels=1600).shape == (40, 40, 3)
    assert _message(decode_image, body, "image/png", min_size=(41, 10)) == (
        "the image is 40x40 pixels, smaller than the model's 10x41 input; send the patch at its "
        "full size")
    assert _message(decode_image, body, "image/png", min_size=(10, 41)).startswith(
        "the image is 40x40 pixels, smaller than the model's 41x10 input")
    assert decode_image(body, "image/png", min_size=(40, 40)).shape == (40, 40, 3)


def test_formats_are_those_of_the_type() -> None:
    bmp = encode(patch(0, size=8), "BMP")
    assert decode_image(bmp, "application/x-image").shape == (8, 8, 3)
    assert decode_image(bmp).shape == (8, 8, 3)  # the generic type by default
    assert _message(decode_image, bmp, "image/png") == (
        "the body is not a JPEG or PNG image that can be decoded")
    truncated = encode(patch(0), "PNG")[:300]
    assert _message(decode_image, truncated, "image/png").startswith(
        "the image cannot be decoded: ")


def test_grey_palette_and_transparent_images_become_rgb() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    decoded = decode_image(encode(grey, "PNG"), "image/png")
    assert decoded.shape == (8, 8, 3) and np.array_equal(decoded[..., 1], grey)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent: white
    decoded = decode_image(encode(rgba, "PNG"), "image/png")
    assert decoded[0, 0].tolist() == [200, 0, 0] and decoded[1, 1].tolist() == [255, 255, 255]
    half = np.zeros((2, 2, 2), dtype=np.uint8)
    half[..., 1] = 128  # grey 0 at half opacity over white
    assert decode_image(encode(half, "PNG"), "image/png")[0, 0].tolist() == [127, 127, 127]
    palette = Image.new("P", (3, 3), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((2, 2), 0)  # the transparent entry
    decoded = decode_image(_png(palette, transparency=0), "image/png")
    assert decoded[0, 0].tolist() == [10, 20, 30] and decoded[2, 2].tolist() == [255] * 3
    # a transparent colour of a grey or RGB PNG (its tRNS chunk) is transparency too
    grey = Image.fromarray(np.array([[7, 8], [8, 9]], dtype=np.uint8))
    decoded = decode_image(_png(grey, transparency=8), "image/png")
    assert decoded[..., 0].tolist() == [[7, 255], [255, 9]]
    rgb = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8))
    decoded = decode_image(_png(rgb, transparency=(4, 5, 6)), "image/png")
    assert decoded.tolist() == [[[1, 2, 3], [255, 255, 255]]]
    assert decode_image(_png(rgb), "image/png").tolist() == [[[1, 2, 3], [4, 5, 6]]]


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is of that size: its signature, IHDR (8-bit RGB), an IDAT with
    no pixels in it, IEND. Opening it reads the size; decoding would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_an_image_pillow_itself_will_not_open_is_too_large() -> None:
    # 20,000 x 20,000 is over Pillow's own limit (twice Image.MAX_IMAGE_PIXELS); with our
    # limit raised above it, Pillow's refusal is the one that answers
    message = _message(decode_image, _png_header(20_000, 20_000), "image/png",
                       max_pixels=10**9)
    assert message.startswith("the image is too large to decode: ")
    assert "400000000 pixels" in message


def test_the_body_is_decoded_with_its_limits_and_its_type() -> None:
    images = np.zeros((3, 4, 5, 3), dtype=np.uint8)
    assert _message(decode_body, npy(images), "application/x-npy", max_images=2) == (
        "the .npy array holds 3 images; the most in one request is 2")
    assert _message(decode_body, npy(images), "application/x-npy", max_pixels=59).endswith(
        "60 pixels in all; the most decoded for one request is 59 pixels")
    assert _message(decode_body, npy(images), "application/x-npy", min_size=(5, 5)).startswith(
        "the image is 5x4 pixels, smaller than the model's 5x5 input")
    png = encode(patch(0, size=8), "PNG")
    assert _message(decode_body, png, "image/png", max_pixels=63).startswith(
        "the image is 8x8 pixels; the most decoded for one request is 63 pixels")
    assert _message(decode_body, png, "image/png", min_size=(9, 9)).startswith(
        "the image is 8x8 pixels, smaller than the model's 9x9 input")
    bmp = encode(patch(0, size=8), "BMP")
    assert _message(decode_body, bmp, "image/png") == (
        "the body is not a JPEG or PNG image that can be decoded")
    images, batch = decode_body(bmp, "application/x-image")
    assert not batch and images[0].shape == (8, 8, 3)


def test_an_unknown_type_decodes_as_the_generic_image_type() -> None:
    bmp = encode(patch(0, size=8), "BMP")
    assert decode_image(bmp, "text/plain").shape == (8, 8, 3)
    gif = encode(patch(0, size=8), "GIF")  # a format no accepted type names
    assert _message(decode_image, gif, "text/plain").startswith("the body is not ")
    assert _message(decode_image, gif).startswith("the body is not ")


def test_media_types_keep_only_what_comes_before_the_first_parameter() -> None:
    assert media_type("image/png; a=1; b=2") == "image/png"
    assert media_type("image/png;a=1;b=2") == "image/png"


def _npy_v2(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(2, 0))
    return buffer.getvalue()


def test_the_batch_form_takes_c_and_fortran_order_and_both_header_versions() -> None:
    images = np.stack([patch(seed, size=16) for seed in range(3)])
    for body in (npy(images), npy(np.asfortranarray(images)), _npy_v2(images)):
        decoded = decode_npy(body)
        assert len(decoded) == 3
        assert all(np.array_equal(a, b) for a, b in zip(decoded, images, strict=True))
    one = decode_npy(npy(images[0]))
    assert len(one) == 1 and np.array_equal(one[0], images[0])
    # one pixel high or wide is an image (the server's min_size refuses it, not the format)
    assert len(decode_npy(npy(np.zeros((2, 1, 3, 3), dtype=np.uint8)))) == 2
    assert len(decode_npy(npy(np.zeros((2, 3, 1, 3), dtype=np.uint8)))) == 2


def test_the_batch_form_is_checked_before_reading_the_data() -> None:
    images = np.zeros((3, 4, 5, 3), dtype=np.uint8)
    assert _message(decode_npy, b"not npy").startswith("the body is not a .npy array: ")
    assert _message(decode_npy, npy(images.astype(np.float32))) == (
        "the .npy array is float32 of shape (3, 4, 5, 3); expected uint8 of shape "
        "(N, height, width, 3) or (height, width, 3)")
    assert _message(decode_npy, npy(images[..., :1])).startswith(
        "the .npy array is uint8 of shape (3, 4, 5, 1);")
    assert _message(decode_npy, npy(images[0, 0])).startswith(
        "the .npy array is uint8 of shape (5, 3);")
    assert _message(decode_npy, npy(images[:0])) == (
        "the .npy array's shape (0, 4, 5, 3) holds no image")
    assert _message(decode_npy, npy(images[:, :0])) == (
        "the .npy array's shape (3, 0, 5, 3) holds no image")
    assert _message(decode_npy, npy(images[:, :, :0])).endswith("holds no image")
    assert _message(decode_npy, npy(images), max_images=2) == (
        "the .npy array holds 3 images; the most in one request is 2")
    assert len(decode_npy(npy(images), max_images=3)) == 3
    assert _message(decode_npy, npy(images), max_pixels=59) == (
        "the .npy array holds 3 images of 5x4, 60 pixels in all; the most decoded for one "
        "request is 59 pixels")
    assert len(decode_npy(npy(images), max_pixels=60)) == 3
    assert _message(decode_npy, npy(images), min_size=(5, 5)).startswith(
        "the image is 5x4 pixels, smaller than the model's 5x5 input")
    assert _message(decode_npy, npy(images)[:-1]) == (
        "the .npy array should hold 180 bytes of data, not 179")


def _request(*headers: tuple[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    return Request({"type": "http", "method": "POST", "path": "/invocations", "headers": raw})


def _denied(check, request: Request) -> str:
    with pytest.raises(ApiError) as caught:
        asyncio.run(check(request))
    assert (caught.value.status, caught.value.error_type) == (401, "AccessDeniedException")
    return caught.value.message


def test_the_api_key_is_taken_from_each_documented_header() -> None:
    check = api_key_check("s3cret")
    basic = base64.b64encode(b"anyone:s3cret").decode()
    for headers in ([("X-Api-Key", "s3cret")], [("Authorization", "Bearer  s3cret ")],
                    [("Authorization", "bearer s3cret")], [("Authorization", f"Basic {basic}")],
                    [("Authorization", f"BASIC {basic}")]):
        assert asyncio.run(check(_request(*headers))) is None, headers
    # Basic: the key is all that follows the first colon (RFC 7617: the user id has none)
    colon = api_key_check("pa:ss")
    basic = base64.b64encode(b"user:pa:ss").decode()
    assert asyncio.run(colon(_request(("Authorization", f"Basic {basic}")))) is None
    assert asyncio.run(api_key_check(None)(_request())) is None  # no key: no check
    assert asyncio.run(api_key_check("")(_request())) is None


def test_a_missing_or_wrong_key_is_refused() -> None:
    check = api_key_check("s3cret")
    missing = ("this endpoint needs an API key: send it as the X-Api-Key header "
               "(or Authorization: Bearer KEY)")
    assert _denied(check, _request()) == missing
    assert _denied(check, _request(("Authorization", "AWS4-HMAC-SHA256 Credential=x"))) == missing
    assert _denied(check, _request(("Authorization", "Basic not-base64!"))) == missing
    # base64 with a character outside its alphabet is refused, not decoded around it
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert _denied(check, _request(("Authorization", f"Basic {basic[:4]}!{basic[4:]}"))) == missing
    wrong = "the API key is wrong"
    assert _denied(check, _request(("X-Api-Key", "s3cre"))) == wrong
    assert _denied(check, _request(("X-Api-Key", ""))) == wrong
    # the header wins over Authorization
    both = _request(("X-Api-Key", "no"), ("Authorization", "Bearer s3cret"))
    assert _denied(check, both) == wrong
    basic = base64.b64encode(b"s3cret:nope").decode()  # the key is the password, not the user
    assert _denied(check, _request(("Authorization", f"Basic {basic}"))) == wrong
