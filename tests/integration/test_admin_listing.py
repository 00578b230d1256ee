"""`GET /messages` without tenant_id: the admin lists every tenant, keyset-paginated; a
tenant token still gets the contract's 422 (it may only name its own tenant)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, message
from tests.relay import Relay


async def _two_tenants(api: Api, relay: Relay) -> str:
    acme = await api.tenant("acme")
    await api.tenant("beta", name="Beta Ltd")
    await api.account(relay, "acme", "main")
    await api.account(relay, "beta", "b")
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "beta"})
    for i in range(1, 6):
        await api.send(message(f"a{i}"))
        await api.send(message(f"b{i}", tenant_id="beta", account_id="b"))
    return acme


async def test_the_admin_lists_every_tenant_page_by_page(api: Api, relay: Relay) -> None:
    await _two_tenants(api, relay)
    body = await api.ok("GET", "/messages")
    ids = [m["id"] for m in body["messages"]]
    assert ids == ["mb5", "ma5", "mb4", "ma4", "mb3", "ma3", "mb2", "ma2", "mb1", "ma1"]
    assert body["next_cursor"] is None
    names = {m["tenant_id"]: m["tenant_name"] for m in body["messages"]}
    assert names == {"acme": "acme", "beta": "Beta Ltd"}
    assert all(m["suspended"] for m in body["messages"])  # each record in its tenant's light

    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        page = await api.ok("GET", "/messages", params=params)
        pages.append([m["id"] for m in page["messages"]])
        if page["next_cursor"] is None:
            break
        params = {"limit": 4, "cursor": page["next_cursor"]}
    assert pages == [ids[0:4], ids[4:8], ids[8:10]]

    filtered = await api.ok("GET", "/messages", params={"status": "pending", "limit": 3,
                                                         "include_history": "true"})
    assert [m["id"] for m in filtered["messages"]] == ids[:3]
    assert all(m["history"] == [] for m in filtered["messages"])


async def test_a_tenant_token_still_needs_tenant_id(api: Api, relay: Relay) -> None:
    acme = await _two_tenants(api, relay)
    status, body = await api.as_token(acme).call("GET", "/messages", params={"cursor": "1"})
    assert status == 422
    assert body["detail"] == [{"loc": ["query", "tenant_id"], "msg": "Field required",
                               "type": "missing"}]
    mine = await api.as_token(acme).ok("GET", "/messages", params={"tenant_id": "acme"})
    assert {m["tenant_id"] for m in mine["messages"]} == {"acme"}
    assert "next_cursor" not in mine


async def test_offset_without_tenant_id_says_to_use_the_cursor(api: Api) -> None:
    status, body = await api.call("GET", "/messages", params={"offset": "10"})
    assert status == 422
    assert "page with cursor" in body["detail"][0]["msg"]
    status, body = await api.call("GET", "/messages", params={"cursor": "x"})
    assert status == 422 and body["detail"][0]["loc"] == ["query", "cursor"]
