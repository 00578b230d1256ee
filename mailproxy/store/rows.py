"""Conversions between stored rows and domain values, shared by the SQL backends."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from mailproxy import jsonsafe, randomid
from mailproxy.bounces.correlate import sent_message_id
from mailproxy.model import (
    Account,
    Attachment,
    ClientAuth,
    CommandEntry,
    Content,
    Deferred,
    Event,
    EventType,
    Failed,
    HistoryEntry,
    InstanceConfig,
    LimitBehavior,
    MessageView,
    NewMessage,
    Outcome,
    RateLimits,
    Sent,
    SyncState,
    Tenant,
)
from mailproxy.policy import display_status
from mailproxy.store.legacy import legacy_content

log = logging.getLogger("mailproxy.store")

FINAL = ("sent", "error", "bounced", "suppressed")
# The reason of a message's latest failed attempt (listing; uses the events_message index).
LAST_EVENT_ERROR = (
    "SELECT e.description FROM events e WHERE e.message_seq = messages.seq "
    "AND e.event_type IN ('deferred', 'error') ORDER BY e.event_id DESC LIMIT 1"
)


def resubmitted(status: str, intake_error: Any, new: NewMessage) -> str | None:
    """A message sent again under an id the tenant already used (§4.5): the reason it is
    refused, or None when the new one replaces the stored row. A row being sent or already
    final stays, except a row that intake refused, which a valid message replaces."""
    if status == "sending":
        return "message is being sent"
    replaceable = status == "error" and bool(intake_error) and new.error is None
    if status in FINAL and not replaceable:
        return "already sent"
    return new.error


class Cipher(Protocol):
    def encrypt(self, plaintext: str | None) -> str | None: ...

    def decrypt(self, token: str | None) -> str | None: ...


def new_pk() -> str:
    return randomid.uuid7()


def now_text(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() if now is None else now))


def ts_text(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def dumps(value: Any) -> str:
    return jsonsafe.dumps(value)


def _limits(data: Mapping[str, Any] | None) -> RateLimits | None:
    if data is None:
        return None
    return RateLimits(minute=data.get("minute"), hour=data.get("hour"), day=data.get("day"))


def message_values(m: NewMessage, now: float, cipher: Cipher) -> dict[str, Any]:
    """Column values of a message row at intake or upsert (both backends)."""
    scheduled = m.deferred_ts is not None and m.deferred_ts > now
    return {
        "account_id": m.account_id,
        "status": "scheduled" if scheduled else "pending",
        "queued": 2 if scheduled else 1,
        "priority": int(m.priority),
        "due_ts": m.deferred_ts if scheduled else 0,
        "deferred_ts": m.deferred_ts if scheduled else None,
        "batch_code": m.batch_code,
        "is_pec": m.is_pec,
        "payload": dumps(seal_attachment_auth(m.payload, cipher)),
        "content": None if m.content is None else content_text(m.content, m.payload),
        "raw": m.raw,
        "envelope_from": m.envelope_from,
        "header_message_id": sent_message_id(m.payload, m.raw),
        "now": now,
    }


CONTENT_FORM = 1  # version of the stored form of Content below


def _stored_attachments(payload: Mapping[str, Any]) -> list[Any]:
    found = payload.get("attachments")
    return found if isinstance(found, list) else []


def _attachment_as_stored(a: Attachment, given: Any) -> str | dict[str, Any]:
    """The fetch mode alone when the rest is the submitted attachment's, else all of it."""
    if (isinstance(given, dict) and given.get("filename") == a.filename
            and given.get("storage_path") == a.storage_path
            and given.get("mime_type") == a.mime_type
            and given.get("content_md5") == a.content_md5):
        return a.fetch_mode
    return {"filename": a.filename, "storage_path": a.storage_path, "fetch_mode": a.fetch_mode,
            "mime_type": a.mime_type, "content_md5": a.content_md5}


