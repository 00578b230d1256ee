"""Guards for JSON that is valid but hostile: nesting too deep to process, and strings that
cannot be stored: lone UTF-16 surrogates such as "\\ud800" (legal JSON escapes, not encodable
as UTF-8) and NUL (which PostgreSQL text and jsonb refuse). Standard library only, so the
core and the edge share one rule.

Both checks are almost free for ordinary bodies: a body with few brackets cannot nest deeply,
and a body without a surrogate or NUL escape cannot hold such a string; only the rest is
walked.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class TooDeep(ValueError):
    """The body nests arrays/objects deeper than MAX_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"request body nests deeper than {MAX_DEPTH} levels")


def load(raw: bytes) -> Any:
    """json.loads with a nesting limit (raises TooDeep; ValueError for invalid JSON)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise TooDeep() from None
    if (raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and type(value) in (dict, list)
            and _depth_over(value, MAX_DEPTH - 1)):
        raise TooDeep()
    return value


def may_hold_unstorable(raw: bytes) -> bool:
    """False when the JSON text has no surrogate or NUL escape (raw UTF-8 can carry neither),
    so no string in it needs a check."""
    if b"\\u0000" in raw:
        return True
    if b"\\ud" not in raw and b"\\uD" not in raw:  # a plain substring search is fastest
        return False
    return _SURROGATE_ESCAPE.search(raw) is not None


def _depth_over(value: Any, budget: int) -> bool:
    """True when containers nest more than `budget` levels below the container value
    (recursion is bounded by the budget; exact types: json.loads makes no subclasses)."""
    for child in value.values() if type(value) is dict else value:
        kind = type(child)
        if (kind is dict or kind is list) and (budget == 0 or _depth_over(child, budget - 1)):
            return True
    return False


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
