"""The queue page's query box: `key:value` terms plus free text, parsed into a Filter. Pure."""

from __future__ import annotations

import calendar
import re
import shlex
import time
from dataclasses import replace
from typing import Any

from mailproxy.dashboard.port import STATUSES, Filter
from mailproxy.jsonsafe import storable
from mailproxy.policy import priority_text

KEYS = ("to", "from", "tenant", "account", "status", "batch", "priority", "before", "after")
_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M",
            "%Y-%m-%d")
_TEXT_FIELDS = {"to": "to", "from": "sender", "tenant": "tenant_id", "account": "account_id",
                "batch": "batch_code"}
_TERM = re.compile(r"^([a-z]+):(.*)$", re.DOTALL)


class QueryError(ValueError):
    """The query cannot be understood; the message says which term and why."""


def parse(text: str) -> Filter:
    """`status:error to:bob@x.org after:2026-01-02 invoice` -> Filter."""
    if not storable(text or ""):
        raise QueryError("the query holds a NUL or an invalid character")
    try:
        terms = shlex.split(text or "")
    except ValueError as exc:
        raise QueryError(f"unbalanced quotes ({exc})") from None
    flt = Filter()
    words: list[str] = []
    for term in terms:
        match = _TERM.match(term)
        if match is None or match.group(1) not in KEYS:
            if match is not None and match.group(1).isalpha() and match.group(2):
                raise QueryError(f"unknown key {match.group(1)!r}; use one of "
                                 + ", ".join(k + ":" for k in KEYS))
            words.append(term)
            continue
        key, value = match.group(1), match.group(2).strip()
        if not value:
            raise QueryError(f"{key}: needs a value")
        flt = _apply(flt, key, value)
    if words:
        flt = replace(flt, text=" ".join(words))
    return flt


def _apply(flt: Filter, key: str, value: str) -> Filter:
    if key == "status":
        if value.lower() not in STATUSES:
            raise QueryError(f"status: must be one of {', '.join(STATUSES)}")
        return replace(flt, status=value.lower())
    if key == "priority":
        return replace(flt, priority=_priority(value))
    if key == "before":
        return replace(flt, before=_when(key, value))
    if key == "after":
        return replace(flt, after=_when(key, value))
    texts: dict[str, Any] = {_TEXT_FIELDS[key]: value}
    return replace(flt, **texts)


def _priority(value: str) -> int:
    priority = priority_text(value)
    if priority is None:
        raise QueryError("priority: must be 0-3 or immediate, high, medium, low")
    return int(priority)


def _when(key: str, value: str) -> float:
    """A UTC date/time or Unix seconds."""
    if value.isdigit():
        return float(value)
    for fmt in _FORMATS:
        try:
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            continue
    raise QueryError(f"{key}: use YYYY-MM-DD, YYYY-MM-DDTHH:MM (UTC) or Unix seconds")


def scoped(flt: Filter, tenant_id: str | None) -> Filter:
    """The filter limited to a tenant session's own tenant (admins keep what they asked)."""
    if tenant_id is None:
        return flt
    return replace(flt, tenant_id=tenant_id)
