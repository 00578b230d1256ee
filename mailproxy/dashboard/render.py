"""Presentation helpers: use-case values -> what templates print. Pure."""

from __future__ import annotations

import email
import email.policy
import json
import time
from typing import Any
from urllib.parse import urlencode

from mailproxy.dashboard.port import CANCELLABLE, RETRYABLE, STATUSES, MessageDetail
from mailproxy.dashboard.usecases import Overview, RateRow

PREFIX = "/ui"


def utc(ts: float | None) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def seconds(value: float | None) -> str:
    """A duration for people: 850 ms, 12.3 s, 4 min 10 s, 3 h 5 min."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def queue_link(text: str) -> str:
    return f"{PREFIX}/queue?" + urlencode({"q": text})


def number(n: int) -> str:
    return f"{n:,}"


FILTERS = {"utc": utc, "iso": iso, "seconds": seconds, "queue_link": queue_link,
           "number": number}


def overview(o: Overview) -> dict[str, Any]:
    series = {"t": [m[0] for m in o.minutes], "sent": [m[1] for m in o.minutes],
              "error": [m[2] for m in o.minutes], "deferred": [m[3] for m in o.minutes]}
    return {
        "counts": [(s, o.counts.get(s, 0)) for s in STATUSES],
        "tenants": o.tenants,
        "series": json.dumps(series, separators=(",", ":")),
        "sent_hour": sum(series["sent"]), "error_hour": sum(series["error"]),
        "oldest_ts": o.oldest_waiting_ts,
        "listeners": o.listeners, "worker_active": o.worker_active,
    }


def _headers(detail: MessageDetail) -> list[tuple[str, str]]:
    if detail.raw_head is not None:
        head = detail.raw_head.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        parsed = email.message_from_bytes(head + b"\r\n\r\n", policy=email.policy.compat32)
        return [(k, str(v)) for k, v in parsed.items()]
    given = detail.payload.get("headers")
    if isinstance(given, dict):
        return [(str(k), str(v)) for k, v in given.items()]
    return []


def _timeline(detail: MessageDetail) -> list[dict[str, Any]]:
    """Attempts (claim to outcome, from the attempts table) joined to the events they caused."""
    events = list(detail.history)
    items: list[dict[str, Any]] = []
    for attempt in detail.attempts:
        match = next((e for e in events if e.event_ts == int(attempt.ended_ts)
                      and e.event_type in ("sent", "error", "deferred")), None)
        if match is not None:
            events.remove(match)
        items.append(_attempt_item(attempt.started_ts, attempt.ended_ts, attempt.outcome, match))
    for event in events:
        items.append({"ts": float(event.event_ts), "kind": event.event_type,
                      "code": _code(event.description, event.metadata),
                      "text": event.description or "", "duration": None,
                      "reported_ts": event.reported_ts, "attempt": False})
    items.sort(key=lambda i: i["ts"])
    return items


def _attempt_item(started: float, ended: float, outcome: str, event: Any) -> dict[str, Any]:
    text = "" if event is None else (event.description or "")
    if outcome == "sent" and not text:
        text = "accepted by the relay"
    if outcome in ("pending", "scheduled", "deferred") and event is None:
        text = "lease lost or released: back in the queue"
    return {"ts": ended, "kind": outcome, "attempt": True, "started": started,
            "code": None if event is None else _code(event.description, event.metadata),
            "text": text, "duration": max(0.0, ended - started),
            "reported_ts": None if event is None else event.reported_ts}


def _code(description: str | None, metadata: Any) -> str | None:
    if isinstance(metadata, dict) and metadata.get("error_code"):
        return str(metadata["error_code"])
    if description and description[:3].isdigit():
        return description[:3]
    return None


def message(detail: MessageDetail) -> dict[str, Any]:
    row, payload = detail.row, detail.payload
    unreported = sum(1 for e in detail.history if e.reported_ts is None)
    next_ts = row.deferred_ts if row.status in ("scheduled", "deferred") else None
    return {
        "row": row, "headers": _headers(detail), "timeline": _timeline(detail),
        "payload": {k: v for k, v in payload.items() if k not in ("body", "html_body", "raw")},
        "cc": payload.get("cc"), "bcc": payload.get("bcc"),
        "raw_size": detail.raw_size, "sent_ts": detail.sent_ts,
        "reported_ts": detail.reported_ts, "unreported": unreported,
        "events": len(detail.history), "next_ts": next_ts, "bounce": detail.bounce,
        "can_retry": row.status in RETRYABLE, "can_cancel": row.status in CANCELLABLE,
    }


def rate_row(r: RateRow) -> dict[str, Any]:
    return {"tenant_id": r.tenant_id, "account_id": r.account_id, "waiting": r.waiting,
            "windows": [{"label": w.label, "used": w.used, "limit": w.limit, "full": w.full,
                         "known": w.used is not None,
                         "width": round(200 * w.ratio, 1), "ratio": w.ratio}
                        for w in r.windows]}
