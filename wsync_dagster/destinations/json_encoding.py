"""Compact JSON bytes for request bodies, through one reused C encoder (a body is encoded per item)."""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder
from typing import Any

import pydantic_core

# json.dumps builds a new encoder on every call with non-default separators, about half the cost of
# encoding a small item; the C encoder it builds can be kept and reused.
_CONTAINERS = frozenset({dict, list, tuple})
_STDLIB = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str, check_circular=False)
_C_ENCODE: Callable[[Any, int], list[str]] | None = (
    encoder.c_make_encoder(None, str, encoder.encode_basestring, None, ":", ",", False, False, True)
    if encoder.c_make_encoder is not None
    else None
)


def compact_json(value: Any) -> bytes:
    """The value as compact UTF-8 JSON; what JSON does not know travels as its str()."""
    return json_text(value).encode()


def native_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of a value made of JSON's own types (what json.loads gives), by pydantic_core's
    Rust encoder: a third of the stdlib's time a small object. Numbers may be written otherwise than the
    stdlib writes them (1e-05 as 0.00001), never with another value; what pydantic_core does not know travels
    as its str()."""
    return pydantic_core.to_json(value, fallback=str)


def json_string(text: str) -> str:
    """A str as a JSON string literal, quotes included (json's own C escaping)."""
    return encoder.encode_basestring(text)


def json_text(value: Any) -> str:
    """The value as compact JSON text, for a body assembled around it."""
    if _C_ENCODE is not None and type(value) in _CONTAINERS:  # the C encoder takes containers only
        return "".join(_C_ENCODE(value, 0))
    return _STDLIB.encode(value)
