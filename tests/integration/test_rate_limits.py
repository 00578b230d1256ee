"""Tenant rate limits (§9.5) count the sends of all the tenant's accounts together."""

from __future__ import annotations

import asyncio

from tests.conftest import Api, message
from tests.relay import Relay


async def test_tenant_limit_spans_all_accounts_of_the_tenant(api: Api, relay: Relay) -> None:
    await api.tenant(rate_limits={"minute": 3})
    await api.account(relay, account_id="main")
    await api.account(relay, account_id="second")
    await api.tenant("free")
    await api.account(relay, tenant_id="free", account_id="main")
    await api.send(*[message(i, account_id="main") for i in range(3)],
                   *[message(i, account_id="second") for i in range(3, 6)])
    await relay.wait_for(3)
    await asyncio.sleep(1.0)  # several dispatch cycles: nothing more may go out
    assert relay.accepted == 3
    records = await api.messages(include_history="true")
    statuses = sorted(m["status"] for m in records)
    assert statuses.count("sent") == 3
    assert {m["account_id"] for m in records if m["status"] != "sent"} <= {"main", "second"}
    limited = [h for m in records for h in m["history"]
               if h["event_type"] == "deferred" and h["description"] == "rate_limit"]
    assert limited, "the blocked account's head message is deferred with reason rate_limit"
    assert all(h["metadata"]["next_attempt_ts"] > h["event_ts"] for h in limited)

    # Another tenant is not held by acme's limit.
    await api.send(message("f1", tenant_id="free"))
    await relay.wait_for(4)
