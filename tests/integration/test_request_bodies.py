"""REST bodies are read once, bounded by GMP_API_MAX_BODY_BYTES, and let go once answered:
an idle keep-alive connection does not hold its last request's body."""

from __future__ import annotations

import gc
import json

from mailproxy.ingress.bodies import Parsed
from tests.conftest import Api, ApiFactory, message
from tests.relay import Relay


def _alive_bodies(size: int) -> list[object]:
    gc.collect()
    found: list[object] = [o for o in gc.get_objects() if isinstance(o, Parsed)]
    for o in gc.get_objects():
        found.extend(r for r in gc.get_referents(o)
                     if isinstance(r, bytes | bytearray) and len(r) == size)
    return found


async def test_a_kept_alive_connection_does_not_hold_its_last_body(
        api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    body = json.dumps({"messages": [message(i, body="x" * 2000) for i in range(200)]}
                      ).encode()
    async with api.client.post("/commands/add-messages", data=body,
                               headers={"X-API-Token": api.token,
                                        "Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["queued"] == 200
    size = len(body)
    del body  # the test's own copy
    # the connection stays open for the next request; the log line is written
    log = await api.ok("GET", "/command-log", params={"endpoint_filter": "add-messages"})
    assert len(log["commands"][0]["payload"]["messages"]) == 200
    assert _alive_bodies(size) == []


async def test_a_body_over_the_limit_is_a_413_with_a_reason(
        make_api: ApiFactory, relay: Relay) -> None:
    api = await make_api(api_max_body_bytes=10_000)
    await api.tenant()
    await api.account(relay)
    small = {"messages": [message(1)]}
    assert (await api.ok("POST", "/commands/add-messages", json=small))["queued"] == 1
    big = json.dumps({"messages": [message(i, body="x" * 500) for i in range(40)]})
    async with api.client.post("/commands/add-messages", data=big,
                               headers={"X-API-Token": api.token,
                                        "Content-Type": "application/json"}) as resp:
        assert resp.status == 413
        assert (await resp.json())["detail"] == "Request body too large"
    listed = await api.ok("GET", "/messages", params={"tenant_id": "acme"})
    assert [m["id"] for m in listed["messages"]] == ["m1"]
