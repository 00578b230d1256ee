"""Bounce parsing (§12.2): returned mail in, ParsedBounce per failed recipient out. Pure.

RFC 3464 DSNs are read with the standard `email` package: flufl.bounce finds recipients but
splits them only by `Action:` and returns neither status codes, diagnostic text nor the
returned headers we correlate on. flufl.bounce's detectors are used where there is no DSN
part, to find the failed recipients of the common non-standard styles (Postfix, Exim,
Exchange, qmail, ...), with our own patterns as a fallback (Gmail's plain-text notices).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from typing import Any

import flufl.bounce

from mailproxy.bounces.model import BounceType, ParsedBounce, normal_address
from mailproxy.jsonsafe import scrub

log = logging.getLogger("mailproxy.bounces.parse")

MAX_REASON = 500
STATUS_TYPES = frozenset({"message/delivery-status", "text/delivery-status",
                          "message/global-delivery-status"})
MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
HEADER_TYPES = frozenset({"message/rfc822-headers", "text/rfc822-headers",
                          "message/global-headers"})
RETURNED_TYPES = MESSAGE_TYPES | HEADER_TYPES
NOT_FAILED = frozenset({"delivered", "relayed", "expanded"})
_SUBJECT = re.compile(
    r"undeliver|delivery status notification|mail delivery fail|returned mail|"
    r"failure notice|delivery failure|returned to sender|delivery has failed", re.I)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery", re.I)
_AUTO_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto(matic)?[ -]?(reply|response)|out of (the )?office|"
    r"abwesenheit|vacation|absence)", re.I)
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC = re.compile(r"(?<![\d.-])([45]\d\d)(?:[\s-]|$)")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TRACKING = {
    "pk": re.compile(r"^X-Mail-Proxy-ID:[ \t]*(\S+)", re.I | re.M),
    "message_id": re.compile(r"^Message-ID:[ \t]*(<[^>\s]+>)", re.I | re.M),
    "client_id": re.compile(r"^X-Genro-Mail-ID:[ \t]*(\S+)", re.I | re.M),
    "from": re.compile(r"^From:[ \t]*(.+)$", re.I | re.M),
}


@dataclass(frozen=True, slots=True)
class Returned:
    """The correlation headers of the bounced message, as returned."""

    pk: str | None = None
    message_id: str | None = None
    client_id: str | None = None
    original_from: str | None = None


def parse(raw: bytes) -> list[ParsedBounce]:
    """One ParsedBounce per failed recipient; [] when the mail is not a bounce."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    key = _fingerprint_base(msg, raw)
    status_part = _first(msg, STATUS_TYPES)
    if status_part is not None:
        return _from_dsn(msg, status_part, key)
    if not _looks_like_bounce(msg):
        return []
    return _from_text(msg, key)


# -- RFC 3464 -------------------------------------------------------------------------------

def _from_dsn(msg: Message, part: Message, key: str) -> list[ParsedBounce]:
    returned = _returned(msg)
    out: list[ParsedBounce] = []
    for block in _status_blocks(part):
        found = _dsn_recipient(block)
        if found is None:
            continue
        recipient, kind, code, reason = found
        out.append(_bounce(recipient, kind, code, reason, key, returned, from_dsn=True))
    if not out:
        # A report without readable per-recipient fields: what flufl.bounce found, if any.
        out = [_bounce(r, kind, None, None, key, returned, from_dsn=True)
               for r, kind in _flufl(msg)]
    return out


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, Message)]
    else:
        text = _text_of(part)
        parser = HeaderParser(policy=email.policy.compat32)
        blocks = [parser.parsestr(chunk.strip() + "\n")
                  for chunk in re.split(r"\r?\n\s*\r?\n", text) if chunk.strip()]
    return [b for b in blocks if b.get("Final-Recipient") or b.get("Original-Recipient")]


