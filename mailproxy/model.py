"""Domain values: frozen, typed, standard library only."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Priority(enum.IntEnum):
    IMMEDIATE = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3


class Status(enum.StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    SENDING = "sending"
    SENT = "sent"
    ERROR = "error"
    BOUNCED = "bounced"
    SUPPRESSED = "suppressed"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.SENT, Status.ERROR, Status.BOUNCED, Status.SUPPRESSED})
WAITING_STATUSES = frozenset({Status.PENDING, Status.SCHEDULED, Status.DEFERRED})


class EventType(enum.StrEnum):
    SENT = "sent"
    ERROR = "error"
    DEFERRED = "deferred"
    BOUNCE = "bounce"
    PEC_ACCEPTANCE = "pec_acceptance"
    PEC_DELIVERY = "pec_delivery"
    PEC_ERROR = "pec_error"
    PEC_TIMEOUT = "pec_timeout"


class LimitBehavior(enum.StrEnum):
    DEFER = "defer"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Sends allowed per sliding window; None or <= 0 means unlimited."""

    minute: int | None = None
    hour: int | None = None
    day: int | None = None

    def windows(self) -> tuple[tuple[int, int], ...]:
        """(window seconds, limit) pairs that are actually limited."""
        pairs = ((60, self.minute), (3600, self.hour), (86400, self.day))
        return tuple((w, n) for w, n in pairs if n is not None and n > 0)


@dataclass(frozen=True, slots=True)
class ClientAuth:
    method: str = "none"
    token: str | None = None
    user: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str | None = None
    client_base_url: str | None = None
    client_sync_path: str = "/mail-proxy/sync"
    client_attachment_path: str = "/mail-proxy/attachments"
    client_auth: ClientAuth = field(default_factory=ClientAuth)
    webhook_secret: str | None = None
    rate_limits: RateLimits | None = None
    large_file_config: dict[str, Any] | None = None
    active: bool = True
    api_key_hash: str | None = None
    api_key_expires_at: int | None = None
    suspended_batches: tuple[str, ...] = ()
    urls_set_by_tenant: bool = False
    created_at: str | None = None
    updated_at: str | None = None

    def holds(self, batch_code: str | None) -> bool:
        """Whether a message of this batch is held by suspension or inactivity."""
        if not self.active or "*" in self.suspended_batches:
            return True
        return batch_code is not None and batch_code in self.suspended_batches


@dataclass(frozen=True, slots=True)
class Account:
    tenant_id: str
    id: str
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    use_tls: bool | None = None
    ttl: int = 300
    limits: RateLimits = field(default_factory=RateLimits)
    limit_behavior: LimitBehavior = LimitBehavior.DEFER
    batch_size: int = 50
    submission_password_hash: str | None = None
    is_pec_account: bool = False
    imap_host: str | None = None
    imap_port: int = 993
    imap_user: str | None = None
    imap_password: str | None = None
    imap_folder: str = "INBOX"
    imap_ssl: bool = True
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant_id, self.id)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    storage_path: str
    fetch_mode: str
    mime_type: str | None = None
    content_md5: str | None = None


@dataclass(frozen=True, slots=True)
class Content:
    """What the worker needs to build the bytes of one message."""

    from_addr: str
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    reply_to: str | None = None
    return_path: str | None = None
    subject: str = ""
    body: str = ""
    html_body: str | None = None
    body_is_html: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    message_id: str | None = None
    attachments: tuple[Attachment, ...] = ()
    raw: bytes | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.to + self.cc + self.bcc


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message ready to be stored (or an intake rejection to store as error)."""

    tenant_id: str
    id: str
    account_id: str | None
    priority: Priority
    deferred_ts: int | None
    batch_code: str | None
    payload: dict[str, Any]
    raw: bytes | None = None
    # What intake made of the payload, stored with it; None for an intake error. A row
    # stored without it is read as the rows of earlier releases are (store/legacy.py).
    content: Content | None = None
    error: str | None = None
    is_pec: bool = False
    envelope_from: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message claimed under a lease, with all it needs to be sent: `content` is what
    intake accepted (never checked again); `payload` is the message as submitted, read
    only for the attachment credentials sealed in it."""

    pk: str
    tenant_id: str
    id: str
    account_id: str
    priority: int
    retry_count: int
    created_ts: float
    date_ts: int
    payload: dict[str, Any]
    raw: bytes | None
    content: Content
    seq: int = 0
    envelope_from: str | None = None
    rate_scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a send needs beyond its row (§9.3 step 2): fetched attachments as
    (filename, mime type, bytes), bodies with the large-file footer, or the bytes of a raw
    message whose large parts became links. None fields mean "as stored"."""

    attachments: tuple[tuple[str, str, bytes], ...] = ()
    body: str | None = None
    html_body: str | None = None
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class OffloadedFile:
    """A large attachment uploaded to a tenant's storage (§11), until cleanup deletes it."""

    file_id: str
    tenant_id: str
    storage_url: str
    object_key: str
    filename: str
    mime_type: str
    size: int
    created_ts: int
    expires_ts: int
    lifespan_days: int | None = None
    downloaded_ts: int | None = None
    delete_ts: int = 0


