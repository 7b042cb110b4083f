"""Property-based tests: whatever JSON or bytes a client sends, the answer is never a 5xx and
the parsers raise only the service's own 4xx errors (hypothesis, bounded for `make test`)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import create_app
from service.api.binary_tensors import bytes_elements, images_from_tensor, split_body, tensor_binary
from service.config import Settings
from service.errors import ServiceError
from service.schemas import V2RequestInput
from tests.fakes import FakeBackend

_SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                               max_size=4), max_leaves=20)
_KEYS = st.sampled_from(["instances", "inputs", "b64", "signature_name", "name", "shape", "datatype", "data",
                         "parameters", "binary_data_size", "outputs", "id", "well", "plate", "site"])
_SHAPED = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
                       max_leaves=25)
_BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    app = create_app(Settings(model_name="fake", warmup=False, request_timeout_s=5), FakeBackend())
    assert app.extensions["serving"].wait_ready(5)
    yield app
    app.extensions["serving"].close()


@pytest.mark.parametrize("path", ["/predict", "/v1/models/fake:predict", "/v2/models/fake/infer"])
@_BOUNDED
@given(body=_JSON | _SHAPED)
def test_no_json_body_gets_a_5xx(app: Flask, path: str, body: object) -> None:
    response = app.test_client().post(path, data=json.dumps(body), content_type="application/json")
    assert response.status_code < 500, (path, body, response.get_data(as_text=True)[:300])


@_BOUNDED
@given(header=_SHAPED, tail=st.binary(max_size=64), declared=st.none() | st.integers(-5, 200).map(str))
def test_the_binary_tensor_parser_raises_only_service_errors(header: object, tail: bytes, declared: str | None) -> None:
    encoded = json.dumps(header).encode()
    try:
        parsed, rest = split_body(encoded + tail, declared)
        inputs = parsed.get("inputs")
        # The route validates the whole request first: a non-list `inputs` is a 422 there.
        for item in inputs if isinstance(inputs, list) else []:
            tensor = V2RequestInput.model_validate(item)
            binary, _ = tensor_binary(tensor, rest, 0)
            images_from_tensor(tensor, binary)
    except ServiceError as err:
        assert 400 <= err.status_code < 500
    except ValueError:
        pass  # pydantic's ValidationError (a ValueError): 422 through the error handlers


@_BOUNDED
@given(raw=st.binary(max_size=64), count=st.integers(0, 8))
def test_bytes_elements_never_crash(raw: bytes, count: int) -> None:
    try:
        elements = bytes_elements(raw, count)
    except ServiceError as err:
        assert err.status_code == 400
    else:
        assert len(elements) == count
