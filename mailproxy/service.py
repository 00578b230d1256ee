"""Use cases. Knows the ports it needs (Store, Clock, Waker) and nothing of the adapters."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from mailproxy import intake
from mailproxy.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from mailproxy.model import (
    Account,
    ClaimBatch,
    Claimed,
    ClientAuth,
    LimitBehavior,
    NewMessage,
    Outcome,
    Priority,
    RateLimits,
    Tenant,
)
from mailproxy.tokens import hash_password, hash_token, new_token, same

ADMIN_ONLY_TENANT_FIELDS = ("active", "rate_limits", "large_file_config", "api_key_expires_at")
TENANT_URL_FIELDS = ("client_base_url", "client_sync_path", "client_attachment_path")


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class Waker(Protocol):
    def wake(self) -> None: ...


class Store(Protocol):
    """Persistence port; SQLite and PostgreSQL implement it, the contract suite checks both."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...
    async def set_meta_if_absent(self, key: str, value: str) -> str: ...
    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    async def list_tenants(self, active_only: bool = False) -> list[Tenant]: ...
    async def tenant_by_key_hash(self, key_hash: str) -> Tenant | None: ...
    async def put_tenant(self, tenant: Tenant) -> bool: ...
    async def set_api_key(self, tenant_id: str, key_hash: str | None, expires: int | None
                          ) -> bool: ...
    async def set_suspended(self, tenant_id: str, batches: Sequence[str]) -> bool: ...
    async def delete_tenant(self, tenant_id: str) -> bool: ...
    async def get_account(self, tenant_id: str, account_id: str) -> Account | None: ...
    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]: ...
    async def put_account(self, account: Account) -> None: ...
    async def delete_account(self, tenant_id: str, account_id: str, now: int) -> bool: ...
    async def enqueue(self, items: Sequence[NewMessage], now: float) -> list[str | None]: ...
    async def count_open(self, tenant_id: str | None = None, batch_code: str | None = None
                         ) -> int: ...
    async def list_messages(
        self, tenant: Tenant, *, now: int, active_only: bool = False, status: str | None = None,
        include_history: bool = False, limit: int = 10000, offset: int = 0,
    ) -> list[dict[str, Any]]: ...
    async def delete_messages(self, tenant_id: str, ids: Sequence[str]
                              ) -> tuple[int, list[str]]: ...
    async def claim(self, owner: str, now: float, lease_seconds: float, max_total: int,
                    skip: frozenset[tuple[str, str]] = frozenset()) -> ClaimBatch: ...
    async def record(self, owner: str, results: Sequence[tuple[Claimed, Outcome]], now: float
                     ) -> list[bool]: ...
    async def renew(self, owner: str, claimed: Sequence[Claimed], until: float) -> None: ...
    async def release(self, owner: str, claimed: Sequence[Claimed], now: float) -> None: ...
    async def recover(self, now: float, retry_max: int, *, all_sending: bool) -> int: ...
    async def prune(self, now: float) -> None: ...


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


