"""add-messages keeps tenants and accounts briefly (mailproxy/lookups.py) but never acts on a
stale one: a change on this instance counts at once, one on another instance sharing the
PostgreSQL database as soon as its notification arrives, and something created a moment
ago is never refused for an old miss.

The keeping time is stretched to 60 s here, so that only an invalidation (or not keeping
misses) can explain what the tests see within their few seconds."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mailproxy import lookups
from tests.conftest import Api, ApiFactory, message
from tests.pg import PgSchema
from tests.procs import new_encryption_key
from tests.relay import Relay


@pytest.fixture(autouse=True)
def long_keep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookups, "RECHECK_SECONDS", 60.0)


async def refused(api: Api, item: dict[str, Any]) -> list[str]:
    """The reasons add-messages gives for refusing the one message ([] when queued)."""
    status, body = await api.call("POST", "/commands/add-messages", json={"messages": [item]})
    if status == 200:
        assert body["queued"] == 1, body
        return []
    assert status == 400, (status, body)
    return [r["reason"] for r in body["detail"]["rejected"]]


async def test_changes_on_this_instance_count_at_once(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    assert await refused(api, message(1)) == []
    await api.ok("PUT", "/tenant/acme", json={"active": False})
    assert await refused(api, message(2)) == ["tenant inactive"]
    await api.ok("PUT", "/tenant/acme", json={"active": True})
    await api.ok("DELETE", "/account/main", params={"tenant_id": "acme"})
    assert await refused(api, message(3)) == ["account not found for tenant"]
    await api.account(relay, account_id="second")
    assert await refused(api, message(4, account_id="second")) == []


async def test_changes_on_another_instance_count_when_notified(
        make_api: ApiFactory, relay: Relay, pg_schema: PgSchema) -> None:
    shared = {"db_path": pg_schema.url, "encryption_key": new_encryption_key()}
    here = await make_api(**shared)
    other = await make_api(**shared)
    await other.tenant()
    await other.account(relay)
    assert await refused(here, message(1)) == []  # tenant and account now kept here
    # Created on the other instance: usable here at once (a miss is never kept).
    await other.account(relay, account_id="second")
    assert await refused(here, message(2, account_id="second")) == []
    # Deactivated there: refused here once the notification has arrived.
    await other.ok("PUT", "/tenant/acme", json={"active": False})
    deadline = time.monotonic() + 10
    n = 3
    while await refused(here, message(n)) != ["tenant inactive"]:
        assert time.monotonic() < deadline, "the change never reached this instance"
        n += 1
    await other.ok("DELETE", "/tenant/acme")
    await here.client.close()  # both apps stop before the schema goes
    await other.client.close()
