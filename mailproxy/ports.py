"""The ports: what the core asks of the world, as small Protocols.

Each consumer names the narrowest role it uses (the worker the queue, the reporter the report
log, the SMTP listener intake and the directory). `Store` joins the roles for the composition
root and the store contract suite; SQLite and PostgreSQL implement it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from mailproxy.model import (
    Account,
    ClaimBatch,
    Claimed,
    CommandEntry,
    Event,
    InstanceConfig,
    MessageView,
    NewMessage,
    Outcome,
    SyncState,
    Tenant,
)


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class Waker(Protocol):
    def wake(self, urgent: bool = False) -> None: ...


# -- the store, role by role ---------------------------------------------------------------------

class Health(Protocol):
    async def ping(self) -> None: ...


class Lifecycle(Health, Protocol):
    """Opening, closing and the health check."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...


class Meta(Protocol):
    """Small named values of the instance (its id, the schema version)."""

    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...
    async def set_meta_if_absent(self, key: str, value: str) -> str: ...


class TenantReader(Protocol):
    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    async def list_tenants(self, active_only: bool = False) -> list[Tenant]: ...
    async def tenant_by_key_hash(self, key_hash: str) -> Tenant | None: ...


class AccountReader(Protocol):
    async def get_account(self, tenant_id: str, account_id: str) -> Account | None: ...
    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]: ...


class DirectoryReader(TenantReader, AccountReader, Protocol):
    """Tenants and accounts, read only."""


class Directory(DirectoryReader, Protocol):
    """Tenants and their SMTP accounts."""

    async def put_tenant(self, tenant: Tenant) -> bool: ...
    async def set_api_key(self, tenant_id: str, key_hash: str | None, expires: int | None
                          ) -> bool: ...
    async def set_suspended(self, tenant_id: str, batches: Sequence[str]) -> bool: ...
    async def delete_tenant(self, tenant_id: str) -> bool: ...
    async def put_account(self, account: Account) -> None: ...
    async def delete_account(self, tenant_id: str, account_id: str, now: int) -> bool: ...


class Intake(Protocol):
    """Where accepted messages are committed."""

    async def enqueue(self, items: Sequence[NewMessage], now: float) -> list[str | None]: ...


class QueueCounts(Protocol):
    async def count_open(self, tenant_id: str | None = None, batch_code: str | None = None
                         ) -> int: ...


class MessageLog(Protocol):
    """The stored messages as the REST listing shows them, and their deletion."""

    async def list_messages(
        self, tenant: Tenant, *, now: int, active_only: bool = False, status: str | None = None,
        include_history: bool = False, limit: int = 10000, offset: int = 0,
    ) -> list[MessageView]: ...
    async def list_all_messages(
        self, tenants: Mapping[str, Tenant], *, now: int, active_only: bool = False,
        status: str | None = None, include_history: bool = False, limit: int = 1000,
        before: int | None = None,
    ) -> tuple[list[MessageView], int | None]: ...
    async def delete_messages(self, tenant_id: str, ids: Sequence[str]
                              ) -> tuple[int, list[str]]: ...


class QueueStore(QueueCounts, Protocol):
    """The worker's side of the queue: claim with a lease, record, renew, release, recover."""

    async def claim(self, owner: str, now: float, lease_seconds: float, max_total: int,
                    skip: frozenset[tuple[str, str]] = frozenset()) -> ClaimBatch: ...
    async def record(self, owner: str, results: Sequence[tuple[Claimed, Outcome]], now: float
                     ) -> list[bool]: ...
    async def renew(self, owner: str, claimed: Sequence[Claimed], until: float) -> None: ...
    async def release(self, owner: str, claimed: Sequence[Claimed], now: float) -> None: ...
    async def recover(self, now: float, retry_max: int, *, all_sending: bool) -> int: ...
    async def prune(self, now: float) -> None: ...


class ReportLog(Protocol):
    """Delivery events waiting for their tenant, and the report loop's state (§8)."""

    async def pending_event_counts(self) -> dict[str, int]: ...
    async def pending_events(self, tenant_id: str, limit: int) -> list[Event]: ...
    async def ack_events(self, tenant_id: str, event_ids: Sequence[str], now: int) -> int: ...
    async def ack_all_events(self, tenant_id: str, now: int) -> int: ...
    async def get_sync_state(self, tenant_id: str) -> SyncState: ...
    async def list_sync_states(self) -> list[SyncState]: ...
    async def put_sync_state(self, state: SyncState) -> None: ...
    async def acquire_report_lease(self, tenant_id: str, owner: str, now: float, until: float
                                   ) -> bool: ...
    async def release_report_lease(self, tenant_id: str, owner: str) -> None: ...
    async def purge_reported(self, before_ts: int, tenant_id: str | None = None) -> int: ...


class InstanceSettings(Protocol):
    """The stored instance settings (§3.6)."""

    async def get_instance(self) -> InstanceConfig: ...
    async def put_instance(self, config: InstanceConfig) -> None: ...


class AuditPruning(Protocol):
    async def prune_commands(self, before_ts: int) -> int: ...


class AuditLog(AuditPruning, Protocol):
    """The command log (§3.7)."""

    async def log_commands(self, entries: Sequence[CommandEntry]) -> None: ...
    async def list_commands(
        self, *, tenant_id: str | None, since_ts: int | None, until_ts: int | None,
        endpoint: str | None, limit: int, offset: int,
    ) -> tuple[int, list[CommandEntry]]: ...
    async def export_commands(
        self, *, tenant_id: str | None, since_ts: int | None, until_ts: int | None
    ) -> list[CommandEntry]: ...


class Store(Lifecycle, Meta, Directory, Intake, MessageLog, QueueStore, ReportLog,
            InstanceSettings, AuditLog, Protocol):
    """Every role at once: what a backend implements and the contract suite checks."""


@runtime_checkable
class WakeSource(Protocol):
    """Optional store capability: wake-ups from other instances sharing the database.

    PostgreSQL implements it with LISTEN/NOTIFY; SQLite has a single process and does not.
    """

    async def listen(self, callback: Callable[[], None]) -> None: ...

    def on_change(self, callback: Callable[[], None]) -> None: ...
