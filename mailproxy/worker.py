"""Dispatcher: claim -> compose -> send -> record. Owns its tasks and its shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import mimetypes
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from mailproxy import compose
from mailproxy.addresses import needs_smtputf8, split_address
from mailproxy.bounces.service import SuppressionCheck
from mailproxy.errors import (
    PermanentFailure,
    RecipientFailure,
    StoreError,
    TemporaryFailure,
    UnknownHost,
)
from mailproxy.lane import PriorityLane
from mailproxy.model import (
    Account,
    Attachment,
    Claimed,
    Deferred,
    Failed,
    Outcome,
    Prepared,
    Sent,
)
from mailproxy.policy import RetryPolicy, retry_error_text
from mailproxy.ports import AccountReader, Clock, QueueStore
from mailproxy.relayhost import UnknownHosts
from mailproxy.tasks import cancel_and_wait
from mailproxy.timefmt import iso

log = logging.getLogger("mailproxy.worker")


class WorkerStore(QueueStore, AccountReader, Protocol):
    """The queue, and the accounts whose relays the worker sends through."""

CONTROL_HEADERS = ("x-mail-proxy-priority", "x-mail-proxy-batch", "x-mail-proxy-deferred-ts")
ACCOUNT_CACHE_SECONDS = 10.0
# After a claim that found nothing, the next one waits at least this long (seconds), even
# when woken sooner: with several instances every commit wakes all of them, and a burst of
# wake-ups for rows another instance already took then costs one empty claim, not one each.
EMPTY_CLAIM_GAP = 0.02


class Sender(Protocol):
    async def send(
        self, account: Account, sender: str, recipients: Sequence[str],
        data: bytes | Sequence[bytes], *,
        smtputf8: bool = False, eightbit: bool = False, crlf: bool = False,
    ) -> tuple[RecipientFailure, ...]: ...

    def discard(self, tenant_id: str, account_id: str) -> None: ...


class Preparer(Protocol):
    """Send-time content (§9.3 step 2): fetches attachments, applies the large-file policy.
    Raises TemporaryFailure or PermanentFailure; None means "send the row as stored"."""

    async def prepare(self, message: Claimed) -> Prepared | None: ...


class Observer(Protocol):
    """Receives what the worker decides; metrics implement it."""

    def outcome(self, message: Claimed, outcome: Outcome, now: float) -> None: ...

    def rate_limited(self, tenant_id: str, account_id: str, deferred: bool) -> None: ...

    def smtp_seconds(self, outcome: str, seconds: float) -> None: ...


class NullObserver:
    def outcome(self, message: Claimed, outcome: Outcome, now: float) -> None:
        return None

    def rate_limited(self, tenant_id: str, account_id: str, deferred: bool) -> None:
        return None

    def smtp_seconds(self, outcome: str, seconds: float) -> None:
        return None


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    owner: str
    concurrency: int = 10
    per_account: int = 3
    loop_interval: float = 0.5
    lease_seconds: float = 300
    renew_seconds: float = 60
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    genro_header: bool = True
    bounce_return_path: str | None = None
    unknown_host_grace: float = 60.0


class Worker:
    def __init__(
        self, store: WorkerStore, sender: Sender, clock: Clock, settings: WorkerSettings,
        observer: Observer | None = None, preparer: Preparer | None = None, *,
        suppressions: SuppressionCheck | None = None, on_events: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._preparer = preparer
        self._sender = sender
        self._clock = clock
        self._s = settings
        self._observer = observer or NullObserver()
        self._wake = asyncio.Event()
        self._wake_on_slot = False  # a finished send wakes the dispatch loop (see _run)
        self._stopping = False
        self._inflight: dict[str, Claimed] = {}  # claimed, until the outcome is stored
        self._unsent = 0  # of those, the ones whose attempt has not finished
        self._tasks: set[asyncio.Task[None]] = set()
        self._global = asyncio.Semaphore(settings.concurrency)
        self._per_account: dict[tuple[str, str], PriorityLane] = {}
        self._urgent = False  # an immediate message was enqueued: claim even when buffered
        self._accounts: dict[tuple[str, str], tuple[float, Account | None]] = {}
        self._blocked: dict[tuple[str, str], int] = {}
        self._unknown_hosts = UnknownHosts(settings.unknown_host_grace)
        self._hostname = socket.getfqdn() or "localhost"
        self._runner: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.active = False
        # Called when stored outcomes created reportable events (the reporter's wake).
        self._on_events = on_events
        self._suppressions = suppressions
        # Envelope sender of REST messages without their own (the bounce poller sets it).
        self.bounce_return_path = settings.bounce_return_path

    # -- control -----------------------------------------------------------------------------

    def wake(self, urgent: bool = False) -> None:
        """New work; `urgent` (an immediate message) claims even with a full claim buffer,
        so that the message can take its account's next free connection (PriorityLane)."""
        if urgent:
            self._urgent = True
        self._wake.set()

    def account_changed(self, tenant_id: str, account_id: str) -> None:
        self._accounts.pop((tenant_id, account_id), None)
        self._blocked.pop((tenant_id, account_id), None)
        self._unknown_hosts.forget(tenant_id, account_id)
        self._sender.discard(tenant_id, account_id)
        self.wake()

    def sending(self) -> bool:
        """Whether messages are claimed and not finished (the bounce poller yields then)."""
        return bool(self._inflight)

    def set_bounce_return_path(self, address: str | None) -> None:
        """Envelope sender of REST messages without their own (§4.2): the bounce mailbox
        while bounces are enabled, else the From address."""
        self.bounce_return_path = address

    def tenant_deleted(self, tenant_id: str) -> None:
        for key in [k for k in self._accounts if k[0] == tenant_id]:
            self.account_changed(*key)

    async def start(self, *, recover_all: bool) -> None:
        """Return lost claims to the queue, then run."""
        await self._store.recover(self._clock.now(), self._s.retry.max_retries,
                                  all_sending=recover_all)
        self._runner = asyncio.create_task(self._run(), name="dispatch")
        self._renewer = asyncio.create_task(self._renew_loop(), name="lease-renewal")
        self.active = True

    async def stop(self, grace: float) -> None:
        """Stop claiming, let in-flight sends finish for `grace` s, release the rest."""
        self._stopping = True
        self.active = False
        self.wake()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._renewer is not None:
            await cancel_and_wait(self._renewer)
        leftover = list(self._inflight.values())
        if leftover:
            with contextlib.suppress(StoreError):
                await self._store.release(self._s.owner, leftover, self._clock.now())
            self._inflight.clear()
        self._unsent = 0  # a task cancelled before its first step never counted itself down

    # -- loops -------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            # Cleared before the claim, so that a wake-up arriving during it is not lost.
            self._wake.clear()
            self._wake_on_slot = False
            began = loop.time()
            try:
                productive = await self._cycle()
            except StoreError as exc:
                log.warning("dispatch cycle failed: %s", exc)
                productive = False
            except Exception:
                log.exception("dispatch cycle failed")
                productive = False
            if self._stopping:
                break
            if productive and (self._claim_wanted() or self._urgent):
                continue
            # After a claim that found work, a freed slot may be worth the next claim; after
            # one that found none, only new work (wake) or the loop interval is.
            self._wake_on_slot = productive
            await self._idle()
            rest = began + EMPTY_CLAIM_GAP - loop.time()
            if not productive and rest > 0 and not self._stopping:
                await asyncio.sleep(rest)

    def _capacity(self) -> int:
        return self._s.concurrency * 4

    def _room(self) -> int:
        """How many rows a claim may take. The capacity bounds the rows not yet attempted;
        rows already sent that wait for their outcome to be stored (a group commit of up to
        tens of ms) count only against twice the capacity, so that they do not hold back
        the next claim while the sends run dry."""
        capacity = self._capacity()
        return min(capacity - self._unsent, 2 * capacity - len(self._inflight))

    def _claim_wanted(self) -> bool:
        """Claim when half the capacity is free, or sooner when the sends could run dry
        (fewer unsent than the concurrency). Claiming for every freed slot cost one claim
        transaction per message under load; with several instances sharing a queue, small
        claims cost more commits per message (bench/pg.py, three instances draining: 174
        PostgreSQL transactions per 1000 messages claiming at a quarter, 126 at half)."""
        room = self._room()
        if room <= 0:
            return False
        return room >= max(1, self._capacity() // 2) or self._unsent < self._s.concurrency

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._s.loop_interval):
                await self._wake.wait()

    async def _cycle(self) -> bool:
        now = self._clock.now()
        urgent, self._urgent = self._urgent, False
        room = self._room() if self._claim_wanted() else 0
        if urgent:  # past a full buffer, within the bound of all the worker may hold
            room = max(room, min(self._s.concurrency,
                                 2 * self._capacity() - len(self._inflight)))
        if room <= 0:
            return True  # busy: wait for slots to free
        self._blocked = {k: v for k, v in self._blocked.items() if v > now}
        batch = await self._store.claim(self._s.owner, now, self._s.lease_seconds, room,
                                        frozenset(self._blocked))
        self._blocked.update(batch.blocked)
        for limited in batch.rate_limited:
            self._observer.rate_limited(limited.tenant_id, limited.account_id, limited.deferred)
        if batch.rate_limited:
            self._events_created()
        for message in batch.messages:
            self._inflight[message.pk] = message
            self._unsent += 1
            task = asyncio.create_task(self._deliver(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return bool(batch.messages)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._s.renew_seconds)
            now = self._clock.now()
            try:
                if self._inflight:
                    await self._store.renew(self._s.owner, list(self._inflight.values()),
                                            now + self._s.lease_seconds)
                if await self._store.recover(now, self._s.retry.max_retries, all_sending=False):
                    self._events_created()
                await self._store.prune(now)
            except StoreError as exc:
                log.warning("lease renewal failed: %s", exc)

    # -- one message -------------------------------------------------------------------------

    async def _deliver(self, message: Claimed) -> None:
        key = (message.tenant_id, message.account_id)
        lane = self._per_account.get(key)
        if lane is None:
            lane = self._per_account[key] = PriorityLane(self._s.per_account)
        try:
            try:
                await lane.acquire(message.priority)
                try:
                    # Suppression is asked first: mail to suppressed addresses alone fails as
                    # suppressed, without fetching its attachments (or failing on them).
                    recipients = self._recipients(message)
                    banned = await self._banned(message.tenant_id, recipients)
                    if banned and all(r.lower() in banned for r in recipients):
                        outcome: Outcome = Failed("suppressed", suppressed=True)
                    else:
                        # Fetching holds only the account's slot, never a global one: a slow
                        # attachment source delays its own account's mail, nobody else's.
                        prepared = await self._prepare(message)
                        if prepared is None or isinstance(prepared, Prepared):
                            async with self._global:
                                outcome = await self._attempt(message, recipients, prepared,
                                                              banned)
                        else:
                            outcome = prepared
                finally:
                    lane.release()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug, not an SMTP failure: a counted, delayed retry
                log.exception("delivery of %s failed unexpectedly", message.pk)
                outcome = self._temporary(message, f"internal error ({type(exc).__name__})")
            finally:
                self._unsent -= 1
                self._slot_freed()
            await self._record(message, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording the outcome of %s failed unexpectedly", message.pk)
            # No longer renewed: its lease expires and recovery tries it again (counted).
            self._inflight.pop(message.pk, None)
        finally:
            self._slot_freed()

    def _slot_freed(self) -> None:
        if self._wake_on_slot and self._claim_wanted():
            self._wake.set()  # only when the dispatch loop would claim: no idle cycles

    async def _record(self, message: Claimed, outcome: Outcome) -> None:
        now = self._clock.now()
        for attempt in range(5):
            try:
                applied = await self._store.record(self._s.owner, [(message, outcome)], now)
                break
            except StoreError as exc:
                log.warning("recording outcome of %s failed (%s); retrying", message.pk, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        else:
            self._inflight.pop(message.pk, None)
            return  # the lease expires and the message is tried again
        self._inflight.pop(message.pk, None)
        if applied[0]:
            self._observer.outcome(message, outcome, now)
            self._events_created()

    def _events_created(self) -> None:
        if self._on_events is not None:
            self._on_events()

    async def _account(self, tenant_id: str, account_id: str) -> Account | None:
        key = (tenant_id, account_id)
        cached = self._accounts.get(key)
        now = self._clock.now()
        if cached is not None and now - cached[0] < ACCOUNT_CACHE_SECONDS:
            return cached[1]
        account = await self._store.get_account(tenant_id, account_id)
        self._accounts[key] = (now, account)
        return account

    async def _prepare(self, message: Claimed) -> Prepared | Outcome | None:
        if self._preparer is None:
            return None
        try:
            return await self._preparer.prepare(message)
        except TemporaryFailure as exc:
            return self._temporary(message, str(exc))
        except PermanentFailure as exc:
            return Failed(str(exc), exc.code)

    async def _banned(self, tenant_id: str, recipients: list[str]) -> frozenset[str]:
        """Which of the recipients are suppressed, lower-cased (§12.3)."""
        if self._suppressions is None:
            return frozenset()
        return await self._suppressions.suppressed(tenant_id, recipients)

    async def _attempt(self, message: Claimed, recipients: list[str],
                       prepared: Prepared | None, banned: frozenset[str]) -> Outcome:
        account = await self._account(message.tenant_id, message.account_id)
        if account is None:
            return Failed("account deleted")
        try:
            sender, data, composed = self._build(message, prepared)
        except ValueError as exc:
            return Failed(str(exc))
        recipients, dropped = _without(recipients, banned)
        if not recipients:
            return Failed("suppressed", suppressed=True)
        utf8 = needs_smtputf8(sender) or any(needs_smtputf8(r) for r in recipients)
        # 8-bit bytes go out with BODY=8BITMIME (§9.6): raw or SMTP-submitted content, and
        # composed mail whose Message-ID or an address header keeps UTF-8 as given.
        eightbit = not all(piece.isascii() for piece in data)
        started = asyncio.get_running_loop().time()
        try:
            refused = await self._sender.send(account, sender, recipients, data, smtputf8=utf8,
                                              eightbit=eightbit, crlf=composed)
        except UnknownHost as exc:
            outcome = self._unknown_host(message, account, str(exc))
            kind = "temporary" if isinstance(outcome, Deferred) else "permanent"
            self._observer.smtp_seconds(kind, asyncio.get_running_loop().time() - started)
            return outcome
        except TemporaryFailure as exc:
            self._observer.smtp_seconds("temporary", asyncio.get_running_loop().time() - started)
            return self._temporary(message, str(exc))
        except PermanentFailure as exc:
            self._observer.smtp_seconds("permanent", asyncio.get_running_loop().time() - started)
            return Failed(str(exc), exc.code)
        self._observer.smtp_seconds("sent", asyncio.get_running_loop().time() - started)
        self._unknown_hosts.forget(message.tenant_id, message.account_id)
        failed = tuple(
            {"address": r.address, "code": r.code, "reason": r.reason} for r in refused
        )
        return Sent(failed_recipients=dropped + failed)

    def _temporary(self, message: Claimed, error: str) -> Outcome:
        retry = self._s.retry
        if retry.exhausted(message.retry_count):
            return Failed(retry_error_text(retry.max_retries, error))
        count = message.retry_count + 1
        delay = retry.delay(count, random.Random())
        return Deferred(reason=error, next_ts=int(self._clock.now()) + delay, retry_count=count)

    def _unknown_host(self, message: Claimed, account: Account, error: str) -> Outcome:
        """Deferred to the end of the account's grace (contract §9.4), then final."""
        now = self._clock.now()
        deadline = self._unknown_hosts.deadline(account, now)
        if now >= deadline or self._s.retry.exhausted(message.retry_count):
            return Failed(self._unknown_hosts.failed_text(account, error))
        return Deferred(reason=f"{error}; retried until {iso(deadline)}, then final",
                        next_ts=math.ceil(deadline), retry_count=message.retry_count + 1)

    def _build(self, message: Claimed, prepared: Prepared | None = None
               ) -> tuple[str, list[bytes], bool]:
        """Envelope sender, the bytes to send (in pieces, in order), and whether compose
        built them (CRLF line ends only, by construction) rather than taking them from a
        raw message."""
        raw = prepared.raw if prepared is not None and prepared.raw is not None else message.raw
        if raw is not None and message.envelope_from is not None:
            sender, data = self._build_submitted(message, raw)
            return sender, [data], False
        content = message.content
        sender = _addr(content.return_path or self.bounce_return_path or content.from_addr)
        if raw is not None:
            data = compose.prepare_raw(
                raw, pk=message.pk, client_id=message.id, date_ts=message.date_ts,
                from_domain=sender.rpartition("@")[2] or None,
                genro_header=self._s.genro_header, hostname=self._hostname,
            )
            return sender, [data], False
        if prepared is not None:
            body = content.body if prepared.body is None else prepared.body
            html = content.html_body if prepared.html_body is None else prepared.html_body
            content = replace(content, body=body, html_body=html)
            files = list(prepared.attachments)
        else:
            files = [_fetch_inline(a) for a in content.attachments]
        parts = compose.build_message(
            content, pk=message.pk, client_id=message.id, date_ts=message.date_ts,
            attachments=files,
            genro_header=self._s.genro_header, hostname=self._hostname,
        )
        return sender, parts, True

    def _build_submitted(self, message: Claimed, raw: bytes) -> tuple[str, bytes]:
        """SMTP-submitted mail: the envelope as received, control headers removed."""
        sender = message.envelope_from or ""
        data = compose.prepare_raw(
            raw, pk=message.pk, client_id=message.id, date_ts=message.date_ts,
            from_domain=sender.rpartition("@")[2] or None, genro_header=self._s.genro_header,
            hostname=self._hostname, strip_headers=CONTROL_HEADERS,
        )
        return sender, data

    @staticmethod
    def _recipients(message: Claimed) -> list[str]:
        """The envelope recipients: as received for SMTP-submitted mail, else the addr-specs
        of To, Cc and Bcc."""
        if message.raw is not None and message.envelope_from is not None:
            return list(message.content.to)
        return [_addr(a) for a in message.content.recipients]


def _without(recipients: list[str], banned: frozenset[str]
             ) -> tuple[list[str], tuple[dict[str, str | None], ...]]:
    """Recipients left to mail, and the suppressed ones as failed_recipients (§12.3)."""
    if not banned:
        return recipients, ()
    kept = [r for r in recipients if r.lower() not in banned]
    dropped = tuple({"address": r, "code": None, "reason": "suppressed"}
                    for r in recipients if r.lower() in banned)
    return kept, dropped


def _addr(item: str) -> str:
    """The addr-spec of an address item (display name dropped)."""
    try:
        return split_address(item)[1]
    except ValueError:
        return email.utils.parseaddr(item)[1]


def _fetch_inline(attachment: Attachment) -> tuple[str, str, bytes]:
    """Attachment content for the inline mode (the only one this instance fetches)."""
    if attachment.fetch_mode != "base64":
        raise ValueError(f"invalid attachment: fetch_mode {attachment.fetch_mode} "
                         "is not available on this instance")
    data = compose.decode_base64(attachment.storage_path)
    mime = attachment.mime_type or mimetypes.guess_type(attachment.filename)[0]
    return attachment.filename, mime or "application/octet-stream", data