def _dsn_recipient(block: Message) -> tuple[str, BounceType, str | None, str | None] | None:
    recipient = _address_field(block.get("Final-Recipient") or block.get("Original-Recipient"))
    if recipient is None:
        return None
    status = _clean(block.get("Status"))
    action = (_clean(block.get("Action")) or "").lower()
    reason = _reason(block.get("Diagnostic-Code"))
    code = _status_code(status)
    kind = _kind_of(code, action)
    if kind is None:
        log.info("DSN for %s is not a failure (action %r, status %r)", recipient, action,
                 status)
        return None
    if code is None and reason is not None:
        code = _code_in(reason)
    return recipient, kind, code, reason


def _kind_of(code: str | None, action: str) -> BounceType | None:
    """Status takes precedence over Action (§12.2); 2.x.x or delivered is no bounce."""
    if code is not None:
        return {"5": BounceType.HARD, "4": BounceType.SOFT}.get(code[0])
    if action in NOT_FAILED:
        return None
    if action == "delayed":
        return BounceType.SOFT
    if action in ("failed", "error"):
        return BounceType.HARD
    return None


def _status_code(status: str | None) -> str | None:
    """`5.1.1` as is, a bare `550` accepted; anything else is no status."""
    if not status:
        return None
    match = _ENHANCED.search(status)
    if match:
        return ".".join(match.groups())
    basic = re.fullmatch(r"\s*([245]\d\d)\s*", status)
    return basic.group(1) if basic else None


def _code_in(text: str) -> str | None:
    """The first enhanced status in a text, else the first 4xx/5xx reply code."""
    match = _ENHANCED.search(text)
    if match and match.group(1) in "45":
        return ".".join(match.groups())
    basic = _BASIC.search(text)
    return basic.group(1) if basic else None


def _returned(msg: Message) -> Returned:
    """The correlation headers from the returned-message or returned-headers part."""
    for part in msg.walk():
        if part.get_content_type() not in RETURNED_TYPES:
            continue
        # message/* parts arrive parsed as a message; text/rfc822-headers as text.
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            headers = inner[0]
        else:
            headers = HeaderParser(policy=email.policy.compat32).parsestr(_text_of(part))
        if headers.keys():
            return Returned(
                pk=_clean(headers.get("X-Mail-Proxy-ID")),
                message_id=_clean(headers.get("Message-ID")),
                client_id=_clean(headers.get("X-Genro-Mail-ID")),
                original_from=_clean(headers.get("From")),
            )
    return Returned()


# -- non-standard bounces -------------------------------------------------------------------

def _looks_like_bounce(msg: Message) -> bool:
    subject = _clean(msg.get("Subject")) or ""
    sender = _clean(msg.get("From")) or ""
    if _is_auto_reply(msg, subject) and not _DAEMON.search(sender):
        return False
    return bool(_SUBJECT.search(subject) or _DAEMON.search(sender))


def _is_auto_reply(msg: Message, subject: str) -> bool:
    if msg.get("X-Autoreply") or msg.get("X-Autorespond"):
        return True
    if (_clean(msg.get("Precedence")) or "").lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.search(subject))


def _from_text(msg: Message, key: str) -> list[ParsedBounce]:
    text = "\n".join(_texts(msg))
    returned = _tracking_in(msg, text)
    code = _code_in(text)
    kind = BounceType.HARD if code is not None and code[0] == "5" else BounceType.SOFT
    reason = _line_with(text, code)
    recipients = [r for r, _ in _flufl(msg)] or _recipients_in(msg, text)
    return [_bounce(r, kind, code, reason, key, returned, from_dsn=False) for r in recipients]


