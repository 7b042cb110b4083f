"""The Open Inference Protocol's binary tensor data extension, parsed without a server."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from service.api.binary_tensors import bytes_elements, encode_bytes, images_from_tensor, split_body, tensor_binary
from service.errors import InvalidBase64, InvalidInput
from service.pipeline import EncodedImage
from service.schemas import V2RequestInput


def _body(header: dict[str, object], tail: bytes) -> tuple[bytes, str]:
    encoded = json.dumps(header).encode()
    return encoded + tail, str(len(encoded))


def test_header_and_tail_are_split_at_the_declared_length() -> None:
    body, length = _body({"inputs": []}, b"\x01\x02\x03")
    assert split_body(body, length) == ({"inputs": []}, b"\x01\x02\x03")
    assert split_body(b'{"a": 1}', None) == ({"a": 1}, b"")


@pytest.mark.parametrize(("body", "length", "message"), [
    (b'{"a": 1}', "x", "must be an integer"),
    (b'{"a": 1}', "0", "does not fit"),
    (b'{"a": 1}', "99", "does not fit"),
    (b'{"a": 1', None, "not valid JSON"),
    (b"\xff\xfe", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
])
def test_malformed_bodies_are_invalid_input(body: bytes, length: str | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        split_body(body, length)


def test_bytes_elements_round_trip_and_refuse_truncation() -> None:
    raw = encode_bytes(["infected", "", "uninfected"])
    assert bytes_elements(raw, 3) == [b"infected", b"", b"uninfected"]
    with pytest.raises(InvalidInput, match="shape says 2"):
        bytes_elements(raw, 2)
    with pytest.raises(InvalidInput, match="truncated"):
        bytes_elements(raw + b"\x01", 4)
    with pytest.raises(InvalidInput, match="runs past"):
        bytes_elements(struct.pack("<I", 100) + b"short", 1)


def test_each_tensor_takes_its_share_of_the_tail_in_order() -> None:
    first = V2RequestInput(name="a", shape=[1], datatype="BYTES", parameters={"binary_data_size": 3})
    json_form = V2RequestInput(name="b", shape=[1], datatype="BYTES", data=["eA=="])
    assert tensor_binary(first, b"abcdef", 0) == (b"abc", 3)
    assert tensor_binary(json_form, b"abcdef", 3) == (None, 3)
    with pytest.raises(InvalidInput, match="runs past"):
        tensor_binary(first, b"ab", 0)


def test_pixel_tensors_binary_and_json() -> None:
    pixels = np.arange(2 * 8 * 9, dtype=np.uint16).reshape(2, 8, 9)
    tensor = V2RequestInput(name="image", shape=[2, 8, 9], datatype="UINT16",
                            parameters={"binary_data_size": pixels.nbytes})
    images = images_from_tensor(tensor, pixels.tobytes())
    assert len(images) == 2 and np.array_equal(np.stack(images), pixels)  # type: ignore[arg-type]
    as_json = V2RequestInput(name="image", shape=[1, 8, 9, 1], datatype="FP32", data=pixels[0].ravel().tolist())
    [image] = images_from_tensor(as_json, None)
    assert isinstance(image, np.ndarray) and image.shape == (8, 9, 1) and image.dtype == np.float32
    with pytest.raises(InvalidInput, match="does not match shape"):
        images_from_tensor(tensor, pixels.tobytes()[:-2])
    with pytest.raises(InvalidInput, match="does not fit shape"):
        images_from_tensor(V2RequestInput(name="image", shape=[1, 8, 8], datatype="FP32", data=[1.0]), None)
    with pytest.raises(InvalidInput, match="non-positive"):
        images_from_tensor(V2RequestInput(name="image", shape=[0, 8, 8], datatype="FP32"), None)
    with pytest.raises(InvalidInput, match=r"\[n, H, W\]"):
        images_from_tensor(V2RequestInput(name="image", shape=[8, 8], datatype="FP32"), None)


def test_bytes_tensors_carry_encoded_images() -> None:
    binary = V2RequestInput(name="image", shape=[2], datatype="BYTES")
    assert images_from_tensor(binary, encode_bytes(["png", "tif"])) == [EncodedImage(b"png"), EncodedImage(b"tif")]
    as_json = V2RequestInput(name="image", shape=[1], datatype="BYTES", data=[base64.b64encode(b"tiff").decode()])
    assert images_from_tensor(as_json, None) == [EncodedImage(b"tiff")]
    with pytest.raises(InvalidBase64):
        images_from_tensor(V2RequestInput(name="image", shape=[1], datatype="BYTES", data=["***"]), None)
    with pytest.raises(InvalidInput, match="one per image"):
        images_from_tensor(V2RequestInput(name="image", shape=[2], datatype="BYTES", data=["eA=="]), None)
    with pytest.raises(InvalidInput, match="shape \\[n\\]"):
        images_from_tensor(V2RequestInput(name="image", shape=[1, 2], datatype="BYTES"), None)