@dataclass
class MailService:
    store: Store
    clock: Clock
    rules: intake.IntakeRules
    admin_token: str
    waker: Waker | None = None
    account_listeners: list[Any] = field(default_factory=list)

    # -- auth --------------------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise Unauthorized("Invalid or missing API token")
        if same(token, self.admin_token):
            return Caller()
        tenant = await self.store.tenant_by_key_hash(hash_token(token))
        if tenant is None or tenant.api_key_hash is None:
            raise Unauthorized("Invalid or missing API token")
        if not same(tenant.api_key_hash, hash_token(token)):
            raise Unauthorized("Invalid or missing API token")
        expires = tenant.api_key_expires_at
        if expires is not None and expires <= self.clock.now():
            raise Unauthorized("Invalid or missing API token")
        return Caller(tenant_id=tenant.id)

    async def tenant_in_scope(self, caller: Caller, tenant_id: str) -> Tenant:
        """The tenant named by a request, if the caller may act on it (403/404 otherwise)."""
        if not caller.admin and caller.tenant_id != tenant_id:
            raise Forbidden("Token not authorized for this tenant")
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is None:
            raise NotFound("tenant not found")
        return tenant

    @staticmethod
    def require_admin(caller: Caller) -> None:
        if not caller.admin:
            raise Forbidden("Admin token required")

    # -- intake ------------------------------------------------------------------------------

    async def submit(
        self, caller: Caller, messages: Sequence[Mapping[str, Any]], default_priority: Any
    ) -> SubmitResult:
        dp: Priority | None = None
        if default_priority is not None:
            dp = _default_priority(default_priority)
        tenants = {t.id: t for t in await self._tenants_named(messages)}
        accounts = await self._accounts_of(tenants.values())
        rejected: list[Rejection] = []
        pending: list[tuple[int, NewMessage]] = []
        for index, item in enumerate(messages):
            reason = self._early_reason(caller, item, tenants)
            if reason is not None:
                rejected.append(Rejection(index, _str_or_none(item.get("id")), reason))
                continue
            account = accounts.get((item["tenant_id"], item.get("account_id") or ""))
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
        if queued and self.waker is not None:
            self.waker.wake()
        rejected.sort(key=lambda r: r.index)
        return SubmitResult(queued, tuple(rejected))

    async def _tenants_named(self, messages: Sequence[Mapping[str, Any]]) -> list[Tenant]:
        names = {m.get("tenant_id") for m in messages if isinstance(m.get("tenant_id"), str)}
        found = []
        for name in names:
            tenant = await self.store.get_tenant(str(name))
            if tenant is not None:
                found.append(tenant)
        return found

    async def _accounts_of(self, tenants: Any) -> dict[tuple[str, str], Account]:
        out: dict[tuple[str, str], Account] = {}
        for tenant in tenants:
            for account in await self.store.list_accounts(tenant.id):
                out[account.key] = account
        return out

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

    async def put_tenant(self, caller: Caller, body: Mapping[str, Any]) -> str | None:
        """POST /tenant: create (returns the new raw key) or fully replace."""
        self.require_admin(caller)
        tenant_id = str(body["id"])
        existing = await self.store.get_tenant(tenant_id)
        base = existing or Tenant(id=tenant_id)
        full = {name: body.get(name) for name in TENANT_FIELDS}
        tenant = apply_tenant_fields(base, full, admin=True, full_replace=True)
        created = await self.store.put_tenant(tenant)
        if not created:
            return None
        key = new_token()
        await self.store.set_api_key(tenant_id, hash_token(key),
                                     _seconds(body.get("api_key_expires_at")))
        return key

    async def update_tenant(self, caller: Caller, tenant_id: str, body: Mapping[str, Any]
                            ) -> None:
        """PUT /tenant/{id}: partial update."""
        if not caller.admin and any(name in body for name in ADMIN_ONLY_TENANT_FIELDS):
            raise Forbidden("Admin token required")
        tenant = await self.tenant_in_scope(caller, tenant_id)
        changes = {k: v for k, v in body.items() if k in TENANT_FIELDS}
        updated = apply_tenant_fields(tenant, changes, admin=caller.admin, full_replace=False)
        await self.store.put_tenant(updated)
        if caller.admin and "api_key_expires_at" in body:
            await self.store.set_api_key(tenant_id, tenant.api_key_hash,
                                         _seconds(body["api_key_expires_at"]))

    async def delete_tenant(self, caller: Caller, tenant_id: str) -> None:
        self.require_admin(caller)
        if not await self.store.delete_tenant(tenant_id):
            raise NotFound("tenant not found")
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

    async def put_account(self, caller: Caller, body: Mapping[str, Any]) -> None:
        tenant = await self.tenant_in_scope(caller, str(body["tenant_id"]))
        existing = await self.store.get_account(tenant.id, str(body["id"]))
        account = account_from_body(body, existing)
        await self.store.put_account(account)
        for listener in self.account_listeners:
            listener.account_changed(account.tenant_id, account.id)

    async def delete_account(self, caller: Caller, tenant_id: str, account_id: str) -> None:
        await self.tenant_in_scope(caller, tenant_id)
        if not await self.store.delete_account(tenant_id, account_id, int(self.clock.now())):
            raise NotFound("account not found or not owned by tenant")
        for listener in self.account_listeners:
            listener.account_changed(tenant_id, account_id)

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
        if self.waker is not None:
            self.waker.wake()
        return batches, await self.store.count_open(tenant_id, batch_code)


