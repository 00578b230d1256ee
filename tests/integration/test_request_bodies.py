"""REST bodies are read once, bounded by GMP_API_MAX_BODY_BYTES, and let go once answered:
an idle keep-alive connection does not hold its last request's body."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from mailproxy.ingress.bodies import Parsed
from tests.conftest import ADMIN, Api, ApiFactory, eventually, message
from tests.relay import Relay

HEADERS = {"X-API-Token": ADMIN, "Content-Type": "application/json"}


def _alive_bodies(size: int) -> list[str]:
    """What in the process still holds a body of `size` bytes, raw or parsed."""
    gc.collect()
    found = [f"Parsed of {len(o.raw)} bytes" for o in gc.get_objects()
             if isinstance(o, Parsed) and len(o.raw) == size]
    for o in gc.get_objects():
        found.extend(f"{type(r).__name__} held by {type(o).__name__}"
                     for r in gc.get_referents(o)
                     if isinstance(r, bytes | bytearray) and len(r) == size)
    return found


async def _log(api: Api, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    url = api.client.make_url("/command-log")
    async with session.get(url, params={"endpoint_filter": "add-messages"},
                           headers=HEADERS) as resp:
        assert resp.status == 200
        commands: list[dict[str, Any]] = (await resp.json())["commands"]
        return commands


async def test_an_idle_kept_alive_connection_does_not_hold_its_last_body(
        api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    body = json.dumps({"messages": [message(i, body="x" * 2000) for i in range(200)]}
                      ).encode()
    async with api.client.post("/commands/add-messages", data=body, headers=HEADERS) as resp:
        assert resp.status == 200
        assert (await resp.json())["queued"] == 200
    size = len(body)
    del body  # the test's own copy
    # The POST's connection now sits idle in the client's pool: nothing else goes over it
    # (a next request on it would replace the request aiohttp keeps). The log is read on
    # another connection.
    async with aiohttp.ClientSession() as other:
        async def logged() -> bool:
            return bool(await _log(api, other))

        await eventually(logged)
        [entry] = await _log(api, other)
    assert len(entry["payload"]["messages"]) == 200
    assert _alive_bodies(size) == []


async def test_a_body_over_the_limit_is_a_413_with_a_reason(
        make_api: ApiFactory, relay: Relay) -> None:
    api = await make_api(api_max_body_bytes=10_000)
    await api.tenant()
    await api.account(relay)
    small = {"messages": [message(1)]}
    assert (await api.ok("POST", "/commands/add-messages", json=small))["queued"] == 1
    big = json.dumps({"messages": [message(i, body="x" * 500) for i in range(40)]})
    async with api.client.post("/commands/add-messages", data=big, headers=HEADERS) as resp:
        assert resp.status == 413
        assert (await resp.json())["detail"] == "Request body too large"
    listed = await api.ok("GET", "/messages", params={"tenant_id": "acme"})
    assert [m["id"] for m in listed["messages"]] == ["m1"]


async def test_what_follows_the_limit_is_not_logged_as_the_body(
        make_api: ApiFactory, relay: Relay) -> None:
    """A body cut off at the limit is logged as {}: the rest of the stream is never read as
    if it were the request (it could say anything)."""
    limit = 20_000
    api = await make_api(api_max_body_bytes=limit)
    await api.tenant()
    await api.account(relay)
    tail = json.dumps({"messages": [message("forged")]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield b" " * (limit + 1)
        await asyncio.sleep(0.2)
        yield tail

    async with api.client.post("/commands/add-messages", data=chunks(),
                               headers=HEADERS) as resp:
        assert resp.status == 413
    async with aiohttp.ClientSession() as other:
        async def logged() -> bool:
            return bool(await _log(api, other))

        await eventually(logged)
        [entry] = await _log(api, other)
    assert (entry["response_status"], entry["payload"]) == (413, {})
    listed = await api.ok("GET", "/messages", params={"tenant_id": "acme"})
    assert listed["messages"] == []
