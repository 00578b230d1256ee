"""The composition root: builds every part from Settings and runs them in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from mailproxy import __version__, heap, intake, runstate, sync
from mailproxy.attachments.cache import Cache, CacheLimits
from mailproxy.attachments.fetch import Fetcher, FetchSettings
from mailproxy.attachments.prepare import MessagePreparer
from mailproxy.attachments.sources import parse_roots
from mailproxy.bounces.model import SoftRule
from mailproxy.bounces.pec_runner import PecRunner
from mailproxy.bounces.runner import BounceRunner, Handling
from mailproxy.bounces.service import BounceService, SuppressionCheck, SuppressionFilter
from mailproxy.config import Settings
from mailproxy.dashboard import views as dashboard_views
from mailproxy.dashboard.bounce_source import ServiceBounces
from mailproxy.dashboard.port import BounceSource, NoBounces
from mailproxy.dashboard.usecases import Dashboard, Listener
from mailproxy.delivery import Resolver, SmtpPool, system_resolver
from mailproxy.errors import ConfigError
from mailproxy.ingress import http, smtp
from mailproxy.logs import DeliveryLog
from mailproxy.metrics import Metrics
from mailproxy.model import Priority
from mailproxy.netguard import AllowList
from mailproxy.offload.http import OFFLOADER
from mailproxy.offload.service import Offloader
from mailproxy.policy import RetryPolicy
from mailproxy.ports import Clock, Store, SystemClock, WakeSource
from mailproxy.reports import Reporter, ReporterSettings
from mailproxy.service import MailService, tenant_in_scope
from mailproxy.store import open_bounce_store, open_dashboard_store, open_store, rows
from mailproxy.store.offload_index import offload_index
from mailproxy.submission import AuthThrottle, SmtpSubmission
from mailproxy.tasks import cancel_and_wait
from mailproxy.tokens import new_token
from mailproxy.vault import Vault, load_key, write_private
from mailproxy.worker import Observer, Worker, WorkerSettings

log = logging.getLogger("mailproxy")

@dataclass
class Parts:
    settings: Settings
    store: Store
    service: MailService
    worker: Worker
    pool: SmtpPool
    instance_id: str
    reporter: Reporter
    metrics: Metrics
    fetcher: Fetcher
    offloader: Offloader
    bounces: BounceService | None  # None: the dashboard's empty state (a test builds it)
    bounce_runner: BounceRunner
    pec_runner: PecRunner
    listener: smtp.SmtpListener | None = None


PARTS = web.AppKey("parts", Parts)


def admin_token(settings: Settings) -> str:
    """GMP_API_TOKEN / config file, else <data_dir>/api_token (generated on first start)."""
    if settings.api_token:
        return settings.api_token
    path = settings.data_dir / "api_token"
    if path.exists():
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token
    token = new_token()
    write_private(path, token + "\n")
    if sys.stderr.isatty():
        print(f"mail-proxy: admin API token (shown once): {token}", file=sys.stderr)
    else:
        print(f"mail-proxy: admin API token written to {path}", file=sys.stderr)
    return token


async def build(
    settings: Settings, *, clock: Clock | None = None, observer: Observer | None = None,
    resolver: Resolver = system_resolver,
) -> Parts:
    """Open the store and wire the parts; nothing runs yet. `resolver` looks relay hosts
    up (tests give one that answers without DNS traffic).

    Parts are built in dependency order and get all they use through their constructors:
    the report loop, the suppression filter and the worker, the bounce use cases (whose scope
    check needs only the store), the SMTP listener, the pollers, and last the service that
    drives them. Nothing is attached afterwards."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = load_key(settings.encryption_key, settings.data_dir,
                   may_generate=not settings.is_postgres)
    vault = Vault(key)
    store = open_store(settings, vault)
    await store.open()
    try:
        check = await store.set_meta_if_absent("key_check", vault.key_check())
        vault.verify(check)
    except ConfigError:
        await store.close()
        raise
    # Read by the store's event trigger (migration 006): without any report URL, events are
    # reported when created.
    await store.set_meta("report_fallback", "1" if settings.client_sync_url else "0")
    clock = clock or SystemClock()
    instance_id = secrets.token_hex(6)
    metrics = Metrics(store, settings.metrics_token)
    pool = SmtpPool(
        pool_size=settings.smtp_pool_size, pool_wait=settings.smtp_pool_wait_seconds,
        connect_timeout=settings.smtp_connect_timeout_seconds,
        send_timeout=settings.smtp_send_timeout_seconds, tls_verify=settings.smtp_tls_verify,
        resolver=resolver,
    )
    fetcher = _fetcher(settings)
    offloader = Offloader(offload_index(store), await _download_secret(settings, store, vault),
                          store.get_tenant, clock.now)
    preparer = MessagePreparer(fetcher, store.get_tenant,
                               lambda auth: rows.open_attachment_auth(auth, vault), offloader)
    sync_rules = _sync_rules(settings)
    reporter = _reporter(settings, store, clock, instance_id, sync_rules, metrics)
    bounce_store = open_bounce_store(store)
    suppressions = SuppressionFilter(bounce_store, clock)
    worker = Worker(store, pool, clock, _worker_settings(settings, instance_id),
                    observer or DeliveryLog(metrics), preparer,
                    suppressions=suppressions, on_events=reporter.wake)
    token = admin_token(settings)
    await _apply_bounce_settings(settings, store)
    bounces = BounceService(
        store=bounce_store, clock=clock, scope=functools.partial(tenant_in_scope, store),
        filter=suppressions,
        soft_rule=SoftRule(settings.bounce_soft_limit, settings.bounce_soft_window_seconds),
        observer=metrics, on_events=reporter.wake,
    )
    listener = None
    if settings.smtp_port or settings.smtp_tls_port:
        try:
            listener = _smtp_listener(settings, store, clock, worker, suppressions)
        except ConfigError:
            await store.close()
            raise
    runner = BounceRunner(
        store, bounces, bounce_store, clock, instance_id,
        Handling(settings.bounce_mark_seen, settings.bounce_processed_folder,
                 ca_file=settings.bounce_imap_ca_file),
        return_path=worker.set_bounce_return_path, sending=worker.sending,
    )
    pec = PecRunner(store, bounces, bounce_store, clock, instance_id,
                    interval=settings.pec_poll_interval, timeout=settings.pec_timeout_seconds,
                    ca_file=settings.bounce_imap_ca_file)
    token_path = settings.data_dir / "api_token"
    service = MailService(
        store=store, clock=clock,
        rules=intake.IntakeRules(default_priority=Priority(settings.default_priority),
                                 max_raw_size=settings.smtp_max_size,
                                 fetch_modes=intake.fetch_modes(bool(fetcher.roots))),
        sync_rules=sync_rules, retention_seconds=settings.report_retention_seconds,
        admin_token=token, token_source=settings.api_token_source,
        token_writer=lambda new: write_private(token_path, new + "\n"),
        waker=worker, reports=reporter, bounce_control=runner,
        account_listeners=(worker, metrics),
        change_listeners=() if listener is None else (listener.submission.changed,),
    )
    return Parts(settings, store, service, worker, pool, instance_id, reporter, metrics,
                 fetcher, offloader, bounces, runner, pec, listener)


