"""Use cases. Knows the ports it needs (mailproxy.ports) and nothing of the adapters.

The store is the service's own: the edges call these use cases, never the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from mailproxy import audit, intake, jsonsafe, sync
from mailproxy.apikeys import tenant_for_token
from mailproxy.auditlog import LaterLines
from mailproxy.commands import (
    ABSENT,
    ClientAuthChange,
    InstanceChanges,
    PutAccount,
    PutTenant,
    TenantChanges,
    kept,
)
from mailproxy.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from mailproxy.lookups import DirectoryCache
from mailproxy.model import (
    Account,
    ClientAuth,
    CommandEntry,
    InstanceConfig,
    MessageView,
    NewMessage,
    Priority,
    SyncState,
    Tenant,
)
from mailproxy.policy import parse_priority
from mailproxy.ports import (
    AuditLog,
    Clock,
    Directory,
    Health,
    InstanceSettings,
    Intake,
    MessageLog,
    QueueCounts,
    ReportLog,
    TenantReader,
    Waker,
)
from mailproxy.tokens import hash_password, hash_token, new_token, same

log = logging.getLogger("mailproxy.service")

MAX_LOG_BACKLOG = 10_000  # command log lines written after their response, at most

ADMIN_ONLY_TENANT_FIELDS = ("active", "rate_limits", "large_file_config", "api_key_expires_at")
TENANT_URL_FIELDS = ("client_base_url", "client_sync_path", "client_attachment_path")


class BounceControl(Protocol):
    """The bounce poller, as far as the service drives it."""

    async def reload(self) -> None: ...


class ReportControl(Protocol):
    """What the service asks of the report loop."""

    def wake(self) -> None: ...

    def run_now(self, tenant_id: str | None) -> None: ...


class AccountListener(Protocol):
    """Told when an account changes or a tenant goes (the worker drops what it cached, the
    metrics their series)."""

    def account_changed(self, tenant_id: str, account_id: str) -> None: ...

    def tenant_deleted(self, tenant_id: str) -> None: ...


class ServiceStore(Health, Directory, Intake, QueueCounts, MessageLog, ReportLog,
                   InstanceSettings, AuditLog, Protocol):
    """The roles the use cases need: everything but the worker's claiming and the meta."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the admin, or one tenant."""

    tenant_id: str | None = None

    @property
    def admin(self) -> bool:
        return self.tenant_id is None


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class SubmitResult:
    queued: int
    rejected: tuple[Rejection, ...]

    @property
    def failed(self) -> bool:
        """True when nothing was queued for a reason other than an existing final row."""
        benign = ("already sent", "message is being sent")
        return self.queued == 0 and any(r.reason not in benign for r in self.rejected)


