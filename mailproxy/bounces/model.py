"""Bounce and suppression values: frozen, typed, standard library only."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass


class BounceType(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"


class SuppressionSource(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    MANUAL = "manual"


def utc_text(ts: int) -> str:
    """`YYYY-MM-DD HH:MM:SS` in UTC, the contract's form of `created_at` (§1)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def normal_address(address: str) -> str:
    """Suppressions compare addresses case-insensitively: they are kept lower-case."""
    return address.strip().lower()


@dataclass(frozen=True, slots=True)
class BounceView:
    """One recorded bounce, as the API and the dashboard read it."""

    id: int
    tenant_id: str
    message_id: str  # the client id of the bounced message
    recipient: str
    type: BounceType
    code: str | None  # dotted status, e.g. "5.1.1"
    reason: str | None
    created_ts: int
    message_pk: str = ""
    reported_ts: int | None = None

    @property
    def created_at(self) -> str:
        return utc_text(self.created_ts)

    @property
    def reported(self) -> bool:
        return self.reported_ts is not None


@dataclass(frozen=True, slots=True)
class SuppressionView:
    """One suppressed address of a tenant."""

    tenant_id: str
    address: str
    reason: str | None
    source: SuppressionSource
    created_ts: int
    bounce_code: str | None = None
    message_id: str | None = None

    @property
    def created_at(self) -> str:
        return utc_text(self.created_ts)


@dataclass(frozen=True, slots=True)
class SuppressionCursor:
    """Keyset position in a suppression listing (newest first)."""

    created_ts: int
    address: str


@dataclass(frozen=True, slots=True)
class SuppressionPage:
    total: int
    items: tuple[SuppressionView, ...]
    next_cursor: SuppressionCursor | None


@dataclass(frozen=True, slots=True)
class NewSuppression:
    address: str
    reason: str | None
    source: SuppressionSource
    bounce_code: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedBounce:
    """What the parser read from one returned message, for one failed recipient.

    `pk`, `message_id` and `client_id` are the correlation keys found in the returned
    headers (X-Mail-Proxy-ID, Message-ID, X-Genro-Mail-ID); `strong` is False when they
    came from the heuristic path (free text), which never suppresses (§12.2 rule 4).
    """

    recipient: str
    type: BounceType
    code: str | None
    reason: str | None
    fingerprint: str
    pk: str | None = None
    message_id: str | None = None
    client_id: str | None = None
    original_from: str | None = None
    from_dsn: bool = True


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A stored message a bounce may belong to."""

    seq: int
    pk: str
    tenant_id: str
    client_id: str
    account_id: str | None
    status: str
    from_addr: str | None
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BounceRecord:
    """A correlated bounce to store: one bounce event, maybe a suppression."""

    message: MessageRef
    bounce: ParsedBounce
    suppress: bool  # the match was exact (rules 1-2): a hard bounce may suppress


@dataclass(frozen=True, slots=True)
class SoftRule:
    """Soft bounces suppress after `limit` of them within `window` seconds (0 = never)."""

    limit: int = 5
    window: int = 604800


@dataclass(frozen=True, slots=True)
class Recorded:
    """The store's answer for one BounceRecord."""

    duplicate: bool
    suppressed: bool = False


@dataclass(frozen=True, slots=True)
class MailboxCursor:
    mailbox: str
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class PecReceipt:
    """A PEC receipt (§8.3): its event type and what ties it to the message we sent."""

    event_type: str  # pec_acceptance | pec_delivery | pec_error
    details: str | None
    fingerprint: str
    message_id: str | None = None  # X-Riferimento-Message-ID
    client_id: str | None = None  # top-level X-Genro-Mail-ID


@dataclass(frozen=True, slots=True)
class PecRecord:
    message: MessageRef
    receipt: PecReceipt
