"""Prometheus collectors (§14), fed by the worker (as its Observer), the HTTP layer,
the reporter and the bounce poller.

Each app gets its own CollectorRegistry so that tests, and several apps in one process, never
share counters. Per-account counters are created at 0 for every known account: refresh() reads
the tenants and accounts from the store before every scrape, and an account change refreshes at
once so that the first outcome of a new account is labelled with its tenant's name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from mailproxy.model import Claimed, Deferred, Failed, Outcome, Sent
from mailproxy.ports import DirectoryReader, QueueCounts

log = logging.getLogger("mailproxy.metrics")

disable_created_metrics()  # type: ignore[no-untyped-call]

ACCOUNT_LABELS = ("tenant_id", "tenant_name", "account_id", "account_name")
LATENCY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400)
SMTP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Any token is a valid HTTP method; other ones share a label so that series stay bounded.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Collector = TypeVar("Collector", Counter, Histogram)


class MetricsStore(QueueCounts, DirectoryReader, Protocol):
    """The open-message count and the tenants and accounts that label the series."""


class Metrics:
    """The gmp_* collectors of one app, and the worker Observer that feeds them."""

    def __init__(self, store: MetricsStore, token: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.token = token
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._names: dict[str, str] = {}
        # A collector's child per label values: labels() checks and converts the values on
        # every call, a microsecond and more on each delivered message and each request.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        reg = self.registry
        self.sent = Counter("gmp_sent_total", "Messages accepted by the relay.",
                            ACCOUNT_LABELS, registry=reg)
        self.errors = Counter("gmp_errors_total", "Messages that failed permanently.",
                              ACCOUNT_LABELS, registry=reg)
        self.deferred = Counter("gmp_deferred_total",
                                "Deferrals (temporary failures and rate-limit waits).",
                                ACCOUNT_LABELS, registry=reg)
        self.rate_limited_total = Counter("gmp_rate_limited_total",
                                          "Claims held back by a rate limit.",
                                          ACCOUNT_LABELS, registry=reg)
        self.pending = Gauge("gmp_pending_messages", "Messages not in a final state.",
                             registry=reg)
        self.bounces = Counter("gmp_bounces_total", "Bounces received.",
                               ("tenant_id", "type"), registry=reg)
        self.reports_sent = Counter("gmp_reports_sent_total", "Acknowledged report POSTs.",
                                    ("tenant_id",), registry=reg)
        self.report_failures = Counter("gmp_report_failures_total", "Failed report POSTs.",
                                       ("tenant_id",), registry=reg)
        self.queue_latency = Histogram("gmp_queue_latency_seconds", "Enqueue to sent.",
                                       ("tenant_id",), buckets=LATENCY_BUCKETS, registry=reg)
        self.smtp_send = Histogram("gmp_smtp_send_seconds", "One relay transaction.",
                                   ("outcome",), buckets=SMTP_BUCKETS, registry=reg)
        self.http_requests = Counter("gmp_http_requests_total", "REST requests answered.",
                                     ("method", "route", "status"), registry=reg)
        self.http_seconds = Histogram("gmp_http_request_duration_seconds",
                                      "REST request handling time, to the answer.",
                                      ("method", "route"), buckets=HTTP_BUCKETS, registry=reg)

    # -- labels ------------------------------------------------------------------------------

    def _child(self, collector: Collector, *values: str) -> Collector:
        key = (collector, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = collector.labels(*values)
        return child

    def _labels(self, tenant_id: str, account_id: str) -> tuple[str, str, str, str]:
        return tenant_id, self._names.get(tenant_id, tenant_id), account_id, account_id

    def _touch(self, tenant_id: str, account_id: str) -> None:
        labels = self._labels(tenant_id, account_id)
        for counter in (self.sent, self.errors, self.deferred, self.rate_limited_total):
            counter.labels(*labels)

    async def refresh(self) -> None:
        """Pending gauge from the store; a 0 series for every known account."""
        self.pending.set(await self.store.count_open())
        self._names = {t.id: t.name or t.id for t in await self.store.list_tenants()}
        for account in await self.store.list_accounts():
            self._touch(account.tenant_id, account.id)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # metrics never break the caller
            log.warning("metrics refresh failed: %s", exc)

    async def render(self) -> tuple[bytes, str]:
        """The text exposition, after a refresh."""
        await self._refresh_quietly()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- account listener (service.account_listeners) ----------------------------------------

    def account_changed(self, tenant_id: str, account_id: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._refresh_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tenant_deleted(self, tenant_id: str) -> None:
        self._names.pop(tenant_id, None)

    # -- worker Observer ---------------------------------------------------------------------

    def outcome(self, message: Claimed, outcome: Outcome, now: float) -> None:
        labels = self._labels(message.tenant_id, message.account_id)
        if isinstance(outcome, Sent):
            self._child(self.sent, *labels).inc()
            latency = max(0.0, now - message.created_ts)
            self._child(self.queue_latency, message.tenant_id).observe(latency)
        elif isinstance(outcome, Deferred):
            self._child(self.deferred, *labels).inc()
        elif isinstance(outcome, Failed):
            self._child(self.errors, *labels).inc()

    def rate_limited(self, tenant_id: str, account_id: str, deferred: bool) -> None:
        """A claim over a limit: deferred (limit_behavior defer) or failed (reject)."""
        labels = self._labels(tenant_id, account_id)
        self._child(self.rate_limited_total, *labels).inc()
        self._child(self.deferred if deferred else self.errors, *labels).inc()

    def smtp_seconds(self, outcome: str, seconds: float) -> None:
        self._child(self.smtp_send, outcome).observe(seconds)

    # -- reporter and bounce poller ----------------------------------------------------------

    def report_sent(self, tenant_id: str) -> None:
        self._child(self.reports_sent, tenant_id).inc()

    def report_failed(self, tenant_id: str) -> None:
        self._child(self.report_failures, tenant_id).inc()

    def bounce(self, tenant_id: str | None, bounce_type: str) -> None:
        self._child(self.bounces, tenant_id or "unknown", bounce_type).inc()

    # -- HTTP --------------------------------------------------------------------------------

    def middleware(self) -> Middleware:
        """Counts and times every answered request by method and route template (and
        status, for the count); the raw path never becomes a label."""

        @web.middleware
        async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
            began = time.perf_counter()
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._count(request, exc.status, began)
                raise
            self._count(request, response.status, began)
            return response

        return count_requests

    def _count(self, request: web.Request, status: int, began: float) -> None:
        method = request.method if request.method in HTTP_METHODS else "other"
        route = route_template(request)
        self._child(self.http_requests, method, route, str(status)).inc()
        self._child(self.http_seconds, method, route).observe(time.perf_counter() - began)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def route_template(request: web.Request) -> str:
    """The matched route's template (/tenant/{tenant_id}); "unmatched" for unknown paths."""
    info = request.match_info
    resource = info.route.resource
    if resource is None or info.http_exception is not None:
        return "unmatched"
    return resource.canonical