def _worker_settings(settings: Settings, instance_id: str) -> WorkerSettings:
    return WorkerSettings(
        owner=instance_id,
        concurrency=settings.send_concurrency,
        per_account=settings.send_concurrency_per_account,
        loop_interval=settings.send_loop_interval,
        lease_seconds=settings.lease_seconds,
        renew_seconds=settings.lease_renew_seconds,
        retry=RetryPolicy(settings.retry_max, settings.retry_base_seconds,
                          settings.retry_factor, settings.retry_max_delay_seconds),
        genro_header=settings.compat_genro_header,
        unknown_host_grace=settings.smtp_unknown_host_grace_seconds,
    )


def _sync_rules(settings: Settings) -> sync.SyncRules:
    return sync.SyncRules(
        interval=settings.sync_interval, resync_delay=settings.sync_resync_delay,
        fallback_url=settings.client_sync_url, fallback_token=settings.client_sync_token,
        fallback_user=settings.client_sync_user, fallback_password=settings.client_sync_password,
    )


def _reporter(settings: Settings, store: Store, clock: Clock, instance_id: str,
              rules: sync.SyncRules, metrics: Metrics) -> Reporter:
    return Reporter(store, clock, ReporterSettings(
        owner=instance_id, rules=rules, timeout=settings.report_timeout_seconds,
        concurrency=settings.report_concurrency,
        retention_seconds=settings.report_retention_seconds,
        command_log_days=settings.command_log_retention_days,
        allow_private=AllowList.parse(settings.attachment_allow_private),
    ), observer=metrics)


