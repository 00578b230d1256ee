"""What the dashboard reads and changes, as one small port, and the values it passes.

The SQL backends implement DashboardStore (mailproxy.store.sqlite_dashboard and
mailproxy.store.postgres_dashboard); the views only ever see these frozen values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailproxy.bounces.model import BounceView, SuppressionView
from mailproxy.service import Caller

STATUSES = ("pending", "scheduled", "deferred", "sending", "sent", "error", "bounced",
            "suppressed")
# Statuses in which an operator may still retry or cancel a message.
RETRYABLE = ("scheduled", "deferred")
CANCELLABLE = ("pending", "scheduled", "deferred")


@dataclass(frozen=True, slots=True)
class Filter:
    """A queue query (the query box, parsed), already limited to the caller's scope."""

    tenant_id: str | None = None
    pk: str | None = None
    to: str | None = None
    sender: str | None = None
    account_id: str | None = None
    status: str | None = None
    batch_code: str | None = None
    priority: int | None = None
    before: float | None = None
    after: float | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the last (created_ts, seq) shown, newest first."""

    created_ts: float
    seq: int

    def encode(self) -> str:
        return f"{self.created_ts!r}_{self.seq}"

    @staticmethod
    def decode(text: str | None) -> Cursor | None:
        if not text:
            return None
        ts, _, seq = text.partition("_")
        try:
            cursor = Cursor(float(ts), int(seq))
        except ValueError:
            return None
        # Out of a database integer's range (or not finite) it points at nothing: start over.
        if not (math.isfinite(cursor.created_ts) and 0 <= cursor.seq < 2**63):
            return None
        return cursor


@dataclass(frozen=True, slots=True)
class MessageRow:
    seq: int
    pk: str
    id: str
    tenant_id: str
    account_id: str | None
    status: str
    priority: int
    batch_code: str | None
    subject: str | None
    sender: str | None
    to: str
    created_ts: float
    deferred_ts: int | None
    retry_count: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Page:
    rows: tuple[MessageRow, ...]
    next_cursor: Cursor | None
    scanned: int  # how many messages the bounded scan looked at
    partial: bool  # the scan window ended before the page filled: older matches may exist


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """An event of the message (what tenants are told)."""

    event_id: int
    event_type: str
    event_ts: int
    description: str | None
    metadata: Mapping[str, Any]
    reported_ts: int | None


@dataclass(frozen=True, slots=True)
class AttemptTime:
    started_ts: float
    ended_ts: float
    outcome: str


@dataclass(frozen=True, slots=True)
class MessageDetail:
    row: MessageRow
    payload: Mapping[str, Any]
    raw_head: bytes | None
    raw_size: int | None
    sent_ts: int | None
    reported_ts: int | None
    updated_ts: float
    bounce: Mapping[str, Any]
    history: tuple[HistoryItem, ...]
    attempts: tuple[AttemptTime, ...]


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute: int
    kind: str
    n: int


@dataclass(frozen=True, slots=True)
class ActionResult:
    matched: int
    changed: int
    tenants: tuple[str, ...] = field(default_factory=tuple)


class DashboardStore(Protocol):
    """The dashboard's queries and its few writes; every call names the tenant scope."""

    async def status_counts(self, tenant_id: str | None, now: int
                            ) -> dict[str, dict[str, int]]: ...
    async def minute_counts(self, tenant_id: str | None, since: int) -> list[MinuteCount]: ...
    async def oldest_waiting(self, tenant_id: str | None, now: int) -> float | None: ...
    async def page(self, flt: Filter, now: int, cursor: Cursor | None, limit: int,
                   scan: int) -> Page: ...
    async def message(self, pk: str, now: int) -> MessageDetail | None: ...
    async def count_actionable(self, flt: Filter, action: str, now: int) -> int: ...
    async def act(self, flt: Filter, action: str, now: int, expected: int | None
                  ) -> ActionResult: ...
    async def rate_use(self, scopes: Sequence[str], now: int
                       ) -> dict[str, tuple[int, int, int]]: ...
    async def waiting_of_account(self, tenant_id: str, account_id: str) -> int: ...
    async def maintain(self, now: int) -> None: ...
    async def close(self) -> None: ...


class BounceSource(Protocol):
    """Bounces and suppressions (§12), as the caller may see them. ServiceBounces reads
    them through the bounce use cases; NoBounces is the empty state of a build without."""

    available: bool

    async def recent_bounces(self, caller: Caller, limit: int) -> list[BounceView]: ...
    async def suppressions(self, caller: Caller, tenant_ids: Sequence[str], limit: int
                           ) -> list[SuppressionView]: ...
    async def add_suppression(self, caller: Caller, tenant_id: str, address: str,
                              reason: str | None) -> int: ...
    async def remove_suppression(self, caller: Caller, tenant_id: str, address: str
                                 ) -> int: ...


class NoBounces:
    """The empty state of the bounce page when bounce storage is not wired in."""

    available = False

    async def recent_bounces(self, caller: Caller, limit: int) -> list[BounceView]:
        return []

    async def suppressions(self, caller: Caller, tenant_ids: Sequence[str], limit: int
                           ) -> list[SuppressionView]:
        return []

    async def add_suppression(self, caller: Caller, tenant_id: str, address: str,
                              reason: str | None) -> int:
        return 0

    async def remove_suppression(self, caller: Caller, tenant_id: str, address: str) -> int:
        return 0