def content_text(c: Content, payload: Mapping[str, Any]) -> str:
    """The stored form of the Content intake built from `payload` (which is stored too).

    It holds what intake decided (normalised addresses, kept headers, fetch modes, the
    html flag). The texts intake takes as submitted (subject, bodies, Message-ID, attachment
    names and data) are most of a row: when equal to the payload's they are read back from
    it (content_from_row) instead of being stored twice. Empty fields are left out."""
    out: dict[str, Any] = {"v": CONTENT_FORM, "from": c.from_addr, "to": c.to}
    if c.cc:
        out["cc"] = c.cc
    if c.bcc:
        out["bcc"] = c.bcc
    if c.reply_to is not None:
        out["reply_to"] = c.reply_to
    if c.return_path is not None:
        out["return_path"] = c.return_path
    if c.headers:
        out["headers"] = c.headers
    if c.body_is_html:
        out["html"] = True
    if c.subject != (payload.get("subject") or ""):
        out["subject"] = c.subject
    if c.body != (payload.get("body") or ""):
        out["body"] = c.body
    if c.html_body != (payload.get("html_body") or None):
        out["html_body"] = c.html_body
    if c.message_id != payload.get("message_id"):
        out["message_id"] = c.message_id
    if c.attachments:
        given = _stored_attachments(payload)
        out["attachments"] = [
            _attachment_as_stored(a, given[i] if i < len(given) else None)
            for i, a in enumerate(c.attachments)]
    return dumps(out)


def _attachment_from(stored: Any, given: Any) -> Attachment:
    if isinstance(stored, dict):
        return Attachment(stored["filename"], stored["storage_path"], stored["fetch_mode"],
                          stored["mime_type"], stored["content_md5"])
    return Attachment(given["filename"], given["storage_path"], stored,
                      given.get("mime_type"), given.get("content_md5"))


def content_from_row(text: str | None, payload: Mapping[str, Any],
                     envelope_from: str | None) -> Content:
    """The Content of a claimed row: as intake stored it (content_text), or, for a row
    stored before rows held it (`content` NULL), as store/legacy.py reads the payload.
    Nothing is checked again."""
    if text is None:
        return legacy_content(payload, envelope_from)
    try:
        return _stored_content(json.loads(text), payload)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        # One unreadable row must not stop every claim batch it falls in: it is read as
        # the rows before `content` are (the payload it was stored with).
        log.warning("stored content unreadable (%s); reading the payload instead",
                    type(exc).__name__)
        return legacy_content(payload, envelope_from)


def _stored_content(data: Any, payload: Mapping[str, Any]) -> Content:
    get = data.get
    attachments: tuple[Attachment, ...] = ()
    if "attachments" in data:
        given = _stored_attachments(payload)
        attachments = tuple(_attachment_from(a, given[i] if i < len(given) else None)
                            for i, a in enumerate(data["attachments"]))
    return Content(
        from_addr=data["from"], to=tuple(data["to"]), cc=tuple(get("cc", ())),
        bcc=tuple(get("bcc", ())), reply_to=get("reply_to"), return_path=get("return_path"),
        subject=data["subject"] if "subject" in data else payload.get("subject") or "",
        body=data["body"] if "body" in data else payload.get("body") or "",
        html_body=(data["html_body"] if "html_body" in data
                   else payload.get("html_body") or None),
        body_is_html=get("html", False),
        headers=tuple((n, v) for n, v in get("headers", ())),
        message_id=data["message_id"] if "message_id" in data else payload.get("message_id"),
        attachments=attachments,
    )


def tenant_limits(config: Mapping[str, Any]) -> RateLimits | None:
    return _limits(config.get("rate_limits"))


