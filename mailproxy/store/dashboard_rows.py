"""Row conversions and filter arguments shared by the SQLite and PostgreSQL dashboard stores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mailproxy.dashboard.port import (
    CANCELLABLE,
    RETRYABLE,
    AttemptTime,
    Cursor,
    Filter,
    HistoryItem,
    MessageDetail,
    MessageRow,
    Page,
)
from mailproxy.policy import display_status

UNUSUAL = frozenset({"scheduled", "deferred", "error", "bounced", "suppressed"})
FAR_FUTURE = 1e18
ACTION_STATUSES = {"retry": RETRYABLE, "cancel": CANCELLABLE}


def like(value: str | None) -> str | None:
    """A case-insensitive substring pattern with LIKE's wildcards escaped."""
    if value is None:
        return None
    escaped = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def match_args(flt: Filter, now: int) -> dict[str, Any]:
    return {
        "tenant_id": flt.tenant_id, "pk": flt.pk, "account_id": flt.account_id,
        "batch_code": flt.batch_code, "priority": flt.priority, "status": flt.status,
        "now": now, "to": like(flt.to), "sender": like(flt.sender), "text": like(flt.text),
        "text_exact": flt.text,
    }


SCANS = ("tenant", "all", "unusual")


def scan_name(flt: Filter) -> str:
    """Which ordered index the page walks: the rare statuses have their own."""
    if flt.status in UNUSUAL:
        return "unusual"
    return "tenant" if flt.tenant_id is not None else "all"


def compose(raw: dict[str, str]) -> dict[str, str]:
    """The named queries with the page fragments filled in."""
    texts = dict(raw)
    for scan in SCANS:
        source = raw[f"source_{scan}"]
        page = raw["page"].replace("{source}", source).replace("{match}", raw["match"])
        window = raw["window"].replace("{source}", source)
        texts[f"page:{scan}"] = page
        texts[f"bound:{scan}"] = raw["bound"].replace("{window}", window)
    texts["actionable"] = raw["actionable"].replace("{match}", raw["match"])
    return texts


def end_args(end: Sequence[Any] | None, bounded: bool = True) -> dict[str, Any]:
    """The window's oldest position (inclusive) for the page query."""
    if not bounded:
        return {"end_ts": -1.0, "end_seq": 0}
    if end is None:
        return {"end_ts": FAR_FUTURE, "end_seq": 0}  # an empty window: nothing matches
    return {"end_ts": float(end[1]), "end_seq": int(end[2])}


def needs_bound(flt: Filter) -> bool:
    """Whether rows of the walked index may fail the filter (then the scan is bounded);
    a tenant's or everyone's listing without other terms takes the first rows as they come."""
    rest = (flt.pk, flt.to, flt.sender, flt.account_id, flt.status, flt.batch_code,
            flt.priority, flt.text)
    return any(v is not None for v in rest)


def scan_args(flt: Filter, cursor: Cursor | None, scan: int) -> dict[str, Any]:
    c_ts, c_seq = FAR_FUTURE, 0
    if cursor is not None:
        c_ts, c_seq = cursor.created_ts, cursor.seq
    if flt.before is not None and flt.before < c_ts:
        c_ts, c_seq = flt.before, 0
    return {"c_ts": c_ts, "c_seq": c_seq, "after": flt.after or 0.0, "scan": scan}


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def message_row(r: Sequence[Any], now: int) -> MessageRow:
    (seq, pk, client_id, tenant_id, account_id, status, deferred_ts, priority, batch_code,
     subject, sender, to, created_ts, retry_count, error) = r[:15]
    return MessageRow(
        seq=int(seq), pk=pk, id=client_id, tenant_id=tenant_id, account_id=account_id,
        status=display_status(status, deferred_ts, now), priority=int(priority),
        batch_code=batch_code, subject=None if subject is None else str(subject),
        sender=None if sender is None else str(sender), to=_to_text(to),
        created_ts=float(created_ts), deferred_ts=deferred_ts, retry_count=int(retry_count),
        error=error if status in ("error", "suppressed") else None,
    )


def message_detail(r: Sequence[Any], events: Sequence[Sequence[Any]],
                   attempts: Sequence[Sequence[Any]], now: int) -> MessageDetail:
    (payload, raw_head, raw_size, sent_ts, reported_ts, updated_ts, b_type, b_code, b_reason,
     b_ts) = r[15:25]
    history = tuple(
        HistoryItem(int(e[0]), e[1], int(e[2]), e[3], json.loads(e[4]) if e[4] else {}, e[5])
        for e in events)
    return MessageDetail(
        row=message_row(r, now), payload=json.loads(payload),
        raw_head=None if raw_head is None else bytes(raw_head),
        raw_size=None if raw_size is None else int(raw_size), sent_ts=sent_ts,
        reported_ts=reported_ts, updated_ts=float(updated_ts),
        bounce={"type": b_type, "code": b_code, "reason": b_reason, "ts": b_ts},
        history=history,
        attempts=tuple(AttemptTime(float(a[0]), float(a[1]), a[2]) for a in attempts),
    )


def action_window(flt: Filter) -> dict[str, Any]:
    return {"before": flt.before if flt.before is not None else FAR_FUTURE,
            "after": flt.after or 0.0}


def display_counts(counts: Sequence[Sequence[Any]], due: Sequence[Sequence[Any]]
                    ) -> dict[str, dict[str, int]]:
    """Stored counts per tenant, with due scheduled/deferred rows moved to pending (§5.1)."""
    out: dict[str, dict[str, int]] = {}
    for tenant_id, status, n in counts:
        out.setdefault(tenant_id, {})[status] = int(n)
    for tenant_id, status, n in due:
        bucket = out.setdefault(tenant_id, {})
        moved = min(int(n), bucket.get(status, 0))
        bucket[status] = bucket.get(status, 0) - moved
        bucket["pending"] = bucket.get("pending", 0) + moved
    return out


def page(found: Sequence[Sequence[Any]], end: Sequence[Any] | None, limit: int, scan: int,
         now: int) -> Page:
    """end is None for an unbounded scan: every row matched, so fewer than the limit means
    the listing ended."""
    rows = tuple(message_row(r, now) for r in found[:limit])
    if len(found) > limit:
        last = rows[-1]
        return Page(rows, Cursor(last.created_ts, last.seq), len(found), partial=False)
    if end is None or int(end[0]) < scan:  # the window reached the oldest message
        return Page(rows, None, 0 if end is None else int(end[0]), partial=False)
    return Page(rows, Cursor(float(end[1]), int(end[2])), scan, partial=True)
