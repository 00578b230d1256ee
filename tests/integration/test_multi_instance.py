"""Three `mail-proxy serve` processes on one PostgreSQL schema, one relay, one SIGKILL.

10,000 messages over four accounts of one tenant, two of them limited to 30 a minute, are
posted through all three instances. When the relay has a quarter of them, one instance is
killed with SIGKILL; its leases (GMP_LEASE_SECONDS=5) expire and the others finish its work.

What must hold:
- every message reaches the relay; a message reaches it twice only if the killed instance
  held its lease at the kill (it may have been sent but not recorded, §9.2), and at most as
  many as that instance could hold at once (eight times GMP_SEND_CONCURRENCY: twice the
  claim capacity, which bounds sends in progress with sends done whose outcomes wait for the
  next group commit);
- every message the killed instance held is sent afterwards by the others (counted as a try);
- no 60-second window of a limited account holds more than its limit at the relay (beyond
  such duplicates, which the database never saw as sent).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import message
from tests.pg import PgSchema
from tests.procs import TOKEN, ServeProcess, new_encryption_key
from tests.relay import Relay, mail_id

LIMIT_PER_MINUTE = 30
ACCOUNTS = {"lim1": 40, "lim2": 40, "bulk1": 4960, "bulk2": 4960}  # 10,000 messages
LIMITED = ("lim1", "lim2")
BATCH = 250
LEASE_SECONDS = 5
SEND_CONCURRENCY = 10
KILL_AFTER = 2500  # messages at the relay
# Seconds for the whole run, posting included. On the shared 2-core host under CPU load a
# run takes 100-110 s (the limited accounts alone need 60 s), so the former 110 s made the
# test fail under a loaded full run although nothing was lost; the bound only stops a hang.
DEADLINE = 300.0

def _plan() -> list[list[dict[str, Any]]]:
    """Batches of messages, the limited accounts' first (their window starts at once)."""
    ordered = [(account, i) for account in LIMITED for i in range(ACCOUNTS[account])]
    bulk = [a for a in ACCOUNTS if a not in LIMITED]
    most = max(ACCOUNTS[a] for a in bulk)
    ordered += [(a, i) for i in range(most) for a in bulk if i < ACCOUNTS[a]]
    items = [message(f"{a}-{i}", id=f"{a}-{i}", account_id=a) for a, i in ordered]
    return [items[k:k + BATCH] for k in range(0, len(items), BATCH)]


class Poster:
    """Posts the batches through the live instances; a batch whose instance dies is posted
    again through another (re-posting is safe: pending ids are upserted, others refused)."""

    BENIGN = ("already sent", "message is being sent")

    def __init__(self, session: aiohttp.ClientSession, servers: list[ServeProcess]) -> None:
        self.session = session
        self.servers = servers
        self.acked: set[str] = set()
        self.reposted = 0

    async def run(self, batches: list[list[dict[str, Any]]]) -> None:
        queue = list(reversed(batches))

        async def lane(index: int) -> None:
            while queue:
                await self._post(queue.pop(), index)

        await asyncio.gather(*(lane(i) for i in range(len(self.servers))))

    async def _post(self, batch: list[dict[str, Any]], index: int) -> None:
        for attempt in range(len(self.servers) * 3):
            server = self.servers[(index + attempt) % len(self.servers)]
            if not server.running:
                continue
            try:
                async with self.session.post(
                    server.url + "/commands/add-messages", json={"messages": batch},
                    headers={"X-API-Token": TOKEN},
                ) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
            except (aiohttp.ClientError, TimeoutError):
                self.reposted += 1
                await asyncio.sleep(0.1)
                continue
            refused = [r for r in body["rejected"] if r["reason"] not in self.BENIGN]
            assert not refused, refused
            self.acked.update(m["id"] for m in batch)
            return
        raise AssertionError("no instance took the batch")


async def _wait_delivered(relay: Relay, wanted: set[str], deadline: float) -> list[str]:
    """Ids in relay order once every wanted id arrived (parsing incrementally)."""
    seen: list[str] = []
    while True:
        for item in relay.messages[len(seen):]:
            seen.append(mail_id(item))
        missing = wanted - set(seen)
        if not missing:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} messages never reached the relay, "
                                 f"e.g. {sorted(missing)[:5]}")
        await asyncio.sleep(0.2)


def _busiest_window(seconds: list[int]) -> int:
    """Most sends in any 60 consecutive whole seconds (the contract's sliding window)."""
    ordered = sorted(seconds)
    best, low = 0, 0
    for high, second in enumerate(ordered):
        while ordered[low] <= second - 60:
            low += 1
        best = max(best, high - low + 1)
    return best


