"""Delivery-report decisions (§8): targets, report items, when to call, what a reply means.

Pure: no I/O and no clock reads; the reporter passes `now` in. The service uses the same
rules to answer /tenants/sync-status, so what it shows is what the loop does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mailproxy.model import ClientAuth, Event, EventType, SyncState, Tenant

MAX_ITEMS = 1000
DND_MAX_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class SyncRules:
    interval: float = 300.0
    resync_delay: float = 1.0
    fallback_url: str | None = None
    fallback_token: str | None = None
    fallback_user: str | None = None
    fallback_password: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how one tenant's reports go."""

    url: str
    auth: ClientAuth
    restricted: bool
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    queued: int = 0
    next_sync_after: int | None = None
    error_ids: tuple[str, ...] = ()
    not_found_ids: tuple[str, ...] = ()


def target_of(tenant: Tenant, rules: SyncRules) -> Target | None:
    """The tenant's own URL, else the instance fallback, else None (§8.1)."""
    if tenant.client_base_url:
        path = tenant.client_sync_path or "/mail-proxy/sync"
        if not path.startswith("/"):
            path = "/" + path
        return Target(tenant.client_base_url.rstrip("/") + path, tenant.client_auth,
                      restricted=tenant.urls_set_by_tenant, secret=tenant.webhook_secret)
    if rules.fallback_url:
        if rules.fallback_token:
            auth = ClientAuth(method="bearer", token=rules.fallback_token)
        elif rules.fallback_user:
            auth = ClientAuth(method="basic", user=rules.fallback_user,
                              password=rules.fallback_password or "")
        else:
            auth = ClientAuth()
        return Target(rules.fallback_url, auth, restricted=False, secret=tenant.webhook_secret)
    return None


def in_backoff(state: SyncState, now: float) -> bool:
    return state.retry_at is not None and now < state.retry_at


def in_dnd(state: SyncState, now: float) -> bool:
    return state.next_sync_after is not None and now < state.next_sync_after


def next_heartbeat_ts(tenant: Tenant, state: SyncState, rules: SyncRules) -> float | None:
    """When the next empty call is owed (None: never, the tenant is inactive)."""
    if not tenant.active:
        return None
    due = 0.0 if state.last_call_ts is None else state.last_call_ts + rules.interval
    if state.resync_at is not None:
        due = min(due, state.resync_at)
    for floor in (state.next_sync_after, state.retry_at):
        if floor is not None:
            due = max(due, float(floor))
    return due


def heartbeat_due(tenant: Tenant, state: SyncState, now: float, rules: SyncRules) -> bool:
    at = next_heartbeat_ts(tenant, state, rules)
    return at is not None and at <= now


def call_due(
    tenant: Tenant, state: SyncState, pending: int, now: float, rules: SyncRules, *,
    forced: bool = False,
) -> bool:
    """Whether the loop should call this tenant now (a target is assumed)."""
    if forced:
        return True
    if in_backoff(state, now):
        return False
    return pending > 0 or heartbeat_due(tenant, state, now, rules)


def report_item(event: Event) -> dict[str, Any]:
    """One §8.2 item: client id, exactly one event group, and event/tenant/account ids."""
    item: dict[str, Any] = {"id": event.client_id, "event_id": event.event_id,
                            "tenant_id": event.tenant_id, "account_id": event.account_id}
    meta = event.metadata
    if event.event_type == EventType.SENT:
        item["sent_ts"] = event.event_ts
        if meta.get("failed_recipients"):
            item["failed_recipients"] = meta["failed_recipients"]
    elif event.event_type == EventType.ERROR:
        item.update(error_ts=event.event_ts, error=event.description,
                    error_code=meta.get("error_code"))
    elif event.event_type == EventType.DEFERRED:
        item.update(deferred_ts=event.event_ts,
                    deferred_reason=event.description or "rate_limit",
                    next_attempt_ts=meta.get("next_attempt_ts"))
        if "retry_count" in meta:
            item["retry_count"] = meta["retry_count"]
    elif event.event_type.value.startswith("pec_"):
        item.update(pec_event=event.event_type.value, pec_ts=event.event_ts,
                    pec_details=event.description)
    else:
        item.update(bounce_ts=event.event_ts, bounce_type=meta.get("bounce_type"),
                    bounce_code=meta.get("bounce_code"),
                    bounce_reason=meta.get("bounce_reason", event.description),
                    bounce_recipient=meta.get("bounce_recipient"))
    return item


def parse_reply(body: Any, now: float) -> Reply:
    """Read the optional keys of a tenant reply; anything malformed is ignored."""
    if not isinstance(body, Mapping):
        return Reply()
    queued = body.get("queued")
    after = body.get("next_sync_after")
    dnd: int | None = None
    if isinstance(after, int | float) and not isinstance(after, bool) and after > now:
        dnd = int(min(float(after), now + DND_MAX_SECONDS))
    return Reply(
        queued=queued if isinstance(queued, int) and not isinstance(queued, bool) else 0,
        next_sync_after=dnd,
        error_ids=_ids(body.get("error")),
        not_found_ids=_ids(body.get("not_found")),
    )


def _ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return ()
    return tuple(str(v) for v in value)


def after_success(state: SyncState, now: float, reply: Reply, rules: SyncRules) -> SyncState:
    """A 2xx: backoff reset, heartbeat timer restarted, resync and DND as the reply asks."""
    dnd = reply.next_sync_after
    if dnd is None and in_dnd(state, now):
        dnd = state.next_sync_after
    return replace(
        state, last_sync_ts=int(now), last_call_ts=now, consecutive_failures=0, retry_at=None,
        last_error=None, next_sync_after=dnd,
        resync_at=now + rules.resync_delay if reply.queued > 0 else None,
    )


def after_failure(state: SyncState, now: float, error: str, delay: float) -> SyncState:
    """A failed call: nothing acknowledged, the tenant waits `delay` (policy.report_backoff)."""
    return replace(
        state, last_call_ts=now, consecutive_failures=state.consecutive_failures + 1,
        retry_at=now + delay, last_error=error[:500],
    )


def cleared(state: SyncState) -> SyncState:
    """run-now: heartbeat timer, do-not-disturb and backoff cleared."""
    return replace(state, last_call_ts=None, next_sync_after=None, retry_at=None,
                   resync_at=None)
