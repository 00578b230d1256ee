"""Guards for JSON that is valid but hostile: nesting too deep to process, and strings that
cannot be stored: lone UTF-16 surrogates such as "\\ud800" (legal JSON escapes, not encodable
as UTF-8) and NUL (which PostgreSQL text and jsonb refuse). Also the JSON codec of bodies and
stored rows, so the core and the edge share one rule.

Bodies are parsed by orjson (twice as fast on a 1000-message body) whenever its value is
certainly the standard library's: orjson accepted the text and the value holds no float
(orjson reads an integer beyond 64 bits as one). Any other body, every invalid one among
them, is parsed by the standard library, whose values and errors are the reference: exact for
integers of any size, refusing NaN and infinities, which JSON does not have and jsonb cannot
store, with the error messages clients have seen. One difference, found by a differential
fuzz: a body whose only nesting beyond the limit sits in a value that a later duplicate key
replaces is read, as such bodies always were below ~1,000 levels, up to orjson's 1,024; the
standard library's recursion error at ~1,000 read as "too deep".

Stored text is written by orjson, an order of magnitude faster at encoding a message, with
the standard library behind it for what orjson refuses (integers beyond 64 bits, lone
surrogates, non-string keys): the same JSON values either way.

Both checks are almost free for ordinary bodies: a short body cannot nest deeply, and a body
without a surrogate or NUL escape cannot hold such a string; only the rest is walked.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_DEPTH = 64
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


class TooDeep(ValueError):
    """The body nests arrays/objects deeper than MAX_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"request body nests deeper than {MAX_DEPTH} levels")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_INF = float("inf")


def _finite(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def load(raw: bytes) -> Any:
    """A request body's value, with a nesting limit (raises TooDeep; ValueError for invalid
    JSON and for numbers no JSON reader can hold: NaN, Infinity, 1e400)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _load_exact(raw)
    kind = type(value)
    if kind is float:
        return _load_exact(raw)
    if kind is dict or kind is list:
        found = _scan(value, MAX_DEPTH - 1)
        if found is _FLOAT:
            return _load_exact(raw)
        if found is _DEEP:
            raise TooDeep()
    return value


def _load_exact(raw: bytes) -> Any:
    """load() by the standard library."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise TooDeep() from None
    # deeper than MAX_DEPTH takes more than 2 * MAX_DEPTH bytes
    if (len(raw) > 2 * MAX_DEPTH and type(value) in (dict, list)
            and _scan(value, MAX_DEPTH - 1) is _DEEP):
        raise TooDeep()
    return value


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept as is (the stored form of payloads and records)."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError: big integers, lone surrogates, odd keys
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def may_hold_unstorable(raw: bytes) -> bool:
    """False when the JSON text has no surrogate or NUL escape (raw UTF-8 can carry neither),
    so no string in it needs a check."""
    if b"\\" not in raw:  # no escape at all: one memchr, the common case
        return False
    return _UNSTORABLE_ESCAPE.search(raw) is not None


_DEEP = "deep"
_FLOAT = "float"


def _scan(value: Any, budget: int) -> str | None:
    """_DEEP when containers nest more than `budget` levels below the container value, else
    _FLOAT when a float is in it, else None; a nesting too deep found first ends the walk
    (recursion is bounded by the budget; exact types: neither parser makes subclasses)."""
    found = None
    for child in value.values() if type(value) is dict else value:
        kind = type(child)
        if kind is dict or kind is list:
            if budget == 0:
                return _DEEP
            below = _scan(child, budget - 1)
            if below is _DEEP:
                return _DEEP
            found = found or below
        elif kind is float:
            found = _FLOAT
    return found


def storable(text: str) -> bool:
    """True unless the string holds a NUL or a lone surrogate (which UTF-8 cannot encode)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unstorable_path(value: Any) -> tuple[str | int, ...] | None:
    """Where the first string (or object key) that cannot be stored is, or None."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if not storable(key):
                    return (*path, scrub(key))
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, i), child) for i, child in enumerate(item))
    return None


def describe(path: tuple[str | int, ...]) -> str:
    """A field path as a client reads it: messages[1].subject."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "body"


def scrub(value: Any) -> Any:
    """The value with every NUL and lone surrogate replaced by U+FFFD (for logs, and for text
    read from outside that must be stored whatever it holds)."""
    if isinstance(value, str):
        if storable(value):
            return value
        return (value.replace("\x00", "\ufffd").encode("utf-8", "surrogatepass")
                .decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value