async def _download_secret(settings: Settings, store: Store, vault: Vault) -> bytes:
    """GMP_DOWNLOAD_SECRET, else 32 random bytes made once and kept encrypted (§11)."""
    if settings.download_secret:
        return settings.download_secret.encode("utf-8")
    sealed = await store.set_meta_if_absent("download_secret",
                                            vault.encrypt(secrets.token_hex(32)) or "")
    return bytes.fromhex(vault.decrypt(sealed) or "")


def _fetcher(settings: Settings) -> Fetcher:
    """The attachment fetcher and its two-tier cache (§10)."""
    mb = 2**20
    cache_dir = Path(settings.cache_disk_dir) if settings.cache_disk_dir else (
        settings.data_dir / "cache")
    limits = CacheLimits(
        memory_bytes=int(settings.cache_memory_max_mb * mb),
        memory_ttl=settings.cache_memory_ttl_seconds,
        disk_bytes=int(settings.cache_disk_max_mb * mb),
        disk_ttl=settings.cache_disk_ttl_seconds,
        disk_threshold=int(settings.cache_disk_threshold_kb * 1024),
    )
    return Fetcher(FetchSettings(
        roots=parse_roots(settings.attachment_roots),
        allow=AllowList.parse(settings.attachment_allow_private),
        max_bytes=int(settings.attachment_max_mb * mb),
        timeout=settings.attachment_timeout_seconds,
        concurrency=settings.attachment_concurrency,
    ), Cache(cache_dir, limits))


_BOUNCE_FIELDS = ("bounce_enabled", "bounce_imap_host", "bounce_imap_port", "bounce_imap_user",
                  "bounce_imap_password", "bounce_imap_folder", "bounce_imap_ssl",
                  "bounce_poll_interval", "bounce_return_path")


async def _apply_bounce_settings(settings: Settings, store: Store) -> None:
    """GMP_BOUNCE_* / config-file bounce keys overwrite the stored values at every start."""
    given = {name: getattr(settings, name) for name in _BOUNCE_FIELDS
             if getattr(settings, name) is not None}
    if given:
        current = await store.get_instance()
        await store.put_instance(replace(current, **given))


def _smtp_listener(settings: Settings, store: Store, clock: Clock, worker: Worker,
                   suppressions: SuppressionCheck) -> smtp.SmtpListener:
    submission = SmtpSubmission(
        store=store, clock=clock, max_size=settings.smtp_max_size,
        max_recipients=settings.smtp_max_recipients,
        default_priority=Priority(settings.default_priority), waker=worker,
        suppressions=suppressions,
    )
    config = smtp.ListenerConfig(
        host=settings.smtp_host, port=settings.smtp_port, tls_port=settings.smtp_tls_port,
        tls_context=smtp.server_tls_context(settings.smtp_tls_cert, settings.smtp_tls_key),
        plain_auth=settings.plain_auth_allowed, max_size=settings.smtp_max_size,
        auth_fail_delay=settings.smtp_auth_fail_delay_seconds, hostname=socket.getfqdn(),
    )
    throttle = AuthThrottle(settings.smtp_auth_max_failures, clock)
    return smtp.SmtpListener(submission, throttle, config)


