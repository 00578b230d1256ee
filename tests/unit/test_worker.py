"""Service and worker on the in-memory store with a fake sender and a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from mailproxy import intake
from mailproxy.commands import PutAccount, PutTenant, TenantChanges
from mailproxy.errors import RecipientFailure, TemporaryFailure
from mailproxy.ingress.http import message_info
from mailproxy.model import Account, Priority, Tenant
from mailproxy.service import Caller, MailService
from mailproxy.store.sqlite import SqliteStore
from mailproxy.sync import SyncRules
from mailproxy.worker import EMPTY_CLAIM_GAP, Worker, WorkerSettings
from tests.conftest import FakeClock, message


class Plain:
    def encrypt(self, value: str | None) -> str | None:
        return value

    def decrypt(self, value: str | None) -> str | None:
        return value


class FakeSender:
    """Records sends; can block them or fail them on demand."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...], bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: Exception | None = None

    async def send(self, account: Account, sender: str, recipients: Sequence[str],
                   data: bytes | Sequence[bytes], *, smtputf8: bool = False,
                   eightbit: bool = False, crlf: bool = False
                   ) -> tuple[RecipientFailure, ...]:
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        whole = data if isinstance(data, bytes) else b"".join(data)
        self.sent.append((sender, tuple(recipients), whole))
        return ()

    def discard(self, tenant_id: str, account_id: str) -> None:
        return None


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    s = SqliteStore(":memory:", Plain())
    await s.open()
    yield s
    await s.close()


class Untended:
    """The waker, report loop and bounce poller of a service whose worker a test runs."""

    def wake(self, urgent: bool = False) -> None:
        return None

    def run_now(self, tenant_id: str | None) -> None:
        return None

    async def reload(self) -> None:
        return None


async def _service(store: SqliteStore, clock: FakeClock) -> MailService:
    untended = Untended()
    service = MailService(
        store=store, clock=clock, rules=intake.IntakeRules(Priority.MEDIUM, 10_000_000),
        sync_rules=SyncRules(), retention_seconds=604800, admin_token="admin",
        token_source="env", token_writer=lambda _token: None, waker=untended,
        reports=untended, bounce_control=untended, account_listeners=(), change_listeners=(),
    )
    await service.put_tenant(Caller(), PutTenant("acme", TenantChanges()))
    await service.put_account(Caller(), PutAccount(Account(tenant_id="acme", id="main",
                                                           host="127.0.0.1", port=25)))
    return service


def _worker(store: SqliteStore, sender: FakeSender, clock: FakeClock, owner: str,
            **kw: Any) -> Worker:
    return Worker(store, sender, clock, WorkerSettings(owner=owner, loop_interval=0.01, **kw))


