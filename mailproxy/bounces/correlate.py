"""Pure rules that tie a parsed bounce to the message that caused it (§12.2).

Rules 1 and 2 use the message `pk` (a UUID we generated and stamped in X-Mail-Proxy-ID and
in our Message-ID), so they are exact across tenants. Rules 3 and 4 rest on values an
outsider can guess (a client id) and are accepted only when exactly one message fits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mailproxy.addresses import parse_address_list, split_address
from mailproxy.bounces.model import (
    BounceRecord,
    BounceType,
    MailboxCursor,
    MessageRef,
    NewSuppression,
    ParsedBounce,
    PecRecord,
    SoftRule,
    SuppressionSource,
    normal_address,
)

_PK = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OUR_MESSAGE_ID = re.compile(
    r"<?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})@[^>]*>?")


def valid_pk(value: str | None) -> str | None:
    """The pk when value has the shape of one (we never look up anything else)."""
    if value is None:
        return None
    text = value.strip().lower()
    return text if _PK.match(text) else None


def pk_of_message_id(message_id: str | None) -> str | None:
    """The pk inside a Message-ID of our generated form `<pk@domain>`."""
    if not message_id:
        return None
    match = _OUR_MESSAGE_ID.fullmatch(message_id.strip().lower())
    return match.group(1) if match else None


# Longer client Message-IDs are not indexed (a PostgreSQL btree entry has a size limit, and
# no line of a header may exceed 998 characters anyway): such messages match by pk only.
MAX_MESSAGE_ID = 900


def message_id_key(value: Any) -> str | None:
    """A Message-ID as it is stored and looked up: one line, in angle brackets, exact case."""
    if not isinstance(value, str):
        return None
    text = "".join(value.split())
    if not text or "\x00" in text or len(text) > MAX_MESSAGE_ID:
        return None
    if not (text.startswith("<") and text.endswith(">")):
        text = "<" + text.removeprefix("<").removesuffix(">") + ">"
    return text if len(text) > 2 else None


MAX_HEADER_BLOCK = 262144  # a Message-ID further into a raw message is not indexed
_RAW_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
                             re.I | re.M)


def _raw_message_id(raw: bytes) -> str | None:
    """The first Message-ID field of the header block, unfolded: one regex search over the
    header block only (this runs for every raw and SMTP-submitted message at intake)."""
    limit = min(len(raw), MAX_HEADER_BLOCK)
    crlf = raw.find(b"\r\n\r\n", 0, limit)
    end = crlf if crlf >= 0 else limit
    lf = raw.find(b"\n\n", 0, end)
    found = _RAW_MESSAGE_ID.search(raw, 0, (lf if lf >= 0 else end) + 1)
    return None if found is None else found.group(1).decode("utf-8", "replace")


def _header_field(headers: Any, name: str) -> Any:
    """The last value given for `name` (case-insensitive), as intake keeps it."""
    if not isinstance(headers, Mapping):
        return None
    found = None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            found = value
    return found


def sent_message_id(payload: Mapping[str, Any], raw: bytes | None) -> str | None:
    """The client-supplied Message-ID a message goes out with, or None when the proxy
    generates it (compose.py: a `Message-ID` in `headers` wins over `message_id`; raw and
    SMTP-submitted mail keep their own header). Stored at intake for rule 2 of §12.2."""
    if raw is not None:
        return message_id_key(_raw_message_id(raw))
    value = _header_field(payload.get("headers"), "message-id")
    return message_id_key(value if value is not None else payload.get("message_id"))


def digits(code: str | None) -> str | None:
    """`5.1.1` -> `511`: the form of bounce_code in reports (§8.2)."""
    if code is None:
        return None
    joined = "".join(ch for ch in code if ch.isdigit())
    return joined or None


def _addr(item: str) -> str | None:
    try:
        return normal_address(split_address(item)[1])
    except ValueError:
        return None


def _list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    try:
        return parse_address_list(value)
    except (ValueError, TypeError):
        return []


def addresses_of(payload: Mapping[str, Any], envelope_from: str | None
                 ) -> tuple[str | None, tuple[str, ...]]:
    """(from address, recipients) of a stored payload, all normalised."""
    sender = payload.get("from") or payload.get("from_addr") or envelope_from
    from_addr = _addr(sender) if isinstance(sender, str) and sender else None
    found: list[str] = []
    for key in ("to", "cc", "bcc"):
        for item in _list(payload.get(key)):
            addr = _addr(item)
            if addr is not None:
                found.append(addr)
    return from_addr, tuple(found)


def choose(candidates: list[MessageRef], bounce: ParsedBounce) -> MessageRef | None:
    """Rule 3: among messages with the returned client id, the single one that fits."""
    if len(candidates) > 1 and bounce.original_from:
        sender = _addr(bounce.original_from)
        candidates = [m for m in candidates if m.from_addr == sender]
    if len(candidates) > 1:
        candidates = [m for m in candidates if bounce.recipient in m.recipients]
    return candidates[0] if len(candidates) == 1 else None


def record_args(record: BounceRecord, now: int) -> dict[str, Any]:
    """Named parameters of the bounce queries, shared by both SQL backends."""
    m, b = record.message, record.bounce
    return {"tenant_id": m.tenant_id, "seq": m.seq, "pk": m.pk, "client_id": m.client_id,
            "recipient": b.recipient, "type": b.type.value, "code": b.code,
            "digits": digits(b.code), "reason": b.reason, "fingerprint": b.fingerprint,
            "now": now}


def suppression_for(record: BounceRecord, source: SuppressionSource) -> NewSuppression:
    b = record.bounce
    return NewSuppression(address=b.recipient, reason=b.reason, source=source,
                          bounce_code=digits(b.code), message_id=record.message.client_id)


def suppression_args(tenant_id: str, e: NewSuppression, now: int) -> dict[str, Any]:
    """Named parameters of add_suppression, shared by both SQL backends."""
    return {"tenant_id": tenant_id, "address": e.address, "reason": e.reason,
            "source": e.source.value, "bounce_code": e.bounce_code,
            "message_id": e.message_id, "now": now}


def needs_soft_count(record: BounceRecord, rule: SoftRule) -> bool:
    return record.suppress and record.bounce.type is BounceType.SOFT and rule.limit > 0


def suppression_source(record: BounceRecord, rule: SoftRule, soft_count: int
                       ) -> SuppressionSource | None:
    """Hard bounces matched exactly suppress; soft ones after rule.limit in the window."""
    if not record.suppress:
        return None
    if record.bounce.type is BounceType.HARD:
        return SuppressionSource.HARD_BOUNCE
    if rule.limit > 0 and soft_count >= rule.limit:
        return SuppressionSource.SOFT_BOUNCE
    return None


PEC_TIMEOUT_BATCH = 500


def pec_args(record: PecRecord, now: int) -> dict[str, Any]:
    """Named parameters of the PEC receipt queries, shared by both SQL backends."""
    r = record.receipt
    return {"fingerprint": r.fingerprint, "seq": record.message.seq,
            "tenant_id": record.message.tenant_id, "event_type": r.event_type, "now": now,
            "details": r.details, "metadata": "{}"}


def overdue_args(tenant_id: str, account_id: str, before: int) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "account_id": account_id, "before": before,
            "limit": PEC_TIMEOUT_BATCH}


def timeout_args(seq: int, tenant_id: str, now: int) -> dict[str, Any]:
    return {"seq": seq, "tenant_id": tenant_id, "event_type": "pec_timeout", "now": now,
            "details": "no acceptance receipt in time", "metadata": "{}"}


def cursor_args(cursor: MailboxCursor, now: int) -> dict[str, Any]:
    return {"mailbox": cursor.mailbox, "uidvalidity": cursor.uidvalidity,
            "last_uid": cursor.last_uid, "now": now}
