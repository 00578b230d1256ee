"""Every route x every kind of token gives the contract's status (§2.2, §1) and no tenant
ever sees another's data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Api, message
from tests.relay import Relay

ADMIN, OWN, OTHER, BAD, NONE = "admin", "own", "other", "bad", "none"
KINDS = (ADMIN, OWN, OTHER, BAD, NONE)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    level: str  # public / auth / tenant / admin
    body: Any = None
    params: dict[str, str] | None = None
    other_status: int | None = None  # a valid token of another tenant, when not 403


ACME = {"tenant_id": "acme"}
ROUTES = (
    Route("GET", "/health", "public"),
    Route("GET", "/status", "auth"),
    Route("POST", "/commands/add-messages", "auth", {"messages": [message("iso")]},
          other_status=400),
    Route("POST", "/commands/run-now", "auth"),
    Route("POST", "/commands/run-now", "tenant", params=ACME),
    Route("POST", "/commands/suspend", "tenant", params=ACME),
    Route("POST", "/commands/activate", "tenant", params=ACME),
    Route("POST", "/commands/delete-messages", "tenant", {"ids": ["nope"]}, ACME),
    Route("POST", "/commands/cleanup-messages", "tenant", params=ACME),
    Route("GET", "/messages", "tenant", params=ACME),
    Route("POST", "/account", "tenant", {"id": "tmp", "tenant_id": "acme", "host": "127.0.0.1",
                                         "port": 25}),
    Route("GET", "/accounts", "tenant", params=ACME),
    Route("DELETE", "/account/tmp", "tenant", params=ACME),
    Route("POST", "/tenant", "admin", {"id": "scratch"}),
    Route("GET", "/tenants", "admin"),
    Route("GET", "/tenants/sync-status", "admin"),
    Route("GET", "/tenant/acme", "tenant"),
    Route("PUT", "/tenant/acme", "tenant", {"name": "Acme"}),
    Route("DELETE", "/tenant/scratch", "admin"),
    Route("POST", "/tenant/scratch/api-key", "admin"),
    Route("DELETE", "/tenant/scratch/api-key", "admin"),
    Route("GET", "/instance", "admin"),
    Route("PUT", "/instance", "admin", {"name": "prod"}),
    Route("POST", "/instance/reload-bounce", "admin"),
    Route("GET", "/command-log", "admin"),
    Route("GET", "/command-log/export", "admin"),
)


def expected(route: Route, kind: str) -> int:
    if route.level == "public":
        return 200
    if kind in (BAD, NONE):
        return 401
    if kind == ADMIN:
        return 200
    if route.level == "auth":
        return route.other_status or 200 if kind == OTHER else 200
    if route.level == "admin":
        return 403
    return 200 if kind == OWN else 403


@pytest.fixture
async def world(api: Api, relay: Relay) -> dict[str, Api]:
    """Two tenants with an account and a message each; one Api per kind of token."""
    own = await api.tenant("acme", name="Acme")
    other = await api.tenant("other", name="Other")
    for tenant in ("acme", "other"):
        await api.account(relay, tenant_id=tenant)
        await api.send(message(f"{tenant}-1", tenant_id=tenant))
    await relay.wait_for(2)
    return {ADMIN: api, OWN: api.as_token(own), OTHER: api.as_token(other),
            BAD: api.as_token("not-a-token"), NONE: api.as_token(None)}


async def _prepare(admin: Api, route: Route) -> None:
    """Recreate what a destructive route removes, so every token meets the same state."""
    if "scratch" in route.path:
        await admin.ok("POST", "/tenant", json={"id": "scratch"})
    if route.path == "/account/tmp":
        await admin.ok("POST", "/account", json={"id": "tmp", "tenant_id": "acme",
                                                 "host": "127.0.0.1", "port": 25})


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path} {r.params or ''}")
async def test_route_status_for_every_token(world: dict[str, Api], route: Route) -> None:
    for kind in KINDS:
        await _prepare(world[ADMIN], route)
        status, body = await world[kind].call(route.method, route.path, json=route.body,
                                              params=route.params)
        assert status == expected(route, kind), (kind, status, body)
        if status == 401:
            assert body == {"detail": "Invalid or missing API token"}
        if status == 403:
            assert body["detail"] in ("Admin token required",
                                      "Token not authorized for this tenant")
        if kind != ADMIN:
            assert "mother-1" not in json.dumps(body) or kind == OTHER


async def test_a_tenant_token_only_ever_sees_its_own_data(world: dict[str, Api]) -> None:
    own = world[OWN]
    messages = await own.messages("acme")
    assert [m["id"] for m in messages] == ["macme-1"]
    body = await own.ok("POST", "/commands/delete-messages", params=ACME,
                        json={"ids": ["mother-1"]})
    assert body == {"ok": True, "removed": 0, "not_found": ["mother-1"], "unauthorized": []}
    assert [m["id"] for m in await world[ADMIN].messages("other")] == ["mother-1"]
    status, body = await own.call("GET", "/tenant/other")
    assert (status, body) == (403, {"detail": "Token not authorized for this tenant"})
    status, _ = await own.call("GET", "/messages", params={"tenant_id": "ghost"})
    assert status == 403, "naming a tenant that does not exist reveals nothing"
    status, body = await world[ADMIN].call("GET", "/messages", params={"tenant_id": "ghost"})
    assert (status, body) == (404, {"detail": "tenant not found"})
    status, _ = await own.call("POST", "/commands/add-messages",
                               json={"messages": [message("x", tenant_id="other")]})
    assert status == 400
    status, _ = await own.call("PUT", "/tenant/acme", json={"active": False})
    assert status == 403


async def test_errors_come_in_the_contract_order(world: dict[str, Api]) -> None:
    bad, own, other, admin = world[BAD], world[OWN], world[OTHER], world[ADMIN]
    status, _ = await bad.call("POST", "/commands/suspend")
    assert status == 401, "token before query parameters"
    status, body = await own.call("POST", "/commands/suspend")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "tenant_id"]
    status, _ = await other.call("POST", "/commands/delete-messages", params=ACME)
    assert status == 422, "body shape before tenant scope"
    status, _ = await own.call("POST", "/tenant/scratch/api-key", data=b"[1]")
    assert status == 422, "body shape before the admin check"
    status, _ = await admin.call("POST", "/commands/cleanup-messages",
                                 params={"tenant_id": "ghost"},
                                 json={"older_than_seconds": "x"})
    assert status == 422
    status, _ = await admin.call("POST", "/commands/cleanup-messages",
                                 params={"tenant_id": "ghost"})
    assert status == 404
    status, body = await own.call("PATCH", "/instance")
    assert status == 405 and body == {"detail": "Method Not Allowed"}
    status, body = await own.call("GET", "/no/such/path")
    assert (status, body) == (404, {"detail": "Not Found"})


async def test_empty_bodies_count_as_empty_objects(world: dict[str, Api]) -> None:
    admin = world[ADMIN]
    for path, params in [("/commands/run-now", None), ("/commands/suspend", ACME),
                         ("/commands/activate", ACME), ("/commands/cleanup-messages", ACME),
                         ("/instance/reload-bounce", None)]:
        status, body = await admin.call("POST", path, params=params, data=b"",)
        assert status == 200, (path, body)