async def _until(predicate: Any, timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def listed(store: SqliteStore, tenant: Tenant, **kw: Any) -> list[dict[str, Any]]:
    """The tenant's messages as GET /messages shows them."""
    return [message_info(v) for v in await store.list_messages(tenant, **kw)]


async def _statuses(store: SqliteStore, service: MailService, now: int) -> dict[str, str]:
    tenant = await store.get_tenant("acme")
    assert tenant is not None
    return {r["id"]: r["status"] for r in await listed(store, tenant, now=now)}


async def test_expired_lease_returns_the_message_and_counts_a_try(store: SqliteStore) -> None:
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    await service.submit(Caller(), [message(1)], None)
    batch = await store.claim("dead-process", clock.now(), 300, 10)
    assert [m.id for m in batch.messages] == ["m1"]
    clock.advance(301)
    assert await store.recover(clock.now(), 5, all_sending=False) == 1
    tenant = await store.get_tenant("acme")
    assert tenant is not None
    [record] = await listed(store, tenant, now=int(clock.now()), include_history=True)
    assert (record["status"], record["retry_count"], record["history"]) == ("pending", 1, [])
    # the dead process's late outcome is refused (fencing)
    from mailproxy.model import Sent

    assert await store.record("dead-process", [(batch.messages[0], Sent())], clock.now()) == [False]


async def test_a_message_that_keeps_killing_workers_ends_in_error(store: SqliteStore) -> None:
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    await service.submit(Caller(), [message(1)], None)
    for _ in range(3):
        await store.claim("p", clock.now(), 10, 10)
        clock.advance(11)
        await store.recover(clock.now(), 2, all_sending=False)
    assert await _statuses(store, service, int(clock.now())) == {"m1": "error"}
    tenant = await store.get_tenant("acme")
    assert tenant is not None
    [record] = await listed(store, tenant, now=int(clock.now()))
    assert record["error"] == "worker lost the message 3 times"


async def test_shutdown_releases_unfinished_claims_without_a_try(store: SqliteStore) -> None:
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    sender = FakeSender()
    sender.gate.clear()  # every send hangs
    worker = _worker(store, sender, clock, "w1")
    await worker.start(recover_all=True)
    await service.submit(Caller(), [message(1), message(2)], None)
    worker.wake()
    await _until(lambda: _all(store, service, clock, "sending"))
    await worker.stop(grace=0.05)
    tenant = await store.get_tenant("acme")
    assert tenant is not None
    records = await listed(store, tenant, now=int(clock.now()))
    assert {(r["status"], r["retry_count"]) for r in records} == {("pending", 0)}


async def _all(store: SqliteStore, service: MailService, clock: FakeClock, status: str) -> bool:
    statuses = await _statuses(store, service, int(clock.now()))
    return bool(statuses) and set(statuses.values()) == {status}


async def test_temporary_failure_defers_with_jittered_delay(store: SqliteStore) -> None:
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    sender = FakeSender()
    sender.fail_with = TemporaryFailure("421 4.3.2 shutting down", 421)
    worker = _worker(store, sender, clock, "w1")
    await worker.start(recover_all=True)
    await service.submit(Caller(), [message(1)], None)
    worker.wake()
    await _until(lambda: _all(store, service, clock, "deferred"))
    await worker.stop(grace=1)
    tenant = await store.get_tenant("acme")
    assert tenant is not None
    [record] = await listed(store, tenant, now=int(clock.now()), include_history=True)
    assert record["retry_count"] == 1
    assert 1_000_001 <= record["deferred_ts"] <= 1_000_060
    assert record["history"][0]["metadata"] == {"retry_count": 1,
                                                "next_attempt_ts": record["deferred_ts"]}


async def test_a_send_that_crashes_unexpectedly_is_retried_later(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a send (not an SMTP failure) must not leave the message renewed in
    'sending' for as long as the process lives: it is deferred, counted as a try."""
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    sender = FakeSender()
    sender.fail_with = RuntimeError("bug in a send")
    worker = _worker(store, sender, clock, "w1")
    await worker.start(recover_all=True)
    try:
        await service.submit(Caller(), [message(1)], None)
        worker.wake()
        await _until(lambda: _has_log(caplog, "failed unexpectedly"))

        async def deferred() -> bool:
            tenant = await store.get_tenant("acme")
            assert tenant is not None
            [record] = await listed(store, tenant, now=int(clock.now()),
                                    include_history=True)
            reasons = [h["description"] for h in record["history"]]
            return bool(record["status"] == "deferred" and record["retry_count"] == 1
                        and reasons == ["internal error (RuntimeError)"])

        await _until(deferred)
    finally:
        await worker.stop(grace=0.05)


async def _has_log(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


class SlowRecords:
    """The store, with outcome writes held until `gate` opens (a slow group commit)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def record(self, owner: str, outcomes: Any, now: float) -> list[bool]:
        await self.gate.wait()
        return await self._store.record(owner, outcomes, now)


async def test_sends_go_on_while_outcomes_wait_to_be_stored(store: SqliteStore) -> None:
    """Messages already sent but not yet recorded do not hold back the next claim (they
    stalled the sends for a whole group-commit linger), up to twice the capacity."""
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    sender = FakeSender()
    slow = SlowRecords(store)
    worker = Worker(slow, sender, clock,  # type: ignore[arg-type]
                    WorkerSettings(owner="w1", loop_interval=0.01, concurrency=1))
    capacity = 4  # four times the concurrency
    await worker.start(recover_all=True)
    try:
        await service.submit(Caller(), [message(i) for i in range(1, 11)], None)
        worker.wake()

        async def sent(n: int) -> bool:
            return len(sender.sent) >= n

        await _until(lambda: sent(2 * capacity))
        await asyncio.sleep(0.1)
        assert len(sender.sent) == 2 * capacity  # bounded while nothing is stored
        slow.gate.set()
        await _until(lambda: _all(store, service, clock, "sent"))
        assert len(sender.sent) == 10
    finally:
        slow.gate.set()
        await worker.stop(grace=1)


async def test_a_burst_of_wake_ups_after_an_empty_claim_is_one_claim_per_gap(
    store: SqliteStore
) -> None:
    await _service(store, FakeClock())  # a tenant and an account, nothing queued
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    claim = store.claim

    async def timed(*args: Any, **kw: Any) -> Any:
        starts.append(loop.time())
        return await claim(*args, **kw)

    store.claim = timed  # type: ignore[method-assign]
    worker = Worker(store, FakeSender(), FakeClock(), WorkerSettings(owner="w1",
                                                                      loop_interval=60))
    await worker.start(recover_all=True)
    try:
        for _ in range(100):
            if starts:
                break
            await asyncio.sleep(0.01)
        for _ in range(20):  # every commit of every instance wakes each of them
            worker.wake()
            await asyncio.sleep(0.001)
        last_wake = loop.time()
        for _ in range(200):  # the claim for the last wake-up (loop_interval is a minute)
            if starts[-1] >= last_wake - 0.001:
                break
            await asyncio.sleep(0.01)
        # empty claims are at least the gap apart, however many wake-ups came between...
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps and min(gaps) >= EMPTY_CLAIM_GAP - 0.002
        # ...and the last wake-up, which came during a gap, was not lost
        assert starts[-1] >= last_wake - 0.001
    finally:
        await worker.stop(1)


async def test_a_message_is_understood_once_from_rest_to_the_relay(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Intake reads the message when it is submitted; the send uses what it built, so a
    later release with stricter rules (here: refusing everything) never judges it again."""
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    calls = []
    content_of = intake.content_of

    def counted(item: Any) -> Any:
        calls.append(item["id"])
        return content_of(item)

    monkeypatch.setattr(intake, "content_of", counted)
    attachment = {"filename": "a.txt", "storage_path": "base64:aGVsbG8="}
    await service.submit(Caller(), [message(1, to="Rcpt@Example.ORG, x@example.org",
                                            attachments=[attachment])], None)
    assert calls == ["m1"]

    def stricter(item: Any) -> Any:
        raise intake.Rejected("a later release refuses this")

    monkeypatch.setattr(intake, "content_of", stricter)
    sender = FakeSender()
    worker = _worker(store, sender, clock, "w1")
    await worker.start(recover_all=True)
    try:
        worker.wake()
        await _until(lambda: _all(store, service, clock, "sent"))
    finally:
        await worker.stop(grace=1)
    [(envelope, recipients, data)] = sender.sent
    assert (envelope, recipients) == ("sender@acme.test", ("Rcpt@example.org", "x@example.org"))
    assert b"Subject: Hello 1" in data and b"aGVsbG8=" in data
    assert calls == ["m1"]


async def test_a_row_stored_by_the_previous_release_is_delivered(store: SqliteStore) -> None:
    """A row holding only the payload (no `content`) goes out as that release sent it."""
    clock = FakeClock(1_000_000)
    service = await _service(store, clock)
    payload = message(1, to="Rcpt@Example.ORG", headers={"X-Tag": 7})
    args = ("pk-old", "acme", "m1", "main", "pending", 1, 2, json.dumps(payload),
            clock.now(), clock.now())
    await store.run_write(lambda c: c.execute(
        "INSERT INTO messages (pk, tenant_id, client_id, account_id, status, queued, priority,"
        " payload, created_ts, updated_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", args))
    sender = FakeSender()
    worker = _worker(store, sender, clock, "w1")
    await worker.start(recover_all=True)
    try:
        worker.wake()
        await _until(lambda: _all(store, service, clock, "sent"))
    finally:
        await worker.stop(grace=1)
    [(envelope, recipients, data)] = sender.sent
    assert (envelope, recipients) == ("sender@acme.test", ("Rcpt@example.org",))
    assert b"Subject: Hello 1" in data and b"X-Tag: 7" in data and b"Plain body" in data
