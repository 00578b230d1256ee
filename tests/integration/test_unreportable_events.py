"""Events of a tenant with nowhere to report them are reported at creation (issue 17), on
SQLite and PostgreSQL: sync-status never shows a backlog that no report loop will ever send.
The report loop is stopped in these tests, so only creation can have marked them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Api, ApiFactory, eventually, message
from tests.endpoint import EndpointFactory
from tests.pg import PgSchema, require_server
from tests.procs import new_encryption_key
from tests.relay import Relay

Factory = Callable[..., Awaitable[Api]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    return require_server() if request.param == "postgres" else None


@pytest.fixture
async def make(backend: str | None, make_api: ApiFactory) -> AsyncIterator[Factory]:
    """make(**settings): an app on the backend, its report loop stopped."""
    schema = PgSchema(backend) if backend else None
    made: list[Api] = []

    async def factory(**settings: Any) -> Api:
        if schema is not None:
            settings.update(db_path=schema.url, encryption_key=new_encryption_key())
        api = await make_api(**settings)
        await api.parts.reporter.stop()  # type: ignore[attr-defined]
        made.append(api)
        return api

    yield factory
    for api in made:
        await api.client.close()
    if schema is not None:
        await schema.drop()


async def _pending(api: Api, tenant_id: str = "acme") -> int:
    body = await api.ok("GET", "/tenants/sync-status")
    return int(next(t for t in body["tenants"] if t["id"] == tenant_id)["pending_events"])


async def _sent_and_rejected(api: Api, relay: Relay) -> list[dict[str, Any]]:
    await api.account(relay)
    await api.send(message(1), message(2, to=["not an address"]))
    await relay.wait_for(1)

    async def final() -> bool:
        found = await api.messages(include_history="true")
        return sorted(m["status"] for m in found) == ["error", "sent"]

    await eventually(final, timeout=15)
    return await api.messages(include_history="true")


async def test_without_a_target_events_are_reported_when_created(make: Factory,
                                                                 relay: Relay) -> None:
    api = await make()
    await api.tenant()
    found = await _sent_and_rejected(api, relay)
    assert await _pending(api) == 0
    for record in found:
        assert record["reported_ts"] is not None, record
        assert all(e["reported_ts"] is not None for e in record["history"]), record


async def test_with_a_target_events_wait_for_the_report_loop(
        make: Factory, relay: Relay, make_endpoint: EndpointFactory) -> None:
    endpoint = await make_endpoint()
    api = await make()
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await _sent_and_rejected(api, relay)
    assert await _pending(api) >= 2  # nothing was lost: the loop will send them


async def test_with_a_fallback_url_events_wait_for_the_report_loop(
        make: Factory, relay: Relay, make_endpoint: EndpointFactory) -> None:
    endpoint = await make_endpoint()
    api = await make(client_sync_url=endpoint.base_url + "/central")
    await api.tenant()
    await _sent_and_rejected(api, relay)
    assert await _pending(api) >= 2