def _recipients_in(msg: Message, text: str) -> list[str]:
    """The failed address when no detector knew the style: X-Failed-Recipients, else the
    first address in the notice that is neither the bounce's own nor the original sender."""
    listed = _clean(msg.get("X-Failed-Recipients"))
    if listed:
        return _unique(normal_address(a) for a in _ADDRESS.findall(listed))
    notice = re.split(r"^-{2,}.*(original|returned|copy of the) message", text, maxsplit=1,
                      flags=re.I | re.M)[0]
    ignored = {normal_address(a) for h in ("From", "To", "Reply-To")
               for a in _ADDRESS.findall(_clean(msg.get(h)) or "")}
    for found in _ADDRESS.findall(notice):
        addr = normal_address(found)
        if addr not in ignored and not _DAEMON.search(addr):
            return [addr]
    return []


def _tracking_in(msg: Message, text: str) -> Returned:
    """Rule 4 of §12.2: our headers anywhere in the text (or an attached original)."""
    attached = _returned(msg)
    if attached.pk or attached.message_id or attached.client_id:
        return attached
    found = {name: pattern.search(text) for name, pattern in _TRACKING.items()}
    values = {name: m.group(1).strip() if m else None for name, m in found.items()}
    return Returned(pk=values["pk"], message_id=values["message_id"],
                    client_id=values["client_id"], original_from=values["from"])


def _flufl(msg: Message) -> list[tuple[str, BounceType]]:
    """Failed recipients as flufl.bounce's detectors see them (permanent = hard)."""
    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    except Exception as exc:  # a detector tripping over odd input must not stop us
        log.info("flufl.bounce could not scan the message: %s", exc)
        return []
    out: list[tuple[str, BounceType]] = []
    for addresses, kind in ((permanent, BounceType.HARD), (temporary, BounceType.SOFT)):
        for value in sorted(addresses):
            addr = _address_field(value.decode("utf-8", "replace"))
            if addr is not None and addr not in {a for a, _ in out}:
                out.append((addr, kind))
    return out


# -- small helpers --------------------------------------------------------------------------

def _bounce(recipient: str, kind: BounceType, code: str | None, reason: str | None, key: str,
            returned: Returned, *, from_dsn: bool) -> ParsedBounce:
    # Text from outside: a NUL or lone surrogate would make the database refuse the whole
    # poll's transaction, again at every retry, and stop bounce processing for good.
    return ParsedBounce(
        recipient=scrub(recipient), type=kind, code=scrub(code), reason=scrub(reason),
        fingerprint=scrub(f"{key}|{recipient}"), pk=scrub(returned.pk),
        message_id=scrub(returned.message_id), client_id=scrub(returned.client_id),
        original_from=scrub(returned.original_from), from_dsn=from_dsn,
    )


def _fingerprint_base(msg: Message, raw: bytes) -> str:
    """The bounce's own Message-ID, else a hash of its bytes (§12.2)."""
    own = _clean(msg.get("Message-ID"))
    if own:
        return "mid:" + own.lower()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _first(msg: Message, types: frozenset[str]) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() in types:
            return part
    return None


def _texts(msg: Message) -> Iterable[str]:
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            yield _text_of(part)


def _text_of(part: Message) -> str:
    payload: Any = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload.decode(charset, "replace")
        except LookupError:
            return payload.decode("utf-8", "replace")
    inner = part.get_payload()
    return inner if isinstance(inner, str) else ""


def _clean(value: Any) -> str | None:
    """A header as one line of text (folded whitespace collapsed), None when empty."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _reason(value: Any) -> str | None:
    text = _clean(value)
    return None if text is None else text[:MAX_REASON]


def _address_field(value: object) -> str | None:
    """`rfc822; user@example.org` (or a bare address) -> `user@example.org`. The value may
    be an email.header.Header when the field holds 8-bit bytes: read as text."""
    text = _clean(value)
    if not text:
        return None
    text = text.split(";", 1)[1] if ";" in text else text
    match = _ADDRESS.search(text)
    return normal_address(match.group(0)) if match else None


def _line_with(text: str, code: str | None) -> str | None:
    if code is None:
        return None
    for line in text.splitlines():
        if code in line:
            return _reason(line)
    return None


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
