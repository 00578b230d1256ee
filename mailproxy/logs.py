"""Log output: plain text lines, or one JSON object per line (GMP_LOG_FORMAT=json) for log
shippers; and the delivery line the worker's outcomes produce, whose fields (message id,
tenant, account, outcome) are JSON keys rather than text to parse."""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from mailproxy.model import Claimed, Deferred, Failed, Outcome, Sent
from mailproxy.timefmt import iso
from mailproxy.worker import Observer

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
delivery_log = logging.getLogger("mailproxy.delivery.outcome")


def configure(level: str, fmt: str) -> None:
    """Root logging to stderr in the chosen format ("text" or "json")."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level",
                                        "name": "logger"}, json_ensure_ascii=False))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _fields(message: Claimed, outcome: Outcome) -> dict[str, Any]:
    fields: dict[str, Any] = {"message_id": message.id, "pk": message.pk,
                              "tenant_id": message.tenant_id, "account_id": message.account_id}
    if isinstance(outcome, Sent):
        fields["outcome"] = "sent"
        if outcome.failed_recipients:
            fields["failed_recipients"] = len(outcome.failed_recipients)
    elif isinstance(outcome, Deferred):
        fields.update(outcome="deferred", reason=outcome.reason, next_ts=outcome.next_ts,
                      retry_count=outcome.retry_count)
    elif isinstance(outcome, Failed):
        fields.update(outcome="error", reason=outcome.error, code=outcome.code)
    return fields


def _what_next(fields: dict[str, Any]) -> str:
    """The reason on one line (the relay's reply or the connection error), and for a failed
    attempt what happens next, so that one line says why a message waits (issue 19)."""
    if "reason" not in fields:
        return ""
    reason = " ".join(str(fields["reason"] or "unknown error").split())
    if fields["outcome"] == "deferred":
        return f": {reason}; next try {iso(fields['next_ts'])} (retry {fields['retry_count']})"
    return f": {reason}; no further try"


class DeliveryLog:
    """A worker Observer that writes one INFO line per stored outcome, then passes every
    call on to the inner observer (the metrics)."""

    def __init__(self, inner: Observer) -> None:
        self._inner = inner

    def outcome(self, message: Claimed, outcome: Outcome, now: float) -> None:
        self._inner.outcome(message, outcome, now)
        if delivery_log.isEnabledFor(logging.INFO):
            fields = _fields(message, outcome)
            delivery_log.info("%s %s/%s %s%s", fields["outcome"], message.tenant_id,
                              message.account_id, message.id, _what_next(fields), extra=fields)

    def rate_limited(self, tenant_id: str, account_id: str, deferred: bool) -> None:
        self._inner.rate_limited(tenant_id, account_id, deferred)

    def smtp_seconds(self, outcome: str, seconds: float) -> None:
        self._inner.smtp_seconds(outcome, seconds)