def tenant_to_row(t: Tenant, cipher: Cipher) -> dict[str, Any]:
    config = {
        "name": t.name,
        "client_base_url": t.client_base_url,
        "client_sync_path": t.client_sync_path,
        "client_attachment_path": t.client_attachment_path,
        "client_auth_method": t.client_auth.method,
        "client_auth_user": t.client_auth.user,
        "rate_limits": None if t.rate_limits is None else {
            "minute": t.rate_limits.minute, "hour": t.rate_limits.hour, "day": t.rate_limits.day},
        "large_file_config": _without_options(t.large_file_config),
        "urls_set_by_tenant": t.urls_set_by_tenant,
    }
    secrets = {
        "client_auth_token": t.client_auth.token,
        "client_auth_password": t.client_auth.password,
        "webhook_secret": t.webhook_secret,
    }
    if t.large_file_config and "storage_options" in t.large_file_config:
        secrets["storage_options"] = t.large_file_config["storage_options"]
    return {
        "id": t.id,
        "active": 1 if t.active else 0,
        "config": dumps(config),
        "secrets": cipher.encrypt(dumps(secrets)),
        "api_key_hash": t.api_key_hash,
        "api_key_expires_at": t.api_key_expires_at,
        "suspended": dumps(list(t.suspended_batches)),
    }


