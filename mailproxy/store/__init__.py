"""Store backends; open_store picks one from the database URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailproxy.errors import ConfigError

if TYPE_CHECKING:
    from mailproxy.bounces.service import BounceStore
    from mailproxy.config import Settings
    from mailproxy.dashboard.port import DashboardStore
    from mailproxy.ports import Store
    from mailproxy.store.rows import Cipher


def open_store(settings: Settings, cipher: Cipher) -> Store:
    """SQLite for a path, PostgreSQL for a postgresql:// URL (opened by the caller)."""
    if settings.is_postgres:
        try:
            from mailproxy.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(f"PostgreSQL support is not available: {exc}") from None
        store: Store = PostgresStore(settings.db_path, cipher, pool_size=settings.db_pool_size)
        return store
    from mailproxy.store.sqlite import SqliteStore

    return SqliteStore(settings.db_path, cipher, synchronous=settings.sqlite_synchronous)


def open_dashboard_store(store: Store) -> DashboardStore:
    """The dashboard's queries on the same database as `store` (issue 15)."""
    from mailproxy.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from mailproxy.store.sqlite_dashboard import SqliteDashboard

        return SqliteDashboard(store)
    from mailproxy.store.postgres import PostgresStore
    from mailproxy.store.postgres_dashboard import PostgresDashboard

    assert isinstance(store, PostgresStore)
    return PostgresDashboard(store)


def open_bounce_store(store: Store) -> BounceStore:
    """The bounce and suppression tables (§12) of an opened store, on the same connections."""
    from mailproxy.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from mailproxy.store.sqlite_bounces import SqliteBounces

        return SqliteBounces(store)
    from mailproxy.store.postgres import PostgresStore
    from mailproxy.store.postgres_bounces import PostgresBounces

    assert isinstance(store, PostgresStore)
    return PostgresBounces(store)
