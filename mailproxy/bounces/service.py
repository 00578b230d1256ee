"""Bounce and suppression use cases (§12). Knows its ports (BounceStore, a tenant scope check,
a clock) and nothing of the adapters; the dashboard and the REST API both go through it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailproxy.addresses import split_address
from mailproxy.bounces import correlate
from mailproxy.bounces.model import (
    BounceRecord,
    BounceView,
    MailboxCursor,
    MessageRef,
    NewSuppression,
    ParsedBounce,
    PecReceipt,
    PecRecord,
    Recorded,
    SoftRule,
    SuppressionCursor,
    SuppressionPage,
    SuppressionSource,
    normal_address,
)
from mailproxy.errors import InvalidRequest
from mailproxy.jsonsafe import storable

log = logging.getLogger("mailproxy.bounces")

MAX_ADDRESSES = 1000
MAX_REASON = 500
MAX_PAGE = 10000
# How long "this tenant has no suppressions" is trusted by the dispatch filter. A change
# made by this process clears it at once; one made by another process is seen within it.
NONE_TTL = 2.0


class BounceStore(Protocol):
    """Persistence port of this room; SQLite and PostgreSQL implement it."""

    async def list_bounces(self, tenant_id: str | None, *, before_id: int | None, limit: int
                           ) -> list[BounceView]: ...
    async def list_suppressions(
        self, tenant_id: str, *, address: str | None, limit: int, offset: int,
        after: SuppressionCursor | None,
    ) -> tuple[int, list[Any]]: ...
    async def add_suppressions(self, tenant_id: str, entries: Sequence[NewSuppression],
                               now: int) -> int: ...
    async def remove_suppressions(self, tenant_id: str, addresses: Sequence[str]) -> int: ...
    async def suppressed_among(self, tenant_id: str, addresses: Sequence[str]
                               ) -> frozenset[str]: ...
    async def has_suppressions(self, tenant_id: str) -> bool: ...
    async def message_by_pk(self, pk: str) -> MessageRef | None: ...
    async def messages_by_client_id(self, client_id: str) -> list[MessageRef]: ...
    async def messages_by_message_id(self, message_id: str, tenant_id: str | None = None,
                                     account_id: str | None = None) -> list[MessageRef]: ...
    async def get_cursor(self, mailbox: str) -> MailboxCursor | None: ...
    async def record_bounces(self, cursor: MailboxCursor, records: Sequence[BounceRecord],
                             rule: SoftRule, now: int) -> list[Recorded]: ...
    async def record_pec(self, cursor: MailboxCursor, records: Sequence[PecRecord], now: int
                         ) -> list[bool]: ...
    async def pec_timeouts(self, tenant_id: str, account_id: str, before: int, now: int
                           ) -> int: ...
    async def acquire_lease(self, name: str, owner: str, now: float, until: float
                            ) -> bool: ...
    async def release_lease(self, name: str, owner: str) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...


# Raises Forbidden / NotFound unless the caller may act on the tenant (MailService's check).
ScopeCheck = Callable[[Any, str], Awaitable[object]]


class SuppressionCheck(Protocol):
    """Which recipients of a tenant must not be mailed (§12.3): the dispatcher and the SMTP
    listener ask it; SuppressionFilter implements it."""

    async def suppressed(self, tenant_id: str, addresses: Sequence[str]) -> frozenset[str]: ...


class BounceObserver(Protocol):
    """Metrics: gmp_bounces_total{tenant_id, type}."""

    def bounce(self, tenant_id: str | None, bounce_type: str) -> None: ...


def parse_addresses(values: Any) -> list[str]:
    """Request addresses, normalised; a bad one refuses the whole request (400)."""
    if not isinstance(values, list) or len(values) > MAX_ADDRESSES:
        raise InvalidRequest(f"addresses must be a list of at most {MAX_ADDRESSES} addresses")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidRequest("addresses must be strings")
        if not storable(value):
            raise InvalidRequest("invalid address: it holds a NUL or an invalid character")
        try:
            addr = split_address(value)[1]
        except ValueError:
            raise InvalidRequest(f"invalid address: {value}") from None
        local, at, domain = addr.rpartition("@")
        if not at or not local or not domain or any(ch.isspace() for ch in addr):
            raise InvalidRequest(f"invalid address: {value}")
        normal = normal_address(addr)
        if normal not in out:
            out.append(normal)
    return out


@dataclass
class SuppressionFilter:
    """Which of a message's recipients are suppressed, for the dispatcher and SMTP RCPT.

    Most tenants have no suppression at all; for them one cheap query every NONE_TTL
    seconds answers, instead of one per message.
    """

    store: BounceStore
    clock: Clock
    _none_since: dict[str, float] = field(default_factory=dict)

    def changed(self, tenant_id: str) -> None:
        self._none_since.pop(tenant_id, None)

    async def suppressed(self, tenant_id: str, addresses: Sequence[str]) -> frozenset[str]:
        """The normalised addresses among `addresses` that must not be mailed."""
        if not addresses:
            return frozenset()
        now = self.clock.now()
        since = self._none_since.get(tenant_id)
        if since is not None and 0 <= now - since < NONE_TTL:
            return frozenset()
        if not await self.store.has_suppressions(tenant_id):
            self._none_since[tenant_id] = now
            return frozenset()
        self._none_since.pop(tenant_id, None)
        return await self.store.suppressed_among(
            tenant_id, sorted({normal_address(a) for a in addresses}))


@dataclass
class BounceService:
    store: BounceStore
    clock: Clock
    scope: ScopeCheck
    filter: SuppressionFilter
    soft_rule: SoftRule = field(default_factory=SoftRule)
    observer: BounceObserver | None = None
    on_events: Callable[[], None] | None = None

    # -- queries (dashboard and REST) --------------------------------------------------------

    async def list_bounces(self, caller: Any, tenant_id: str | None = None, *,
                           before_id: int | None = None, limit: int = 100) -> list[BounceView]:
        """Newest first; the next page starts before the last id returned. Without a tenant,
        the admin sees every tenant's and a tenant token its own."""
        if tenant_id is None and caller.tenant_id is not None:
            tenant_id = caller.tenant_id
        if tenant_id is not None:
            await self.scope(caller, tenant_id)
        return await self.store.list_bounces(tenant_id, before_id=before_id,
                                             limit=_limit(limit))

    async def list_suppressions(
        self, caller: Any, tenant_id: str, *, address: str | None = None, limit: int = 1000,
        offset: int = 0, after: SuppressionCursor | None = None,
    ) -> SuppressionPage:
        """Newest first. Page by `offset` (the REST API, §12.4) or by the keyset cursor of
        the previous page (`after`, stable while rows are added)."""
        await self.scope(caller, tenant_id)
        wanted = None if address is None else normal_address(address)
        total, items = await self.store.list_suppressions(
            tenant_id, address=wanted, limit=_limit(limit), offset=offset, after=after)
        cursor = None
        if items and len(items) == _limit(limit):
            last = items[-1]
            cursor = SuppressionCursor(last.created_ts, last.address)
        return SuppressionPage(total, tuple(items), cursor)

    # -- commands ----------------------------------------------------------------------------

    async def add_suppressions(self, caller: Any, tenant_id: str, addresses: Any,
                               reason: Any = None) -> int:
        """Manual entries; an address already suppressed keeps its entry."""
        await self.scope(caller, tenant_id)
        wanted = parse_addresses(addresses)
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise InvalidRequest(f"reason must be a string of at most {MAX_REASON} characters")
        entries = [NewSuppression(a, reason, SuppressionSource.MANUAL) for a in wanted]
        added = await self.store.add_suppressions(tenant_id, entries, int(self.clock.now()))
        self.filter.changed(tenant_id)
        return added

    async def remove_suppressions(self, caller: Any, tenant_id: str, addresses: Any) -> int:
        await self.scope(caller, tenant_id)
        removed = await self.store.remove_suppressions(tenant_id, parse_addresses(addresses))
        self.filter.changed(tenant_id)
        return removed

    # -- the poller's use case ---------------------------------------------------------------

    async def correlate(self, bounce: ParsedBounce) -> BounceRecord | None:
        """The message a bounce belongs to, by the rules of §12.2, or None."""
        for pk in (bounce.pk, correlate.pk_of_message_id(bounce.message_id)):
            if pk is None:
                continue
            found = await self.store.message_by_pk(pk)
            if found is not None:
                # Our pk is seen by every recipient of the message: a forged DSN naming it may
                # be recorded, but suppresses only an address the message was really sent to.
                sent_to = bounce.recipient in found.recipients
                return BounceRecord(found, bounce, suppress=bounce.from_dsn and sent_to)
        by_message_id = await self._by_client_message_id(bounce)
        if by_message_id is not None:
            return by_message_id
        if bounce.client_id:
            candidates = await self.store.messages_by_client_id(bounce.client_id)
            chosen = correlate.choose(candidates, bounce)
            if chosen is not None:
                return BounceRecord(chosen, bounce, suppress=False)
        return None

    async def _by_client_message_id(self, bounce: ParsedBounce) -> BounceRecord | None:
        """Rule 2 for a client-supplied Message-ID, looked up exactly in every tenant.

        A Message-ID only one stored message carries identifies it as well as the client's
        own scheme makes it unique, and may suppress (§12.3 bars only rules 3 and 4), but
        only an address that message was sent to: whoever learnt a client's Message-ID must
        not suppress any address of their choosing. When several carry it (one client
        reusing it, or two tenants choosing the same one), the narrowing of rule 3 picks at
        most one; that choice rests on the returned From and recipient, which an outsider
        can guess, so it is recorded but never suppresses.
        """
        key = correlate.message_id_key(bounce.message_id)
        if key is None:
            return None
        candidates = await self.store.messages_by_message_id(key)
        chosen = correlate.choose(candidates, bounce)
        if chosen is None:
            return None
        exact = len(candidates) == 1 and bounce.recipient in chosen.recipients
        return BounceRecord(chosen, bounce, suppress=bounce.from_dsn and exact)

    async def record(self, cursor: MailboxCursor, bounces: Sequence[ParsedBounce]
                     ) -> list[Recorded]:
        """Correlate and store the bounces of one poll, moving the cursor with them."""
        records: list[BounceRecord] = []
        for bounce in bounces:
            record = await self.correlate(bounce)
            if record is None:
                log.info("unmatched bounce for %s (%s)", bounce.recipient, bounce.type.value)
                self._count(None, bounce.type.value)
                continue
            records.append(record)
        results = await self.store.record_bounces(cursor, records, self.soft_rule,
                                                  int(self.clock.now()))
        for record, result in zip(records, results, strict=True):
            if result.duplicate:
                continue
            self._count(record.message.tenant_id, record.bounce.type.value)
            if result.suppressed:
                self.filter.changed(record.message.tenant_id)
        if any(not r.duplicate for r in results) and self.on_events is not None:
            self.on_events()
        return results

    # -- PEC receipts (§8.3) -------------------------------------------------------------

    async def receipt_message(self, receipt: PecReceipt, tenant_id: str, account_id: str
                              ) -> MessageRef | None:
        """The message of this PEC account a receipt is about, or None."""
        pk = correlate.pk_of_message_id(receipt.message_id)
        if pk is not None:
            found = await self.store.message_by_pk(pk)
            if found is not None and (found.tenant_id, found.account_id) == (tenant_id,
                                                                             account_id):
                return found
        key = correlate.message_id_key(receipt.message_id)
        if key is not None:
            sent = await self.store.messages_by_message_id(key, tenant_id, account_id)
            if len(sent) == 1:
                return sent[0]
        if receipt.client_id:
            mine = [m for m in await self.store.messages_by_client_id(receipt.client_id)
                    if m.tenant_id == tenant_id]
            if len(mine) == 1:
                return mine[0]
        return None

    async def record_receipts(self, cursor: MailboxCursor, tenant_id: str, account_id: str,
                              receipts: Sequence[PecReceipt]) -> int:
        """Correlate and store one poll's receipts with the cursor; events created."""
        records: list[PecRecord] = []
        for receipt in receipts:
            found = await self.receipt_message(receipt, tenant_id, account_id)
            if found is None:
                log.info("unmatched PEC receipt %s (%s) on %s/%s", receipt.event_type,
                         receipt.message_id, tenant_id, account_id)
                continue
            records.append(PecRecord(found, receipt))
        done = await self.store.record_pec(cursor, records, int(self.clock.now()))
        created = sum(done)
        if created and self.on_events is not None:
            self.on_events()
        return created

    async def pec_timeouts(self, tenant_id: str, account_id: str, timeout: int) -> int:
        """pec_timeout for the account's messages sent `timeout` s ago without acceptance."""
        now = int(self.clock.now())
        created = await self.store.pec_timeouts(tenant_id, account_id, now - timeout, now)
        if created and self.on_events is not None:
            self.on_events()
        return created

    def _count(self, tenant_id: str | None, bounce_type: str) -> None:
        if self.observer is not None:
            self.observer.bounce(tenant_id, bounce_type)


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))