@pytest.mark.slow
async def test_three_instances_share_one_queue_and_survive_a_kill(
    relay: Relay, pg_schema: PgSchema, tmp_path: Path
) -> None:
    began = time.monotonic()
    env = {
        "GMP_DB_PATH": pg_schema.url, "GMP_ENCRYPTION_KEY": new_encryption_key(),
        "GMP_SEND_LOOP_INTERVAL": "0.1", "GMP_LEASE_SECONDS": str(LEASE_SECONDS),
        "GMP_SEND_CONCURRENCY": str(SEND_CONCURRENCY), "GMP_DB_POOL_SIZE": "5",
    }
    servers = [ServeProcess(tmp_path / f"serve{i}", **env) for i in range(3)]
    victim = servers[2]
    try:
        for server in servers:
            server.start()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(s.ready(session) for s in servers))
            first = servers[0]
            await first.call(session, "POST", "/tenant", {"id": "acme"})
            for account in ACCOUNTS:
                limit = LIMIT_PER_MINUTE if account in LIMITED else None
                await first.call(session, "POST", "/account", {
                    "id": account, "tenant_id": "acme", "host": relay.host,
                    "port": relay.port, "use_tls": False, "limit_per_minute": limit})

            batches = _plan()
            wanted = {m["id"] for batch in batches for m in batch}
            assert len(wanted) == 10_000
            poster = Poster(session, servers)
            posting = asyncio.create_task(poster.run(batches))

            while relay.accepted < KILL_AFTER:
                assert time.monotonic() - began < DEADLINE, "too slow to reach the kill"
                await asyncio.sleep(0.01)
            victim.kill()
            killed_at = time.time()
            await asyncio.sleep(0.5)  # the victim's server sessions end and roll back
            held = {r["client_id"] for r in await pg_schema.fetch(
                "SELECT client_id FROM messages WHERE status = 'sending' AND lease_owner = $1",
                victim.instance_id)}
            assert held, "the kill came while the victim held no lease"

            await posting
            assert poster.acked == wanted
            seen = await _wait_delivered(relay, wanted, began + DEADLINE)
            while True:  # the last outcomes are committed just after the relay's 250
                status = await first.call(session, "GET", "/status")
                if status["pending_messages"] == 0:
                    break
                assert time.monotonic() - began < DEADLINE, status
                await asyncio.sleep(0.1)
    finally:
        codes = [server.stop() for server in servers if server.running]
    assert codes == [0, 0], [s.log_tail() for s in servers[:2]]

    counts = Counter(seen)
    duplicates = {i: n for i, n in counts.items() if n > 1}
    rows = await pg_schema.fetch("SELECT client_id, status, retry_count FROM messages")
    statuses = Counter(r["status"] for r in rows)
    retries = {r["client_id"]: r["retry_count"] for r in rows}
    after_kill = {mail_id(r) for r in relay.messages if r.time > killed_at}
    print(f"\nmulti-instance: {len(counts)} ids, {len(seen)} deliveries, victim held "
          f"{len(held)} leases at the kill, {len(duplicates)} delivered twice "
          f"({sorted(duplicates)}), {poster.reposted} batches re-posted, "
          f"{time.monotonic() - began:.1f} s")

    # every message delivered; twice only when the victim held it (sent, not recorded)
    assert set(counts) == wanted
    assert set(duplicates) <= held, set(duplicates) - held
    assert all(n == 2 for n in duplicates.values())
    assert len(duplicates) <= 8 * SEND_CONCURRENCY  # all an instance may hold (worker._room)
    # the victim's leased work was finished by the others, each loss counted as a try
    assert statuses == {"sent": 10_000}, statuses
    assert held <= after_kill
    assert all(retries[i] >= 1 for i in held)
    # no limited account went over its window at the relay
    by_account: dict[str, list[int]] = defaultdict(list)
    for item in relay.messages:
        by_account[mail_id(item).split("-")[0]].append(int(item.time))
    for account in LIMITED:
        extra = sum(n - 1 for i, n in duplicates.items() if i.startswith(account + "-"))
        busiest = _busiest_window(by_account[account])
        print(f"{account}: {len(by_account[account])} deliveries over "
              f"{max(by_account[account]) - min(by_account[account])} s, busiest 60 s "
              f"window {busiest} (limit {LIMIT_PER_MINUTE})")
        assert busiest <= LIMIT_PER_MINUTE + extra
        # the limit really applied: the last of the 40 waited for the window to free
        assert max(by_account[account]) - min(by_account[account]) >= 59
