"""`immediate` overtakes a backlog (issue 17): with a slow relay and a queue of `low` messages
already being delivered, an immediate message is the next one sent on its account once a
connection frees; only the sends already in flight may go before it."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import Api, ApiFactory, message
from tests.relay import Relay, mail_id

PER_ACCOUNT = 3


async def _urgent_position(api: Api, relay: Relay, priority: str) -> int:
    """How many messages reached the relay after the urgent one was accepted and before it."""
    await api.tenant()
    await api.account(relay, batch_size=5)
    relay.stalls["DATA"] = 0.12
    await api.send(*(message(i, priority="low") for i in range(60)))
    await relay.wait_for(2, timeout=30)  # delivery has started
    body = await api.send(message("urgent", priority=priority))
    assert body["queued"] == 1
    accepted_at = len(relay.messages)
    deadline = time.monotonic() + 30
    while "murgent" not in [mail_id(m) for m in relay.messages]:
        assert time.monotonic() < deadline, "the urgent message was never sent"
        await asyncio.sleep(0.01)
    order = [mail_id(m) for m in relay.messages]
    return order.index("murgent") - accepted_at


async def test_immediate_is_the_next_send_on_its_account(make_api: ApiFactory,
                                                         relay: Relay) -> None:
    api = await make_api(send_concurrency_per_account=PER_ACCOUNT)
    overtaken_by = await _urgent_position(api, relay, "immediate")
    # The sends already in flight when it arrived may finish first; nothing else.
    assert overtaken_by <= PER_ACCOUNT, overtaken_by


async def test_the_backlog_is_still_delivered_in_full(make_api: ApiFactory,
                                                      relay: Relay) -> None:
    api = await make_api(send_concurrency_per_account=PER_ACCOUNT)
    await _urgent_position(api, relay, "immediate")
    received = await relay.wait_for(61, timeout=60)
    assert sorted(mail_id(m) for m in received) == sorted(
        [f"m{i}" for i in range(60)] + ["murgent"])
