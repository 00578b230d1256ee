"""Per-message content checks of add-messages (contract §4.2-§4.5). Pure.

The edge has already checked JSON types; here each value's content is checked and a
failure becomes the rejection reason of that message alone.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailproxy import compose, policy
from mailproxy.addresses import check_address, parse_address_list, split_address
from mailproxy.model import Attachment, Content, NewMessage, Priority

HEADER_NAME = re.compile(r"^[!-9;-~]+$")
IGNORED_HEADERS = frozenset(
    {"bcc", "x-mail-proxy-id", "x-genro-mail-id", "content-type",
     "content-transfer-encoding", "mime-version"}
)
STRUCTURED = ("subject", "body", "html_body", "content_type", "headers", "attachments")
FETCH_MODES = ("endpoint", "http_url", "base64", "filesystem")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


class Rejected(Exception):
    """A content check failed; the message is stored as error with this reason."""


@dataclass(frozen=True, slots=True)
class IntakeRules:
    default_priority: Priority
    max_raw_size: int
    # Attachment sources this instance can fetch (the composition root derives them from the
    # settings: filesystem only with GMP_ATTACHMENT_ROOTS); others are refused at intake so
    # the client learns at once instead of at send time.
    fetch_modes: frozenset[str] = frozenset({"base64"})


def fetch_modes(filesystem: bool) -> frozenset[str]:
    """The fetch modes an instance serves: all four, filesystem only with roots set."""
    return frozenset(FETCH_MODES) if filesystem else frozenset(FETCH_MODES) - {"filesystem"}


def _present(item: Mapping[str, Any], key: str) -> bool:
    value = item.get(key)
    return value is not None and value != "" and value != []


def _from_value(item: Mapping[str, Any]) -> Any:
    return item["from"] if item.get("from") not in (None, "") else item.get("from_addr")


def required_fields(item: Mapping[str, Any]) -> None:
    if not _present(item, "account_id"):
        raise Rejected("missing account_id")
    if _from_value(item) in (None, ""):
        raise Rejected("missing from")
    if not _present(item, "to"):
        raise Rejected("missing to")
    if item.get("raw") is None and not _present(item, "subject"):
        raise Rejected("missing subject")


def _addresses(field: str, value: Any, *, single: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    try:
        items = parse_address_list(value)
    except ValueError:
        raise Rejected(f"invalid address in {field}: {value}") from None
    if single and len(items) != 1:
        raise Rejected(f"invalid address in {field}: {value}")
    out = []
    for entry in items:
        try:
            name, addr = split_address(entry)
            normal = check_address(addr)
        except ValueError:
            raise Rejected(f"invalid address in {field}: {entry}") from None
        out.append(f"{name} <{normal}>" if name else normal)
    return tuple(out)


def _no_newline(name: str, value: str | None) -> None:
    if value is not None and ("\r" in value or "\n" in value):
        raise Rejected(f"invalid header: {name}")


def _headers(value: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for name, raw in (value or {}).items():
        if not HEADER_NAME.match(name):
            raise Rejected(f"invalid header: {name}")
        if raw is None or name.lower() in IGNORED_HEADERS:
            continue
        text = raw if isinstance(raw, str) else str(raw)
        _no_newline(name, text)
        out = [(n, v) for n, v in out if n.lower() != name.lower()]
        out.append((name, text))
    return tuple(out)


def infer_fetch_mode(path: str) -> str:
    if path.startswith("base64:"):
        return "base64"
    if path.startswith(("http://", "https://")):
        return "http_url"
    if path.startswith("/"):
        return "filesystem"
    return "endpoint"


def _attachment(data: Mapping[str, Any]) -> Attachment:
    filename, path = data.get("filename"), data.get("storage_path")
    if not filename:
        raise Rejected("invalid attachment: missing filename")
    if not path:
        raise Rejected("invalid attachment: missing storage_path")
    if len(filename) > 255:
        raise Rejected("invalid attachment: filename too long")
    mode = data.get("fetch_mode") or infer_fetch_mode(path)
    if mode not in FETCH_MODES:
        raise Rejected(f"invalid attachment: unknown fetch_mode {mode}")
    md5 = data.get("content_md5")
    if md5 is not None and not _MD5.match(md5):
        raise Rejected("invalid attachment: content_md5 must be 32 hex characters")
    if mode == "base64":
        try:
            compose.decode_base64(path)
        except ValueError as exc:
            raise Rejected(str(exc)) from None
    return Attachment(filename=filename, storage_path=path, fetch_mode=mode,
                      mime_type=data.get("mime_type"), content_md5=md5)


def _unavailable(mode: str) -> str:
    hint = " (GMP_ATTACHMENT_ROOTS is not set)" if mode == "filesystem" else ""
    return f"invalid attachment: fetch_mode {mode} is not available on this instance{hint}"


def _raw(value: str, limit: int) -> bytes:
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("invalid payload: raw is not valid base64") from None
    if len(data) > limit:
        raise Rejected(f"invalid payload: raw is larger than {limit} bytes")
    if not data:
        raise Rejected("invalid payload: raw is empty")
    return data


MAX_DEFERRED_TS = 253402300799  # 9999-12-31: beyond is a mistake (and overflows storage)


def _deferred_ts(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected("invalid payload: deferred_ts must be a finite number")
    ts = int(value)
    if ts < 0:
        raise Rejected("invalid payload: deferred_ts must not be negative")
    if ts > MAX_DEFERRED_TS:
        raise Rejected("invalid payload: deferred_ts is out of range")
    return ts


def content_of(item: Mapping[str, Any]) -> Content:
    """Parse a submitted message into Content, checking every value (raises Rejected)."""
    raw_value = item.get("raw")
    if raw_value is not None and any(item.get(k) is not None for k in STRUCTURED):
        raise Rejected("invalid payload: raw excludes structured fields")
    from_addr = _addresses("from", _from_value(item), single=True)[0]
    to = _addresses("to", item.get("to"))
    if not to:
        raise Rejected("missing to")
    subject = item.get("subject") or ""
    _no_newline("Subject", subject)
    message_id = item.get("message_id")
    _no_newline("Message-ID", message_id)
    reply = _addresses("reply_to", item.get("reply_to"), single=True)
    ret = _addresses("return_path", item.get("return_path"), single=True)
    attachments = tuple(_attachment(a) for a in item.get("attachments") or ())
    return Content(
        from_addr=from_addr,
        to=to,
        cc=_addresses("cc", item.get("cc")),
        bcc=_addresses("bcc", item.get("bcc")),
        reply_to=reply[0] if reply else None,
        return_path=ret[0] if ret else None,
        subject=subject,
        body=item.get("body") or "",
        html_body=item.get("html_body") or None,
        body_is_html=item.get("content_type") == "html",
        headers=_headers(item.get("headers")),
        message_id=message_id,
        attachments=attachments,
    )


def build(
    item: Mapping[str, Any], *, account_exists: bool, is_pec: bool, rules: IntakeRules,
    default_priority: Priority | None,
) -> NewMessage:
    """A NewMessage for a message whose id and tenant passed; `error` set when invalid.

    The Content built here is stored with the row and is what the worker sends: a message
    is judged once, by the rules of the release that accepted it."""
    tenant_id, client_id = item["tenant_id"], item["id"]
    priority = policy.parse_priority(item.get("priority"))
    if priority is None:
        priority = default_priority if default_priority is not None else rules.default_priority
    payload = dict(item)
    raw: bytes | None = None
    content: Content | None = None
    error: str | None = None
    deferred_ts: int | None = None
    batch_code = item.get("batch_code")
    try:
        required_fields(item)
        if not account_exists:
            raise Rejected("account not found for tenant")
        if len(client_id) > 255:
            raise Rejected("invalid payload: id longer than 255 characters")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in client_id):
            raise Rejected("invalid payload: id contains control characters")
        if batch_code is not None and len(batch_code) > 64:
            raise Rejected("invalid payload: batch_code longer than 64 characters")
        content = content_of(item)
        for attachment in content.attachments:
            if attachment.fetch_mode not in rules.fetch_modes:
                raise Rejected(_unavailable(attachment.fetch_mode))
        deferred_ts = _deferred_ts(item.get("deferred_ts"))
        if item.get("raw") is not None:
            raw = _raw(item["raw"], rules.max_raw_size)
            payload.pop("raw")
            payload["raw_size"] = len(raw)
    except Rejected as exc:
        error = str(exc)
        raw = content = None
        if "raw" in payload:
            payload["raw_size"] = len(str(payload.pop("raw")))
    return NewMessage(
        tenant_id=tenant_id, id=client_id, account_id=item.get("account_id") or None,
        priority=priority, deferred_ts=deferred_ts, batch_code=batch_code, payload=payload,
        raw=raw, content=content, error=error, is_pec=is_pec,
    )