@dataclass(kw_only=True)
class MailService:
    """The use cases. Every part they drive comes in at construction (app.build wires them
    in dependency order), so a service without a reporter or a waker cannot be built by
    mistake; afterwards only the admin token changes, through PUT /instance."""

    store: ServiceStore  # private to the service: no edge reaches it
    clock: Clock
    rules: intake.IntakeRules
    sync_rules: sync.SyncRules
    retention_seconds: int  # the default age of POST /commands/cleanup
    admin_token: str
    token_source: str  # "env" / "file": the admin token is not ours to change
    token_writer: Callable[[str], None]  # keeps a replaced (generated) admin token
    waker: Waker
    reports: ReportControl
    bounce_control: BounceControl
    account_listeners: Sequence[AccountListener]
    # Called after any tenant or account change (the SMTP MAIL FROM check cache).
    change_listeners: Sequence[Callable[[], None]]

    def __post_init__(self) -> None:
        self._directory = DirectoryCache(self.store, self.clock)
        self._later_lines = LaterLines(self.store, backlog=MAX_LOG_BACKLOG)

    # -- auth --------------------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise Unauthorized("Invalid or missing API token")
        if same(token, self.admin_token):
            return Caller()
        tenant = await tenant_for_token(self.store, token, self.clock.now())
        if tenant is None:
            raise Unauthorized("Invalid or missing API token")
        return Caller(tenant_id=tenant.id)

    async def tenant_in_scope(self, caller: Caller, tenant_id: str) -> Tenant:
        """The tenant named by a request, if the caller may act on it (403/404 otherwise)."""
        return await tenant_in_scope(self.store, caller, tenant_id)

    async def healthy(self) -> bool:
        """The database answers (GET /health)."""
        try:
            await self.store.ping()
        except Exception:
            return False
        return True

    async def open_messages(self, caller: Caller) -> int:
        """Messages not final yet (GET /status): over every tenant for the admin, the
        caller's own for a tenant, which never learns how busy the others are."""
        return await self.store.count_open(None if caller.admin else caller.tenant_id)

    # -- messages ----------------------------------------------------------------------------

    async def list_messages(
        self, caller: Caller, tenant_id: str, *, active_only: bool, status: str | None,
        include_history: bool, limit: int, offset: int,
    ) -> list[MessageView]:
        """One tenant's messages, newest first, as the caller may see them."""
        tenant = await self.tenant_in_scope(caller, tenant_id)
        return await self.store.list_messages(
            tenant, now=int(self.clock.now()), active_only=active_only, status=status,
            include_history=include_history, limit=limit, offset=offset)

    async def delete_messages(self, caller: Caller, tenant_id: str, ids: Sequence[str]
                              ) -> tuple[int, list[str]]:
        """Remove the tenant's messages by client id: (how many, the ids not found)."""
        await self.tenant_in_scope(caller, tenant_id)
        return await self.store.delete_messages(tenant_id, ids)

    async def list_all_messages(
        self, caller: Caller, *, active_only: bool, status: str | None, include_history: bool,
        limit: int, cursor: int | None,
    ) -> tuple[list[MessageView], int | None]:
        """Every tenant's messages, for the admin only; a page and the cursor of the next
        one (None on the last page)."""
        self.require_admin(caller)
        tenants = {t.id: t for t in await self.store.list_tenants()}
        records, last = await self.store.list_all_messages(
            tenants, now=int(self.clock.now()), active_only=active_only, status=status,
            include_history=include_history, limit=limit, before=cursor)
        return records, (last if last is not None and len(records) == limit else None)

    @staticmethod
    def require_admin(caller: Caller) -> None:
        if not caller.admin:
            raise Forbidden("Admin token required")

    # -- intake ------------------------------------------------------------------------------

    async def submit(
        self, caller: Caller, messages: Sequence[Mapping[str, Any]], default_priority: Any,
        refused: Mapping[int, str] | None = None,
    ) -> SubmitResult:
        """`refused`: items the edge found unstorable (index -> reason), rejected alone."""
        dp: Priority | None = None
        if default_priority is not None:
            dp = _default_priority(default_priority)
        tenants = {t.id: t for t in await self._tenants_named(messages)}
        known: dict[tuple[str, str], Account | None] = {}
        rejected: list[Rejection] = []
        pending: list[tuple[int, NewMessage]] = []
        for index, item in enumerate(messages):
            reason = (refused or {}).get(index) or self._early_reason(caller, item, tenants)
            if reason is not None:
                rejected.append(Rejection(index, _str_or_none(item.get("id")), reason))
                continue
            key = (item["tenant_id"], item.get("account_id") or "")
            if key not in known:  # one lookup per account and call
                known[key] = await self._directory.account(*key)
            account = known[key]
            pending.append((index, intake.build(
                item, account_exists=account is not None,
                is_pec=bool(account and account.is_pec_account), rules=self.rules,
                default_priority=dp,
            )))
        results = await self.store.enqueue([m for _, m in pending], self.clock.now())
        queued = 0
        urgent = False
        for (index, message), reason in zip(pending, results, strict=True):
            if reason is None:
                queued += 1
                urgent = urgent or message.priority == Priority.IMMEDIATE
            else:
                rejected.append(Rejection(index, message.id, reason))
        if queued:
            self.waker.wake(urgent)
        if rejected:
            self.wake_reports()  # intake errors are stored as reportable error events
        rejected.sort(key=lambda r: r.index)
        return SubmitResult(queued, tuple(rejected))

    async def _tenants_named(self, messages: Sequence[Mapping[str, Any]]) -> list[Tenant]:
        names = {m.get("tenant_id") for m in messages
                 if isinstance(m.get("tenant_id"), str) and jsonsafe.storable(m["tenant_id"])}
        found = []
        for name in names:
            tenant = await self._directory.tenant(str(name))
            if tenant is not None:
                found.append(tenant)
        return found

    @staticmethod
    def _early_reason(
        caller: Caller, item: Mapping[str, Any], tenants: Mapping[str, Tenant]
    ) -> str | None:
        """Checks whose failure stores nothing (§4.5, first rows)."""
        if not item.get("id"):
            return "missing id"
        tenant_id = item.get("tenant_id")
        if not tenant_id:
            return "missing tenant_id"
        if not caller.admin and caller.tenant_id != tenant_id:
            return "tenant not authorized"
        tenant = tenants.get(tenant_id)
        if tenant is None:
            return "tenant not found"
        if not tenant.active:
            return "tenant inactive"
        return None

    # -- tenants -----------------------------------------------------------------------------

    async def put_tenant(self, caller: Caller, command: PutTenant) -> str | None:
        """POST /tenant: create (returns the new raw key) or fully replace."""
        self.require_admin(caller)
        existing = await self.store.get_tenant(command.id)
        base = existing or Tenant(id=command.id)
        tenant = apply_tenant_changes(base, command.changes, admin=True)
        created = await self.store.put_tenant(tenant)
        self._changed()
        if not created:
            return None
        key = new_token()
        expires = command.changes.api_key_expires_at
        await self.store.set_api_key(command.id, hash_token(key),
                                     None if expires is ABSENT else expires)
        return key

    async def update_tenant(self, caller: Caller, tenant_id: str, changes: TenantChanges
                            ) -> None:
        """PUT /tenant/{id}: partial update."""
        if not caller.admin and any(getattr(changes, name) is not ABSENT
                                    for name in ADMIN_ONLY_TENANT_FIELDS):
            raise Forbidden("Admin token required")
        tenant = await self.tenant_in_scope(caller, tenant_id)
        updated = apply_tenant_changes(tenant, changes, admin=caller.admin)
        await self.store.put_tenant(updated)
        self._changed()
        expires = changes.api_key_expires_at
        if caller.admin and expires is not ABSENT:
            await self.store.set_api_key(tenant_id, tenant.api_key_hash, expires)

    async def list_tenants(self, caller: Caller, active_only: bool = False) -> list[Tenant]:
        self.require_admin(caller)
        return await self.store.list_tenants(active_only)

    async def visible_tenants(self, caller: Caller) -> list[Tenant]:
        """Every tenant for the admin; a tenant's own (none once it is deleted)."""
        if caller.admin:
            return await self.store.list_tenants()
        tenant = await self.store.get_tenant(str(caller.tenant_id))
        return [] if tenant is None else [tenant]

    async def tenants_with_accounts(self, caller: Caller) -> list[tuple[Tenant, list[Account]]]:
        """The visible tenants, each with its accounts."""
        return [(tenant, await self.store.list_accounts(tenant.id))
                for tenant in await self.visible_tenants(caller)]

    async def key_current(self, tenant_id: str, key_print: str | None) -> bool:
        """Whether the tenant still has the API key whose digest starts with `key_print`,
        unexpired (a dashboard session signed in with it stays valid while this holds)."""
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is None or tenant.api_key_hash is None or not tenant.api_key_hash.startswith(
                key_print or "-"):
            return False
        expires = tenant.api_key_expires_at
        return not (expires is not None and expires <= self.clock.now())

    async def delete_tenant(self, caller: Caller, tenant_id: str) -> None:
        self.require_admin(caller)
        if not await self.store.delete_tenant(tenant_id):
            raise NotFound("tenant not found")
        self._changed()
        for listener in self.account_listeners:
            listener.tenant_deleted(tenant_id)

    async def issue_key(self, caller: Caller, tenant_id: str, expires: int | None
                        ) -> tuple[str, int | None]:
        self.require_admin(caller)
        if await self.store.get_tenant(tenant_id) is None:
            raise NotFound("tenant not found")
        key = new_token()
        await self.store.set_api_key(tenant_id, hash_token(key), expires)
        return key, expires

    async def revoke_key(self, caller: Caller, tenant_id: str) -> None:
        self.require_admin(caller)
        if not await self.store.set_api_key(tenant_id, None, None):
            raise NotFound("tenant not found")

    # -- accounts ----------------------------------------------------------------------------

    async def put_account(self, caller: Caller, command: PutAccount) -> None:
        """POST /account: create, or replace all but the secrets the command leaves ABSENT."""
        tenant = await self.tenant_in_scope(caller, command.account.tenant_id)
        existing = await self.store.get_account(tenant.id, command.account.id)
        account = account_with_secrets(command, existing)
        await self.store.put_account(account)
        self._changed()
        for listener in self.account_listeners:
            listener.account_changed(account.tenant_id, account.id)

    async def list_accounts(self, caller: Caller, tenant_id: str) -> list[Account]:
        await self.tenant_in_scope(caller, tenant_id)
        return await self.store.list_accounts(tenant_id)

    async def delete_account(self, caller: Caller, tenant_id: str, account_id: str) -> None:
        await self.tenant_in_scope(caller, tenant_id)
        if not await self.store.delete_account(tenant_id, account_id, int(self.clock.now())):
            raise NotFound("account not found or not owned by tenant")
        self._changed()
        self.wake_reports()
        for listener in self.account_listeners:
            listener.account_changed(tenant_id, account_id)

    def _changed(self) -> None:
        self.directory_changed()
        for listener in self.change_listeners:
            listener()

    def directory_changed(self) -> None:
        """A tenant or account changed, here or (PostgreSQL notification) on another
        instance: intake reads them again."""
        self._directory.changed()

    # -- suspension --------------------------------------------------------------------------

    async def suspend(self, caller: Caller, tenant_id: str, batch_code: str | None
                      ) -> tuple[list[str], int]:
        tenant = await self.tenant_in_scope(caller, tenant_id)
        batches = list(tenant.suspended_batches)
        if batch_code is None:
            batches = ["*"]
        elif "*" not in batches and batch_code not in batches:
            batches.append(batch_code)
        await self.store.set_suspended(tenant_id, batches)
        return batches, await self.store.count_open(tenant_id, batch_code)

    async def activate(self, caller: Caller, tenant_id: str, batch_code: str | None
                       ) -> tuple[list[str], int]:
        tenant = await self.tenant_in_scope(caller, tenant_id)
        batches = list(tenant.suspended_batches)
        if batch_code is None:
            batches = []
        elif "*" in batches:
            raise InvalidRequest(
                "cannot activate a single batch while all batches are suspended")
        else:
            batches = [b for b in batches if b != batch_code]
        await self.store.set_suspended(tenant_id, batches)
        self.waker.wake()
        return batches, await self.store.count_open(tenant_id, batch_code)

    # -- delivery reports --------------------------------------------------------------------

    def wake_reports(self) -> None:
        self.reports.wake()

    async def run_now(self, caller: Caller, tenant_id: str | None) -> None:
        """Wake dispatcher and report loop; for one tenant also clear its report timers."""
        if tenant_id is None and not caller.admin:
            tenant_id = caller.tenant_id
        if tenant_id is not None:
            await self.tenant_in_scope(caller, tenant_id)
            state = await self.store.get_sync_state(tenant_id)
            await self.store.put_sync_state(sync.cleared(state))
        self.waker.wake()
        self.reports.run_now(tenant_id)

    async def cleanup(self, caller: Caller, tenant_id: str, older_than: int | None) -> int:
        """Purge the tenant's final, fully acknowledged messages older than the threshold."""
        await self.tenant_in_scope(caller, tenant_id)
        age = self.retention_seconds if older_than is None else older_than
        return await self.store.purge_reported(int(self.clock.now()) - age, tenant_id)

    async def sync_status(self, caller: Caller) -> list[SyncView]:
        self.require_admin(caller)
        now = self.clock.now()
        states = {s.tenant_id: s for s in await self.store.list_sync_states()}
        pending = await self.store.pending_event_counts()
        views = []
        for tenant in await self.store.list_tenants():
            state = states.get(tenant.id) or SyncState(tenant.id)
            target = sync.target_of(tenant, self.sync_rules)
            due_at = None if target is None else sync.next_heartbeat_ts(
                tenant, state, self.sync_rules)
            views.append(SyncView(
                tenant=tenant, state=state, pending_events=pending.get(tenant.id, 0),
                next_sync_due=due_at is not None and due_at <= now,
                next_sync_ts=None if due_at is None else int(max(due_at, now)),
                in_dnd=sync.in_dnd(state, now),
            ))
        return views

    # -- instance ----------------------------------------------------------------------------

    async def instance(self, caller: Caller) -> InstanceConfig:
        self.require_admin(caller)
        return await self.store.get_instance()

    async def update_instance(self, caller: Caller, changes: InstanceChanges) -> None:
        """PUT /instance: the admin token first (it may refuse), then the stored settings."""
        self.require_admin(caller)
        token = changes.api_token
        if token is not ABSENT:
            self._check_admin_token(token)
        current = await self.store.get_instance()
        updated = apply_instance_changes(current, changes)
        if updated.bounce_poll_interval < 1:
            raise InvalidRequest("bounce_poll_interval must be at least 1")
        if updated != current:
            await self.store.put_instance(updated)
        if token is not ABSENT:
            self._replace_admin_token(token)

    def _check_admin_token(self, token: str) -> None:
        if self.token_source == "env":
            raise InvalidRequest("admin token is managed by GMP_API_TOKEN")
        if self.token_source == "file":
            raise InvalidRequest("admin token is managed by the config file")
        if not token or not all(33 <= ord(ch) <= 126 for ch in token):
            raise InvalidRequest("api_token must be non-empty printable ASCII without spaces")

    def _replace_admin_token(self, token: str) -> None:
        self.token_writer(token)
        self.admin_token = token
        log.info("admin API token replaced through PUT /instance")

    async def reload_bounce(self, caller: Caller) -> bool:
        """Check the stored bounce settings and apply them to this process's poller now."""
        self.require_admin(caller)
        config = await self.store.get_instance()
        if config.bounce_enabled and not config.bounce_imap_host:
            raise InvalidRequest("bounce enabled but no IMAP host configured")
        await self.bounce_control.reload()
        return config.bounce_enabled

    # -- command log -------------------------------------------------------------------------

    async def record_command(
        self, method: str, path: str, tenant_id: str | None, payload: Any, status: int
    ) -> None:
        """The line of a command, written before returning (in the one queue of lines:
        auditlog.LaterLines)."""
        await self._later_lines.add_and_wait(self._command_entry(method, path, tenant_id,
                                                                 payload, status))

    def _command_entry(self, method: str, path: str, tenant_id: str | None, payload: Any,
                       status: int) -> CommandEntry:
        return CommandEntry(command_ts=int(self.clock.now()), endpoint=f"{method} {path}",
                            tenant_id=tenant_id, payload=audit.redact(payload),
                            response_status=status)

    async def record_command_after(
        self, method: str, path: str, tenant_id: str | None, payload: Any, status: int
    ) -> None:
        """record_command, without holding up the response: the command itself is done (and
        committed); its log line, stamped now, is written just after, with the other lines
        handed in meanwhile (auditlog.LaterLines), instead of costing the caller a second
        commit. Reads of the log on this instance wait for these writes first, so a caller
        who reads it after the response sees its own command. Past MAX_LOG_BACKLOG lines not
        yet written (a slow database), the caller waits for its own, as before."""
        await self._later_lines.add(self._command_entry(method, path, tenant_id, payload,
                                                        status))

    async def settle_command_log(self, timeout: float | None = None) -> None:
        """Until the log lines begun so far are stored (reads of the log; shutdown, bounded by
        `timeout`). Lines begun meanwhile are not waited for: steady traffic never holds a
        reader up for longer than one write."""
        await self._later_lines.settle(timeout)

    async def command_log(
        self, caller: Caller, *, tenant_id: str | None, since_ts: int | None,
        until_ts: int | None, endpoint: str | None, limit: int, offset: int,
    ) -> tuple[int, list[CommandEntry]]:
        self.require_admin(caller)
        await self.settle_command_log()
        return await self.store.list_commands(tenant_id=tenant_id, since_ts=since_ts,
                                              until_ts=until_ts, endpoint=endpoint,
                                              limit=limit, offset=offset)

    async def export_commands(
        self, caller: Caller, *, tenant_id: str | None, since_ts: int | None,
        until_ts: int | None,
    ) -> list[CommandEntry]:
        """Successful commands for replay; secret keys removed rather than masked."""
        self.require_admin(caller)
        await self.settle_command_log()
        found = await self.store.export_commands(tenant_id=tenant_id, since_ts=since_ts,
                                                 until_ts=until_ts)
        return [replace(e, payload=audit.strip_secrets(e.payload)) for e in found]