@dataclass(frozen=True, slots=True)
class RateLimited:
    """A rate-limit decision taken while claiming, for metrics."""

    tenant_id: str
    account_id: str
    deferred: bool


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    messages: tuple[Claimed, ...]
    blocked: dict[tuple[str, str], int] = field(default_factory=dict)
    rate_limited: tuple[RateLimited, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    pk: str
    tenant_id: str
    account_id: str | None
    client_id: str
    event_type: EventType
    event_ts: int
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reported_ts: int | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    failed_recipients: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Deferred:
    reason: str
    next_ts: int
    retry_count: int
    consumes_retry: bool = True


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    code: int | None = None
    suppressed: bool = False


Outcome = Sent | Deferred | Failed


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Per-item result of an enqueue: queued, or the rejection reason."""

    index: int
    id: str | None
    queued: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SyncState:
    """Report-loop state of one tenant, persisted so that restarts and peers share it.

    `last_call_ts` is the last call of any outcome (it times heartbeats); `last_sync_ts` the
    last 2xx. `next_sync_after` is the tenant's do-not-disturb for heartbeats; `resync_at`
    the extra sync a reply with `queued > 0` asked for.
    """

    tenant_id: str
    last_sync_ts: int | None = None
    last_call_ts: float | None = None
    consecutive_failures: int = 0
    retry_at: float | None = None
    last_error: str | None = None
    next_sync_after: int | None = None
    resync_at: float | None = None


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    """Instance settings kept in the database (PUT /instance); the password is encrypted."""

    name: str | None = None
    bounce_enabled: bool = False
    bounce_imap_host: str | None = None
    bounce_imap_port: int | None = None
    bounce_imap_user: str | None = None
    bounce_imap_password: str | None = None
    bounce_imap_folder: str = "INBOX"
    bounce_imap_ssl: bool = True
    bounce_poll_interval: int = 60
    bounce_return_path: str | None = None
    created_at: str | None = None
    updated_at: str | None = None


@dataclass(frozen=True, slots=True)
class CommandEntry:
    """One command-log row; payload already redacted."""

    command_ts: int
    endpoint: str
    tenant_id: str | None
    payload: Any
    response_status: int
    id: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One event of a listed message (GET /messages?include_history=true)."""

    event_id: str
    event_type: str
    event_ts: int
    description: str | None
    metadata: dict[str, Any]
    reported_ts: int | None


@dataclass(frozen=True, slots=True)
class MessageView:
    """A stored message as the listing shows it (§5.2): its status as seen at the time of the
    listing, the payload with its attachment secrets masked; the edge renders it."""

    pk: str
    client_id: str
    tenant_id: str
    tenant_name: str
    account_id: str | None
    status: str
    suspended: bool
    priority: int
    batch_code: str | None
    deferred_ts: int | None
    retry_count: int
    sent_ts: int | None
    error_ts: int | None
    error: str | None
    reported_ts: int | None
    bounce_type: str | None
    bounce_code: str | None
    bounce_reason: str | None
    bounce_ts: int | None
    is_pec: bool
    last_error: str | None
    created_at: str  # `YYYY-MM-DD HH:MM:SS` UTC, as the contract keeps it
    updated_at: str
    message: dict[str, Any]
    history: tuple[HistoryEntry, ...] | None = None