def make_app(parts: Parts) -> web.Application:
    """The aiohttp application; the worker starts and stops with it."""
    trimmer = heap.HeapTrimmer()
    outer = [trim_after_large_bodies(trimmer)] if trimmer.enabled else []
    app = web.Application(
        middlewares=[*outer, parts.metrics.middleware(), http.command_log_middleware,
                     http.error_middleware],
        client_max_size=parts.settings.api_max_body_bytes,
    )
    app[PARTS] = parts
    app[http.SERVICE] = parts.service
    if parts.bounces is not None:
        app[http.BOUNCES] = parts.bounces
    app[http.STATUS_INFO] = http.StatusInfo(parts.instance_id,
                                            worker_active=lambda: parts.worker.active)
    app[http.METRICS] = parts.metrics
    app[OFFLOADER] = parts.offloader
    http.add_routes(app)
    dashboard_views.setup(app, _dashboard(parts))

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        await parts.fetcher.start()
        await parts.worker.start(recover_all=not parts.settings.is_postgres)
        await parts.reporter.start()
        if isinstance(parts.store, WakeSource):  # enqueues by other instances wake us
            parts.store.on_change(parts.service.directory_changed)
            if parts.listener is not None:
                parts.store.on_change(parts.listener.submission.changed)
            await parts.store.listen(parts.worker.wake)
        await parts.metrics.refresh()
        cleanup = asyncio.create_task(parts.offloader.run_cleanup(), name="offload-cleanup")
        await parts.bounce_runner.start()
        await parts.pec_runner.start()
        yield
        await parts.bounce_runner.stop()
        await parts.pec_runner.stop()
        await cancel_and_wait(cleanup)
        await parts.reporter.stop()
        await parts.worker.stop(parts.settings.shutdown_grace_seconds)
        await parts.metrics.close()
        await parts.pool.close()
        await parts.fetcher.close()
        await parts.service.settle_command_log(timeout=10)
        await parts.store.close()
        trimmer.close()

    app.cleanup_ctx.append(lifetime)
    listener = parts.listener
    if listener is not None:

        async def smtp_lifetime(_app: web.Application) -> AsyncIterator[None]:
            # Registered after the worker: starts after it and stops before it.
            await listener.start()
            yield
            await listener.stop()

        app.cleanup_ctx.append(smtp_lifetime)
    return app


def trim_after_large_bodies(trimmer: heap.HeapTrimmer) -> Middleware:
    """Tells the trimmer of every request with a body over heap.LARGE_BODY, once handled."""

    @web.middleware
    async def middleware(request: web.Request, handler: http.Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if (request.content_length or 0) > heap.LARGE_BODY:
                trimmer.large_request()

    return middleware


def _dashboard(parts: Parts) -> Dashboard:
    settings = parts.settings

    def listeners() -> list[Listener]:
        found = [Listener("HTTP", f"{settings.host}:{settings.port}", True)]
        smtp_on = parts.listener is not None and parts.listener.serving
        found.append(Listener("SMTP", f"{settings.smtp_host}:{settings.smtp_port}"
                              if settings.smtp_port else "disabled", smtp_on))
        return found

    bounces: BounceSource = NoBounces() if parts.bounces is None else ServiceBounces(
        parts.bounces)
    return Dashboard(open_dashboard_store(parts.store), parts.service, bounces,
                     listeners=listeners, worker_active=lambda: bool(parts.worker.active))


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully.

    The REST port is bound before anything starts, so a busy port stops start-up with one
    line and nothing to undo; a part that fails to start (the SMTP port) is undone too."""
    sock = _bind(settings.host, settings.port)
    try:
        parts = await build(settings)
    except BaseException:
        sock.close()
        raise
    runner = web.AppRunner(make_app(parts), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    heap.tune_collector()
    url = _url(settings.host, sock.getsockname()[1])
    log.info("mail-proxy %s listening on %s (instance %s, database %s)",
             __version__, url, settings.instance, _db_label(settings))
    log.debug("lease owner id of this process: %s", parts.instance_id)
    smtp_address = f"{settings.smtp_host}:{settings.smtp_port}" if settings.smtp_port else None
    try:
        runstate.write(settings.data_dir, settings.instance, url, smtp_address)
    except OSError as exc:  # the CLI will not find it; serving goes on
        log.warning("cannot record the server in %s: %s", settings.data_dir, exc)
    log.info("API reference: %s/docs", url)
    log.info("dashboard: %s/ui/", url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        with contextlib.suppress(Exception):
            await runner.cleanup()
        runstate.clear(settings.data_dir)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason.lower()} "
                          "(another mail-proxy? see: mail-proxy list)") from None


def _url(host: str, port: int) -> str:
    """The REST URL a client on this machine uses (a wildcard bind is reached on loopback)."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _db_label(settings: Settings) -> str:
    if settings.is_postgres:
        return settings.db_path.split("@")[-1]
    return str(Path(settings.db_path))
