"""JSON from strangers, parsed with a bound on nesting; free of Django, so the API's parser and the provider
protocol share it.

Python's parser recurses once per level of arrays and objects. Its guard is the interpreter's recursion limit,
and a dependency of the chain bridge (py_ecc) raises that to 100,000 for the whole process: JSON nested that deep
then overflows the C stack and kills the server, where elsewhere it is a RecursionError. So the depth is measured
before parsing, without recursion: strings dropped (a bracket inside one is text), then a running sum of the
brackets left, in numpy (a few milliseconds for megabytes)."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 32

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


class TooDeep(ValueError):
    """JSON whose arrays and objects nest deeper than allowed."""


def nesting(raw: bytes | str) -> int:
    """How deep arrays and objects nest in a JSON text (an unterminated string's brackets count: a malformed text
    may read deeper than it is, never shallower)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= 1:
        return data.count(b"[") + data.count(b"{")
    codes = np.frombuffer(_STRING.sub(b"", data), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` for untrusted text: TooDeep past `max_depth` levels, ValueError for anything else that is not
    strict JSON (NaN and Infinity included)."""
    if nesting(raw) > max_depth:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")
    return json.loads(raw, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