def _without_options(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """large_file_config without its storage credentials, which go with the secrets."""
    if config is None:
        return None
    return {k: v for k, v in config.items() if k != "storage_options"}


def _with_options(config: dict[str, Any] | None, options: Any) -> dict[str, Any] | None:
    if config is None or options is None:
        return config
    return {**config, "storage_options": options}


def tenant_from_row(row: Sequence[Any], cipher: Cipher) -> Tenant:
    (tid, active, config_text, secrets_text, key_hash, key_exp, suspended, created, updated) = row
    config = json.loads(config_text)
    secret_json = cipher.decrypt(secrets_text)
    secrets = json.loads(secret_json) if secret_json else {}
    return Tenant(
        id=tid,
        name=config.get("name"),
        client_base_url=config.get("client_base_url"),
        client_sync_path=config.get("client_sync_path") or "/mail-proxy/sync",
        client_attachment_path=config.get("client_attachment_path") or "/mail-proxy/attachments",
        client_auth=ClientAuth(
            method=config.get("client_auth_method") or "none",
            user=config.get("client_auth_user"),
            token=secrets.get("client_auth_token"),
            password=secrets.get("client_auth_password"),
        ),
        webhook_secret=secrets.get("webhook_secret"),
        rate_limits=_limits(config.get("rate_limits")),
        large_file_config=_with_options(config.get("large_file_config"),
                                        secrets.get("storage_options")),
        active=bool(active),
        api_key_hash=key_hash,
        api_key_expires_at=key_exp,
        suspended_batches=tuple(json.loads(suspended)),
        urls_set_by_tenant=bool(config.get("urls_set_by_tenant")),
        created_at=str(created),
        updated_at=str(updated),
    )


def account_to_row(a: Account, cipher: Cipher) -> dict[str, Any]:
    config = {
        "host": a.host, "port": a.port, "user": a.user, "use_tls": a.use_tls, "ttl": a.ttl,
        "limit_per_minute": a.limits.minute, "limit_per_hour": a.limits.hour,
        "limit_per_day": a.limits.day, "limit_behavior": a.limit_behavior.value,
        "batch_size": a.batch_size, "is_pec_account": a.is_pec_account,
        "imap_host": a.imap_host, "imap_port": a.imap_port, "imap_user": a.imap_user,
        "imap_folder": a.imap_folder, "imap_ssl": a.imap_ssl,
    }
    secrets = {"password": a.password, "imap_password": a.imap_password}
    return {
        "tenant_id": a.tenant_id,
        "id": a.id,
        "config": dumps(config),
        "secrets": cipher.encrypt(dumps(secrets)),
        "submission_hash": a.submission_password_hash,
    }


def account_config(tenant_id: str, account_id: str, config: Mapping[str, Any]) -> Account:
    """An Account from its non-secret config (claiming needs no secrets); a key the config
    lacks takes Account's default."""
    d = _ACCOUNT_DEFAULTS
    return Account(
        tenant_id=tenant_id,
        id=account_id,
        host=config["host"],
        port=int(config["port"]),
        user=config.get("user"),
        use_tls=config.get("use_tls"),
        ttl=int(config.get("ttl", d.ttl)),
        limits=RateLimits(
            minute=config.get("limit_per_minute"),
            hour=config.get("limit_per_hour"),
            day=config.get("limit_per_day"),
        ),
        limit_behavior=LimitBehavior(config.get("limit_behavior", d.limit_behavior)),
        batch_size=int(config.get("batch_size", d.batch_size)),
        is_pec_account=bool(config.get("is_pec_account", d.is_pec_account)),
        imap_host=config.get("imap_host"),
        imap_port=int(config.get("imap_port", d.imap_port)),
        imap_user=config.get("imap_user"),
        imap_folder=config.get("imap_folder", d.imap_folder),
        imap_ssl=bool(config.get("imap_ssl", d.imap_ssl)),
    )


_ACCOUNT_DEFAULTS = Account(tenant_id="-", id="-", host="-", port=0)


def account_from_row(row: Sequence[Any], cipher: Cipher) -> Account:
    tenant_id, account_id, config_text, secrets_text, submission_hash, created, updated = row
    base = account_config(tenant_id, account_id, json.loads(config_text))
    secret_json = cipher.decrypt(secrets_text)
    secrets = json.loads(secret_json) if secret_json else {}
    return replace(
        base,
        password=secrets.get("password"),
        imap_password=secrets.get("imap_password"),
        submission_password_hash=submission_hash,
        created_at=str(created),
        updated_at=str(updated),
    )


def outcome_event(outcome: Outcome, now: int) -> tuple[str, str | None, dict[str, Any]]:
    """(event_type, description, metadata) recorded for an outcome."""
    if isinstance(outcome, Sent):
        meta: dict[str, Any] = {}
        if outcome.failed_recipients:
            meta["failed_recipients"] = list(outcome.failed_recipients)
        return "sent", None, meta
    if isinstance(outcome, Deferred):
        return "deferred", outcome.reason, {
            "retry_count": outcome.retry_count, "next_attempt_ts": outcome.next_ts}
    assert isinstance(outcome, Failed)
    return "error", outcome.error, {"error_code": outcome.code}


def message_view(
    row: Mapping[str, Any], tenant: Tenant | None, now: int,
    history: list[HistoryEntry] | None,
) -> MessageView:
    """The listing's view (§5.2) of one stored row."""
    status = row["status"]
    final = status in FINAL
    held = (
        tenant is not None and not final and status != "sending"
        and tenant.holds(row["batch_code"])
    )
    failed = status in ("error", "suppressed")
    return MessageView(
        pk=row["pk"],
        client_id=row["client_id"],
        tenant_id=row["tenant_id"],
        tenant_name=(tenant.name if tenant and tenant.name else row["tenant_id"]),
        account_id=row["account_id"],
        status=display_status(status, row["deferred_ts"], now),
        suspended=held,
        priority=row["priority"],
        batch_code=row["batch_code"],
        deferred_ts=row["deferred_ts"],
        retry_count=row["retry_count"],
        sent_ts=row["sent_ts"] if status in ("sent", "bounced") else None,
        error_ts=row["error_ts"] if failed else None,
        error=row["error"] if failed else None,
        reported_ts=row["reported_ts"],
        bounce_type=row["bounce_type"],
        bounce_code=row["bounce_code"],
        bounce_reason=row["bounce_reason"],
        bounce_ts=row["bounce_ts"],
        is_pec=bool(row["is_pec"]),
        last_error=last_error(row),
        created_at=ts_text(row["created_ts"]),
        updated_at=ts_text(row["updated_ts"]),
        message=redact_attachment_auth(json.loads(row["payload"])),
        history=None if history is None else tuple(history),
    )


def last_error(row: Mapping[str, Any]) -> str | None:
    """Why the message is not delivered yet (or at all): the final error, else the reason
    of its latest failed attempt or rate-limit deferral. None once sent, and for a message
    not tried since it was (re)submitted."""
    status = row["status"]
    if status in ("error", "suppressed"):
        return str(row["error"]) if row["error"] is not None else None
    if status in ("sent", "bounced") or (status in ("pending", "scheduled")
                                         and not row["retry_count"]):
        return None
    found = row.get("last_event_error")
    return None if found is None else str(found)


def listing_views(
    found: Sequence[Mapping[str, Any]], events: Sequence[Sequence[Any]] | None,
    tenants: Mapping[str, Tenant], now: int,
) -> tuple[list[MessageView], int | None]:
    """Views of listed rows (with their history when `events` were read), and the seq of
    the last row: the keyset cursor of the next page."""
    history: dict[int, list[HistoryEntry]] | None = None
    if events is not None:
        history = {r["seq"]: [] for r in found}
        for ev in events:
            history[ev[0]].append(history_entry(ev))
    views = [
        message_view(r, tenants.get(r["tenant_id"]), now,
                     None if history is None else history[r["seq"]])
        for r in found
    ]
    return views, (int(found[-1]["seq"]) if found else None)


_AUTH_SECRETS = ("token", "password")
_SEALED = "_sealed"  # key of the encrypted secrets inside a stored attachment `auth`


def _map_attachment_auth(
    payload: dict[str, Any], change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """The payload with every attachment `auth` object replaced by change(auth)."""
    attachments = payload.get("attachments")
    if not isinstance(attachments, list):
        return payload
    changed = []
    for item in attachments:
        auth = item.get("auth") if isinstance(item, dict) else None
        if isinstance(auth, dict):
            item = {**item, "auth": change(auth)}
        changed.append(item)
    return {**payload, "attachments": changed}


def seal_attachment_auth(payload: dict[str, Any], cipher: Cipher) -> dict[str, Any]:
    """The payload as stored: the token and password of every attachment `auth` are
    encrypted (AES-GCM, as the other secrets) and masked in place, so that neither the
    database nor its backups hold them in clear; open_attachment_auth reads them back at
    send time."""

    def seal(auth: dict[str, Any]) -> dict[str, Any]:
        secrets = {k: auth[k] for k in _AUTH_SECRETS if auth.get(k) is not None}
        kept = {k: v for k, v in auth.items() if k != _SEALED}
        if not secrets:
            return kept
        return {**kept, **dict.fromkeys(secrets, "***"), _SEALED: cipher.encrypt(dumps(secrets))}

    return _map_attachment_auth(payload, seal)


def open_attachment_auth(auth: Mapping[str, Any], cipher: Cipher) -> ClientAuth:
    """A stored attachment `auth` with its sealed secrets decrypted, for the fetch."""
    sealed = auth.get(_SEALED)
    secrets = json.loads(cipher.decrypt(sealed) or "{}") if isinstance(sealed, str) else {}
    method = auth.get("method")
    user = auth.get("user")
    return ClientAuth(method=method if isinstance(method, str) else "none",
                      user=user if isinstance(user, str) else None,
                      token=secrets.get("token"), password=secrets.get("password"))


def redact_attachment_auth(payload: dict[str, Any]) -> dict[str, Any]:
    """The stored payload as GET /messages shows it: attachment auth secrets masked (§5.2)."""

    def redact(auth: dict[str, Any]) -> dict[str, Any]:
        return {k: ("***" if k in _AUTH_SECRETS and v is not None else v)
                for k, v in auth.items() if k != _SEALED}

    return _map_attachment_auth(payload, redact)


def history_entry(row: Sequence[Any]) -> HistoryEntry:
    _seq, event_id, event_type, event_ts, description, metadata, reported_ts = row
    return HistoryEntry(
        event_id=str(event_id), event_type=event_type, event_ts=event_ts,
        description=description, metadata=json.loads(metadata) if metadata else {},
        reported_ts=reported_ts,
    )


def event_from_row(row: Sequence[Any]) -> Event:
    """A pending event joined with its message (client id and account may be gone: None)."""
    event_id, pk, tenant_id, account_id, client_id, event_type, event_ts, desc, meta = row
    return Event(
        event_id=str(event_id), pk=pk or "", tenant_id=tenant_id, account_id=account_id,
        client_id=client_id or "", event_type=EventType(event_type), event_ts=int(event_ts),
        description=desc, metadata=json.loads(meta) if meta else {},
    )


def sync_from_row(row: Sequence[Any]) -> SyncState:
    tenant_id, last_sync, last_call, failures, retry_at, last_error, dnd, resync = row
    return SyncState(
        tenant_id=tenant_id, last_sync_ts=last_sync, last_call_ts=last_call,
        consecutive_failures=int(failures or 0), retry_at=retry_at, last_error=last_error,
        next_sync_after=dnd, resync_at=resync,
    )


def sync_to_row(state: SyncState) -> dict[str, Any]:
    return {
        "tenant_id": state.tenant_id, "last_sync_ts": state.last_sync_ts,
        "last_call_ts": state.last_call_ts, "consecutive_failures": state.consecutive_failures,
        "retry_at": state.retry_at, "last_error": state.last_error,
        "next_sync_after": state.next_sync_after, "resync_at": state.resync_at,
    }


def instance_from_row(row: Sequence[Any] | None, cipher: Cipher) -> InstanceConfig:
    if row is None:
        return InstanceConfig()
    (name, enabled, host, port, user, password, folder, ssl, interval, return_path,
     created, updated) = row
    return InstanceConfig(
        name=name, bounce_enabled=bool(enabled), bounce_imap_host=host, bounce_imap_port=port,
        bounce_imap_user=user, bounce_imap_password=cipher.decrypt(password),
        bounce_imap_folder=folder or "INBOX", bounce_imap_ssl=bool(ssl),
        bounce_poll_interval=int(interval), bounce_return_path=return_path,
        created_at=str(created), updated_at=str(updated),
    )


def instance_to_row(config: InstanceConfig, cipher: Cipher) -> dict[str, Any]:
    return {
        "name": config.name, "bounce_enabled": 1 if config.bounce_enabled else 0,
        "bounce_imap_host": config.bounce_imap_host, "bounce_imap_port": config.bounce_imap_port,
        "bounce_imap_user": config.bounce_imap_user,
        "bounce_imap_password": cipher.encrypt(config.bounce_imap_password),
        "bounce_imap_folder": config.bounce_imap_folder,
        "bounce_imap_ssl": 1 if config.bounce_imap_ssl else 0,
        "bounce_poll_interval": config.bounce_poll_interval,
        "bounce_return_path": config.bounce_return_path,
    }


def command_lines(entries: Sequence[CommandEntry]
                  ) -> list[tuple[int, str, str | None, str, int]]:
    """(ts, endpoint, tenant, payload text, status) of each line that can be encoded; a line
    that cannot is left out with a warning, so that it never costs the others theirs."""
    out = []
    for e in entries:
        try:
            payload = dumps(e.payload)
        except (TypeError, ValueError) as exc:
            log.warning("command log line of %s left out: its payload cannot be encoded (%s)",
                        e.endpoint, type(exc).__name__)
            continue
        out.append((e.command_ts, e.endpoint, e.tenant_id, payload, e.response_status))
    return out


def command_from_row(row: Sequence[Any]) -> CommandEntry:
    command_id, ts, endpoint, tenant_id, payload, status = row
    return CommandEntry(
        id=int(command_id), command_ts=int(ts), endpoint=endpoint, tenant_id=tenant_id,
        payload=json.loads(payload) if payload else None, response_status=int(status),
    )