def _seconds(value: Any) -> int | None:
    """A timestamp from a request: floats are truncated (§1)."""
    return None if value is None else int(value)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _default_priority(value: Any) -> Priority:
    if isinstance(value, bool):
        raise InvalidRequest("invalid default_priority")
    if isinstance(value, int) and not 0 <= value <= 3:
        raise InvalidRequest("invalid default_priority")
    if isinstance(value, str) and value.strip().lower() not in {p.name.lower() for p in Priority}:
        raise InvalidRequest("invalid default_priority")
    if isinstance(value, int):
        return Priority(value)
    if isinstance(value, str):
        return Priority[value.strip().upper()]
    raise InvalidRequest("invalid default_priority")


TENANT_FIELDS = (
    "name", "client_base_url", "client_sync_path", "client_attachment_path", "client_auth",
    "webhook_secret", "rate_limits", "large_file_config", "active",
)
_TENANT_DEFAULTS = Tenant(id="-")


def apply_tenant_fields(
    base: Tenant, values: Mapping[str, Any], *, admin: bool, full_replace: bool
) -> Tenant:
    """New Tenant from base with the given body fields (null = default; secrets kept on null)."""
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name == "client_auth":
            changes["client_auth"] = _client_auth(base.client_auth, value)
        elif name == "webhook_secret":
            if value is None:
                if not full_replace:
                    changes["webhook_secret"] = None
            else:
                changes["webhook_secret"] = value or None
        elif name == "rate_limits":
            changes["rate_limits"] = None if value is None else RateLimits(
                minute=value.get("minute"), hour=value.get("hour"), day=value.get("day"))
        elif name == "active":
            changes["active"] = True if value is None else bool(value)
        elif value is None:
            changes[name] = getattr(_TENANT_DEFAULTS, name)
        else:
            changes[name] = value
    if any(name in values for name in TENANT_URL_FIELDS):
        changes["urls_set_by_tenant"] = not admin
    return replace(base, **changes)


def _client_auth(current: ClientAuth, value: Mapping[str, Any] | None) -> ClientAuth:
    if value is None:
        return ClientAuth()
    token = value.get("token")
    password = value.get("password")
    return ClientAuth(
        method=value.get("method") or "none",
        user=value.get("user"),
        token=current.token if token is None else (token or None),
        password=current.password if password is None else (password or None),
    )


def _secret(current: str | None, body: Mapping[str, Any], name: str) -> str | None:
    """Write-only secret: absent or null keeps, "" clears."""
    if name not in body or body[name] is None:
        return current
    return body[name] or None


def account_from_body(body: Mapping[str, Any], existing: Account | None) -> Account:
    submission = body.get("submission_password")
    submission_hash = existing.submission_password_hash if existing else None
    if submission is not None:
        submission_hash = hash_password(submission) if submission else None
    return Account(
        tenant_id=str(body["tenant_id"]),
        id=str(body["id"]),
        host=str(body["host"]),
        port=int(body["port"]),
        user=body.get("user"),
        password=_secret(existing.password if existing else None, body, "password"),
        use_tls=body.get("use_tls"),
        ttl=int(body.get("ttl") or 300),
        limits=RateLimits(
            minute=body.get("limit_per_minute"),
            hour=body.get("limit_per_hour"),
            day=body.get("limit_per_day"),
        ),
        limit_behavior=LimitBehavior(body.get("limit_behavior") or "defer"),
        batch_size=int(body.get("batch_size") or 50),
        submission_password_hash=submission_hash,
        is_pec_account=bool(body.get("is_pec_account") or False),
        imap_host=body.get("imap_host"),
        imap_port=int(body.get("imap_port") or 993),
        imap_user=body.get("imap_user"),
        imap_password=_secret(existing.imap_password if existing else None, body,
                              "imap_password"),
        imap_folder=body.get("imap_folder") or "INBOX",
        imap_ssl=True if body.get("imap_ssl") is None else bool(body.get("imap_ssl")),
    )