@dataclass(frozen=True, slots=True)
class SyncView:
    """One tenant's row of /tenants/sync-status."""

    tenant: Tenant
    state: SyncState
    pending_events: int
    next_sync_due: bool
    next_sync_ts: int | None
    in_dnd: bool


INSTANCE_FIELDS = tuple(
    f.name for f in fields(InstanceConfig) if f.name not in ("created_at", "updated_at")
)
_INSTANCE_DEFAULTS = InstanceConfig()


def apply_instance_changes(base: InstanceConfig, changes: InstanceChanges) -> InstanceConfig:
    """Named settings change, None resets to the default; the password's change is its own."""
    new: dict[str, Any] = {}
    for name in INSTANCE_FIELDS:
        value = getattr(changes, name)
        if value is ABSENT:
            continue
        if value is None and name != "bounce_imap_password":
            value = getattr(_INSTANCE_DEFAULTS, name)
        new[name] = value
    return replace(base, **new)


async def tenant_in_scope(store: TenantReader, caller: Caller, tenant_id: str) -> Tenant:
    """MailService.tenant_in_scope, needing only the tenant reads: the bounce use cases check
    scope with it, so they are built before the service that drives their poller."""
    if not caller.admin and caller.tenant_id != tenant_id:
        raise Forbidden("Token not authorized for this tenant")
    tenant = await store.get_tenant(tenant_id)
    if tenant is None:
        raise NotFound("tenant not found")
    return tenant


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _default_priority(value: Any) -> Priority:
    priority = parse_priority(value, exact=True)
    if priority is None:
        raise InvalidRequest("invalid default_priority")
    return priority


