"""REST request bodies, parsed once per request through mailproxy.jsonsafe (the one parser of
every body: nesting limit, unstorable-text checks), for the views and the command log."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailproxy import jsonsafe

EMPTY = object()  # the value of an empty body
TOO_LARGE = object()  # the value of a body cut off at client_max_size (a 413)


class Parsed:
    """The body's value, or the ValueError parsing raised (jsonsafe.TooDeep among them);
    `raw` for the cheap pre-check of unstorable text."""

    __slots__ = ("raw", "value")

    def __init__(self, raw: bytes, value: Any) -> None:
        self.raw = raw
        self.value = value


PARSED = web.RequestKey("parsed_body", Parsed)


async def parsed(request: web.Request) -> Parsed:
    cached: Parsed | None = request.get(PARSED)
    if cached is None:
        try:
            cached = request[PARSED] = await _parse(request)
        except web.HTTPRequestEntityTooLarge:
            # Remembered: a second reader (the command log) must not take what is left of
            # the stream for the body.
            request[PARSED] = Parsed(b"", TOO_LARGE)
            raise
    if cached.value is TOO_LARGE:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size)
    return cached


async def _parse(request: web.Request) -> Parsed:
    raw = await _read(request)
    value: Any = EMPTY
    if raw.strip():
        try:
            value = jsonsafe.load(raw)
        except (ValueError, UnicodeDecodeError) as exc:  # TooDeep is a ValueError
            value = exc if isinstance(exc, jsonsafe.TooDeep) else ValueError(str(exc))
    return Parsed(raw, value)


async def _read(request: web.Request) -> bytes:
    """The whole body, within the app's client_max_size, as request.read() would give it
    but not kept on the request: forget() can then let it go once the request is done."""
    limit = request.client_max_size
    body = bytearray()
    while chunk := await request.content.readany():
        body.extend(chunk)
        if limit and len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(limit, len(body))
    return bytes(body)


def forget(request: web.Request) -> None:
    """Drop the parsed body once the request is answered and logged. aiohttp's connection
    handler keeps a keep-alive connection's last request until the next one comes (up to
    the keep-alive timeout, 75 s): without this, every idle connection whose last call was
    a 1000-message add-messages held its body twice over, raw and parsed (~5 MB)."""
    request.pop(PARSED, None)


def unstorable_param(request: web.Request) -> tuple[str, str] | None:
    """("path" or "query", name) of the first parameter holding a NUL or lone surrogate."""
    for where, params in (("path", request.match_info), ("query", request.query)):
        for name, value in params.items():
            if not jsonsafe.storable(value):
                return where, name
    return None


def unstorable_reason(path: tuple[str | int, ...]) -> str:
    return (f"invalid {jsonsafe.describe(path)}: text holds a NUL or a lone surrogate "
            "(\\ud800-\\udfff), which cannot be stored")


def unstorable_items(messages: list[Any]) -> dict[int, str]:
    """Per message: the reason it cannot be stored (a NUL or lone surrogate in a field)."""
    refused = {}
    for index, item in enumerate(messages):
        path = jsonsafe.unstorable_path(item)
        if path is not None:
            refused[index] = unstorable_reason(path)
    return refused


async def logged_payload(request: web.Request) -> Any:
    """The body as the command log records it: always storable (scrubbed), {} when it is
    not JSON or too deep, query parameters merged in."""
    try:
        body_of = await parsed(request)
    except web.HTTPException:
        return {}
    body = body_of.value
    if body is EMPTY or isinstance(body, ValueError):
        body = {}  # too deep or not JSON: the call is recorded, its body is not
    elif jsonsafe.may_hold_unstorable(body_of.raw):
        body = jsonsafe.scrub(body)
    if isinstance(body, dict) and request.query:
        return {**jsonsafe.scrub(dict(request.query)), **body}
    return body
