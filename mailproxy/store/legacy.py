"""Content of message rows stored before rows held it (the payload only, `content` NULL).

The releases that wrote them parsed the payload again at every send. Their rows were all
checked by that parse at intake, so reading one here gives the Content it had then: the
same reading (address items, display names, domain normalisation, kept headers, fetch
modes), written out once and frozen. Nothing is refused: a value that does not read is kept
as written, so that a later release's rules never judge a row an earlier one accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailproxy.addresses import check_address, parse_address_list, split_address
from mailproxy.model import Attachment, Content

# The headers those releases left out of a message's `headers` (compose writes them itself).
_IGNORED_HEADERS = frozenset(
    {"bcc", "x-mail-proxy-id", "x-genro-mail-id", "content-type",
     "content-transfer-encoding", "mime-version"}
)


def legacy_content(payload: Mapping[str, Any], envelope_from: str | None) -> Content:
    """The Content those releases built from a stored payload at send time."""
    if envelope_from is not None:  # SMTP-submitted: the envelope as received
        return Content(from_addr=envelope_from, to=tuple(payload.get("to") or ()),
                       subject=payload.get("subject") or "")
    sender = payload.get("from")
    if sender in (None, ""):
        sender = payload.get("from_addr")
    senders = _addresses(sender)
    reply, ret = _addresses(payload.get("reply_to")), _addresses(payload.get("return_path"))
    return Content(
        from_addr=senders[0] if senders else "",
        to=_addresses(payload.get("to")),
        cc=_addresses(payload.get("cc")),
        bcc=_addresses(payload.get("bcc")),
        reply_to=reply[0] if reply else None,
        return_path=ret[0] if ret else None,
        subject=payload.get("subject") or "",
        body=payload.get("body") or "",
        html_body=payload.get("html_body") or None,
        body_is_html=payload.get("content_type") == "html",
        headers=_headers(payload.get("headers")),
        message_id=payload.get("message_id"),
        attachments=tuple(_attachment(a) for a in payload.get("attachments") or ()
                          if isinstance(a, Mapping)),
    )


def _addresses(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    try:
        items = parse_address_list(value)
    except ValueError:
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    return tuple(_address(item) for item in items)


def _address(item: str) -> str:
    try:
        name, addr = split_address(item)
        normal = check_address(addr)
    except ValueError:
        return item
    return f"{name} <{normal}>" if name else normal


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        return ()
    out: list[tuple[str, str]] = []
    for name, raw in value.items():
        if raw is None or name.lower() in _IGNORED_HEADERS:
            continue
        text = raw if isinstance(raw, str) else str(raw)
        out = [(n, v) for n, v in out if n.lower() != name.lower()]
        out.append((name, text))
    return tuple(out)


def _fetch_mode(path: str) -> str:
    if path.startswith("base64:"):
        return "base64"
    if path.startswith(("http://", "https://")):
        return "http_url"
    if path.startswith("/"):
        return "filesystem"
    return "endpoint"


def _attachment(data: Mapping[str, Any]) -> Attachment:
    path = data.get("storage_path") or ""
    return Attachment(filename=data.get("filename") or "", storage_path=path,
                      fetch_mode=data.get("fetch_mode") or _fetch_mode(path),
                      mime_type=data.get("mime_type"), content_md5=data.get("content_md5"))
