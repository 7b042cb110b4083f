"""Responses serialised with orjson: the JSON encoder was a measurable share of a small
model's request (issue 13's profile). Parsing stays with the standard library, which reads the
NaN and Infinity literals clients send so that they get a clear 422 rather than a parse error."""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson's encoder (keys in insertion order, as before)."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(obj, option=_OPTIONS).decode()
        except TypeError:
            return super().dumps(obj, **kwargs)  # types orjson does not know (rare): the default
