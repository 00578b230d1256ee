"""SMTP submission use cases (contract §13): who may submit, what is accepted, and how.

The listener (ingress/smtp.py) only translates between SMTP and these calls; every decision
is taken here, against the same store, clock and waker as REST intake, so a message that
arrives over SMTP becomes the same stored row as a REST `raw` message. StoreError is not
caught here: the listener answers it with a 4xx, since nothing was committed.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import math
import re
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.policy import default as _HEADER_POLICY
from typing import Any, Protocol

from mailproxy import compose, randomid
from mailproxy.addresses import check_address
from mailproxy.apikeys import tenant_for_token
from mailproxy.bounces.service import SuppressionCheck
from mailproxy.errors import StoreError
from mailproxy.model import Content, NewMessage, Priority
from mailproxy.policy import priority_text
from mailproxy.ports import Clock, DirectoryReader, Intake, Waker
from mailproxy.tokens import check_password, hash_password

AUTH_WINDOW_SECONDS = 600.0
# Within one session, tenant and account state found at a MAIL FROM is trusted this long,
# so that a client sending many messages does not pay two lookups per message; any tenant or
# account change (here, or on another instance through the store's notifications) ends it.
SENDER_RECHECK_SECONDS = 1.0
MAX_CLIENT_ID = 255
MAX_BATCH_CODE = 64
CONTROL_ID = "x-mail-proxy-id"
CONTROL_PRIORITY = "x-mail-proxy-priority"
CONTROL_BATCH = "x-mail-proxy-batch"
CONTROL_DEFERRED = "x-mail-proxy-deferred-ts"
CONTROL_HEADERS = (CONTROL_ID, CONTROL_PRIORITY, CONTROL_BATCH, CONTROL_DEFERRED)


class SubmissionStore(Intake, DirectoryReader, Protocol):
    """Where an SMTP submission is committed, and the tenants and accounts it logs in to."""


@dataclass(frozen=True, slots=True)
class Login:
    """An authenticated submission identity: `<tenant_id>/<account_id>`."""

    tenant_id: str
    account_id: str


@dataclass(frozen=True, slots=True)
class Sender:
    """An accepted MAIL FROM: whose message it is and its envelope sender ("" for <>)."""

    login: Login
    address: str
    is_pec: bool = False
    checked_at: float = 0.0
    generation: int = 0  # SmtpSubmission.generation when checked


class SenderVerdict(enum.Enum):
    OK = "ok"
    MALFORMED = "malformed"
    UNKNOWN_ACCOUNT = "unknown account"
    INACTIVE_TENANT = "inactive tenant"


class RecipientVerdict(enum.Enum):
    OK = "ok"
    MALFORMED = "malformed"
    TOO_MANY = "too many"


class Acceptance(enum.Enum):
    QUEUED = "queued"
    ALREADY_ACCEPTED = "already accepted"
    BEING_SENT = "being sent"
    INVALID_CONTROL = "invalid control header"
    TOO_LARGE = "too large"


@dataclass(frozen=True, slots=True)
class Submitted:
    status: Acceptance
    client_id: str | None = None
    detail: str | None = None


class InvalidControl(ValueError):
    """A control header carries a value that cannot be used; the text names the header."""


@dataclass(frozen=True, slots=True)
class Control:
    """What the optional X-Mail-Proxy-* headers of a submitted message ask for."""

    client_id: str | None
    priority: Priority
    batch_code: str | None
    deferred_ts: int | None


def envelope_address_ok(address: str, smtputf8: bool) -> bool:
    """RFC 5321 path syntax as §4.5 checks it; non-ASCII only in an SMTPUTF8 transaction."""
    if not smtputf8 and not address.isascii():
        return False
    try:
        check_address(address, allow_utf8_local=True)
    except ValueError:
        return False
    return True


def _priority(value: str) -> Priority:
    priority = priority_text(value)
    if priority is None:
        raise InvalidControl("X-Mail-Proxy-Priority")
    return priority


def _deferred_ts(value: str) -> int:
    try:
        number = float(value)
    except ValueError:
        raise InvalidControl("X-Mail-Proxy-Deferred-Ts") from None
    if not math.isfinite(number) or number < 0:
        raise InvalidControl("X-Mail-Proxy-Deferred-Ts")
    return int(number)


# NUL and other control characters, and U+FFFD (what invalid UTF-8 decodes to): a control
# value holding one is refused rather than stored altered (PostgreSQL cannot store NUL).
_UNCLEAN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ufffd]")
_CONTROL_NAMES = {CONTROL_ID: "X-Mail-Proxy-ID", CONTROL_PRIORITY: "X-Mail-Proxy-Priority",
                  CONTROL_BATCH: "X-Mail-Proxy-Batch", CONTROL_DEFERRED: "X-Mail-Proxy-Deferred-Ts"}


def read_control(values: Mapping[str, str], default_priority: Priority) -> Control:
    """Parse the control header values, by lower-case name (raises InvalidControl)."""
    for key, name in _CONTROL_NAMES.items():
        if _UNCLEAN.search(values.get(key, "")):
            raise InvalidControl(f"{name} (not clean text)")
    client_id = values.get(CONTROL_ID) or None
    if client_id is not None and len(client_id) > MAX_CLIENT_ID:
        raise InvalidControl("X-Mail-Proxy-ID")
    batch_code = values.get(CONTROL_BATCH) or None
    if batch_code is not None and len(batch_code) > MAX_BATCH_CODE:
        raise InvalidControl("X-Mail-Proxy-Batch")
    priority = default_priority
    if values.get(CONTROL_PRIORITY):
        priority = _priority(values[CONTROL_PRIORITY])
    deferred = values.get(CONTROL_DEFERRED)
    return Control(
        client_id=client_id,
        priority=priority,
        batch_code=batch_code,
        deferred_ts=_deferred_ts(deferred) if deferred else None,
    )


def _decoded_subject(value: str | None) -> str | None:
    """The Subject for listings, encoded-words decoded; a malformed one must never refuse
    the message. Plain text skips the `email` header parser, which is slow."""
    if value is None or "=?" not in value:
        return value
    try:
        return str(_HEADER_POLICY.header_factory("subject", value))
    except Exception:  # the email package may raise almost anything on hostile headers
        return None


@functools.cache
def _decoy_hash() -> str:
    """A password hash nobody knows the password of (made once per process)."""
    return hash_password(uuid.uuid4().hex)


@dataclass
class AuthThrottle:
    """Failed AUTH attempts per client address in a sliding window (§13: 421 after N)."""

    max_failures: int
    clock: Clock
    window: float = AUTH_WINDOW_SECONDS
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, client: str) -> bool:
        if self.max_failures <= 0:
            return False
        return len(self._recent(client)) >= self.max_failures

    def failed(self, client: str) -> None:
        self._recent(client).append(self.clock.now())
        if len(self._failures) > 10_000:
            self._forget_old()

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        horizon = self.clock.now() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return times

    def _forget_old(self) -> None:
        horizon = self.clock.now() - self.window
        for client in [c for c, t in self._failures.items() if not t or t[-1] <= horizon]:
            del self._failures[client]


@dataclass
class SmtpSubmission:
    store: SubmissionStore
    clock: Clock
    max_size: int
    max_recipients: int
    default_priority: Priority
    waker: Waker | None = None
    suppressions: SuppressionCheck | None = None
    generation: int = 0  # bumped by every tenant or account change

    def changed(self) -> None:
        """A tenant or account changed: no session may reuse an earlier MAIL FROM check."""
        self.generation += 1

    async def login(self, username: str, password: str) -> Login | None:
        """`<tenant_id>/<account_id>` with the tenant's API token or the account's
        submission password; None when the credentials are not valid or the pair does not
        exist (answered alike, so that probing learns nothing about which accounts exist)."""
        tenant_id, slash, account_id = username.partition("/")
        if not slash or not tenant_id or not account_id or not password:
            return None
        tenant = await tenant_for_token(self.store, password, self.clock.now())
        account = await self.store.get_account(tenant_id, account_id)
        # The tenant's token is right only for an account that exists: an unknown pair is
        # refused here (535, with the failed-AUTH delay and count), not later at MAIL FROM.
        if tenant is not None and tenant.id == tenant_id and account is not None:
            return Login(tenant_id, account_id)
        stored = account.submission_password_hash if account is not None else None
        # Every refusal costs the same scrypt (against a decoy when there is no password to
        # check), so its timing does not tell which accounts exist. Off the event loop:
        # scrypt takes tens of milliseconds of CPU.
        valid = await asyncio.to_thread(check_password, password, stored or _decoy_hash())
        return Login(tenant_id, account_id) if valid and stored is not None else None

    async def sender(
        self, login: Login, address: str, smtputf8: bool, previous: Sender | None = None
    ) -> tuple[SenderVerdict, Sender | None]:
        """MAIL FROM: the envelope sender is used verbatim ("" is the null sender).

        `previous` is the session's last accepted sender, reused while recent enough.
        """
        if address and not envelope_address_ok(address, smtputf8):
            return SenderVerdict.MALFORMED, None
        now = self.clock.now()
        generation = self.generation  # as of before the lookups: a change during them counts
        if (previous is not None and previous.login == login
                and previous.generation == self.generation
                and 0 <= now - previous.checked_at < SENDER_RECHECK_SECONDS):
            return SenderVerdict.OK, replace(previous, address=address)
        tenant = await self.store.get_tenant(login.tenant_id)
        if tenant is None or not tenant.active:
            return SenderVerdict.INACTIVE_TENANT, None
        account = await self.store.get_account(login.tenant_id, login.account_id)
        if account is None:
            return SenderVerdict.UNKNOWN_ACCOUNT, None
        return SenderVerdict.OK, Sender(login, address, account.is_pec_account, now,
                                        generation)

    def recipient(self, address: str, smtputf8: bool, accepted: int) -> RecipientVerdict:
        """RCPT TO, given how many recipients the transaction already has."""
        if accepted >= self.max_recipients:
            return RecipientVerdict.TOO_MANY
        if not envelope_address_ok(address, smtputf8):
            return RecipientVerdict.MALFORMED
        return RecipientVerdict.OK

    async def suppressed(self, sender: Sender, address: str) -> bool:
        """RCPT TO of an address on the tenant's suppression list (§12.3): refused."""
        if self.suppressions is None:
            return False
        found = await self.suppressions.suppressed(sender.login.tenant_id, [address])
        return bool(found)

    async def submit(self, sender: Sender, recipients: Sequence[str], raw: bytes) -> Submitted:
        """Store the message as received; QUEUED only once the row is committed."""
        if len(raw) > self.max_size:
            return Submitted(Acceptance.TOO_LARGE)
        headers = compose.read_control_headers(raw, (*CONTROL_HEADERS, "subject"))
        try:
            control = read_control(headers, self.default_priority)
        except InvalidControl as exc:
            return Submitted(Acceptance.INVALID_CONTROL, detail=str(exc))
        client_id = control.client_id or f"smtp-{randomid.uuid4()}"
        login = sender.login
        subject = _decoded_subject(headers.get("subject"))
        payload: dict[str, Any] = {
            "id": client_id,
            "tenant_id": login.tenant_id,
            "account_id": login.account_id,
            "from": sender.address,
            "to": list(recipients),
            "raw_size": len(raw),
            "subject": subject,
        }
        # Sent as received: the envelope is the content (the raw bytes are stored beside it).
        content = Content(from_addr=sender.address, to=tuple(recipients), subject=subject or "")
        message = NewMessage(
            tenant_id=login.tenant_id, id=client_id, account_id=login.account_id,
            priority=control.priority, deferred_ts=control.deferred_ts,
            batch_code=control.batch_code, payload=payload, raw=raw, content=content,
            is_pec=sender.is_pec, envelope_from=sender.address,
        )
        [reason] = await self.store.enqueue([message], self.clock.now())
        if reason is None:
            if self.waker is not None:
                self.waker.wake(control.priority == Priority.IMMEDIATE)
            return Submitted(Acceptance.QUEUED, client_id)
        if reason == "message is being sent":
            return Submitted(Acceptance.BEING_SENT, client_id)
        if reason == "already sent":
            return Submitted(Acceptance.ALREADY_ACCEPTED, client_id)
        # A valid message can only meet an existing row; anything else is a store fault.
        raise StoreError(f"unexpected enqueue result for {client_id}: {reason}")