_TENANT_TEXT_FIELDS = ("name", *TENANT_URL_FIELDS)
_TENANT_DEFAULTS = Tenant(id="-")


def apply_tenant_changes(base: Tenant, changes: TenantChanges, *, admin: bool) -> Tenant:
    """New Tenant from base with the named fields (None: the default; secrets as said)."""
    new: dict[str, Any] = {}
    for name in _TENANT_TEXT_FIELDS:
        value = getattr(changes, name)
        if value is not ABSENT:
            new[name] = getattr(_TENANT_DEFAULTS, name) if value is None else value
    if changes.client_auth is not ABSENT:
        new["client_auth"] = _client_auth(base.client_auth, changes.client_auth)
    if changes.webhook_secret is not ABSENT:
        new["webhook_secret"] = changes.webhook_secret
    if changes.rate_limits is not ABSENT:
        new["rate_limits"] = changes.rate_limits
    if changes.large_file_config is not ABSENT:
        given = changes.large_file_config
        new["large_file_config"] = (
            None if given is None else _keep_storage_options(base.large_file_config, given))
    if changes.active is not ABSENT:
        new["active"] = True if changes.active is None else changes.active
    if any(getattr(changes, name) is not ABSENT for name in TENANT_URL_FIELDS):
        new["urls_set_by_tenant"] = not admin
    return replace(base, **new)


def _keep_storage_options(current: Mapping[str, Any] | None, value: Mapping[str, Any]
                          ) -> dict[str, Any]:
    """storage_options are write-only (§11): a config sent without them keeps the stored ones."""
    if "storage_options" in value or not current or "storage_options" not in current:
        return dict(value)
    return {**value, "storage_options": current["storage_options"]}


def _client_auth(current: ClientAuth, change: ClientAuthChange | None) -> ClientAuth:
    if change is None:
        return ClientAuth()
    return ClientAuth(method=change.method, user=change.user,
                      token=kept(change.token, current.token),
                      password=kept(change.password, current.password))


def account_with_secrets(command: PutAccount, existing: Account | None) -> Account:
    """The account of the command, its secrets changed as the command says."""
    submission_hash = existing.submission_password_hash if existing else None
    if command.submission_password is not ABSENT:
        submission = command.submission_password
        submission_hash = None if submission is None else hash_password(submission)
    return replace(
        command.account,
        password=kept(command.password, existing.password if existing else None),
        imap_password=kept(command.imap_password, existing.imap_password if existing else None),
        submission_password_hash=submission_hash,
    )
