"""The Open Inference Protocol's binary tensor data extension: parse and build bodies.

A body is a JSON header of `Inference-Header-Content-Length` bytes followed by raw tensor
bytes; each tensor with `parameters.binary_data_size` takes its share of the tail in order.
BYTES tensors are sequences of 4-byte little-endian lengths, each followed by its bytes.
Pure functions of bytes, so they are tested without a server.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from service.api.common import parse_json
from service.errors import InvalidInput
from service.pipeline import EncodedImage, ImageInput, decode_b64
from service.schemas import V2RequestInput

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMPY_TYPES = {"FP32": np.float32, "UINT8": np.uint8, "UINT16": np.uint16}
#: JSON numbers are ~10 bytes each: a body within the size limit holds far fewer than this.
MAX_JSON_VALUES = 64_000_000


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """JSON header and binary tail of a request body."""
    if header_length is None:
        header, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError as err:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer") from err
        if not 0 < length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
        header, tail = body[:length], body[length:]
    parsed = parse_json(header, "inference header")
    if not isinstance(parsed, dict):
        raise InvalidInput("inference header must be a JSON object")
    return parsed, tail


def tensor_binary(tensor: V2RequestInput, tail: bytes, offset: int) -> tuple[bytes | None, int]:
    """The tensor's share of the binary tail (None when it travels as JSON), and the next offset."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None, offset
    if not isinstance(size, int) or size < 0 or offset + size > len(tail):
        raise InvalidInput(f"binary_data_size {size} runs past the {len(tail)} bytes of binary data")
    return tail[offset:offset + size], offset + size


def bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """Split a binary BYTES tensor into its `count` elements."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput("truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput("BYTES element runs past the binary data")
        elements.append(raw[offset:offset + size])
        offset += size
    if len(elements) != count:
        raise InvalidInput(f"BYTES tensor holds {len(elements)} elements, shape says {count}")
    return elements


def encode_bytes(values: list[str]) -> bytes:
    """A BYTES tensor of strings in binary form."""
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def images_from_tensor(tensor: V2RequestInput, binary: bytes | None) -> list[ImageInput]:
    """An input tensor as images: BYTES [n] of encoded images, or pixels [n, H, W(, C)]."""
    shape = tensor.shape
    if any(side <= 0 for side in shape):
        raise InvalidInput(f"shape {shape} has a non-positive dimension")
    if tensor.datatype == "BYTES":
        if len(shape) != 1:
            raise InvalidInput(f"a BYTES input holds encoded images, shape [n]; got {shape}")
        if binary is not None:
            encoded = bytes_elements(binary, shape[0])
        else:
            if not isinstance(tensor.data, list) or len(tensor.data) != shape[0]:
                raise InvalidInput("BYTES data must be a list of base64 strings, one per image")
            encoded = [decode_b64(item, f"BYTES element {i} (JSON form: base64 images)")
                       for i, item in enumerate(tensor.data)]
        return [EncodedImage(data) for data in encoded]
    if len(shape) not in (3, 4):
        raise InvalidInput(f"pixel inputs have shape [n, H, W] or [n, H, W, C]; got {shape}")
    dtype = NUMPY_TYPES[tensor.datatype]
    expected = math.prod(shape)  # exact: numpy's int64 product wraps around for absurd shapes
    if binary is not None:
        if len(binary) != expected * np.dtype(dtype).itemsize:
            raise InvalidInput(f"binary_data_size {len(binary)} does not match shape {shape} of {tensor.datatype}")
        pixels = np.frombuffer(binary, dtype=dtype).reshape(shape)
    else:
        if not isinstance(tensor.data, list) or expected > MAX_JSON_VALUES:
            raise InvalidInput(f"JSON data for shape {shape} must be a list of at most {MAX_JSON_VALUES} numbers")
        try:
            pixels = np.asarray(tensor.data, dtype=dtype).reshape(shape)
        except (ValueError, TypeError) as err:
            raise InvalidInput(f"data does not fit shape {shape} of {tensor.datatype}: {err}") from err
    return list(pixels)
