"""Shared fixtures: settings in a temporary data dir, the real app over HTTP, a relay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from mailproxy.app import build, make_app
from mailproxy.config import Settings, load_settings
from mailproxy.delivery import Resolver, system_resolver
from mailproxy.ports import Clock
from tests.endpoint import make_endpoint
from tests.imap import dovecot, dovecot_tls
from tests.pg import pg_schema, pg_url
from tests.relay import Relay, make_relay, relay

__all__ = ["dovecot", "dovecot_tls", "make_endpoint", "make_relay", "pg_schema", "pg_url",
           "relay"]

ADMIN = "admin-token-for-tests"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    cli: dict[str, Any] = {
        "data_dir": str(data_dir),
        "api_token": ADMIN,
        "send_loop_interval": 0.05,
        "smtp_port": 0,
        "retry_base_seconds": 1,
        "smtp_connect_timeout_seconds": 5,
        "smtp_send_timeout_seconds": 5,
        "shutdown_grace_seconds": 5,
    }
    cli.update(overrides)
    return load_settings(cli, env={})


class Api:
    """A REST client bound to the running app, with the admin token by default."""

    def __init__(self, client: TestClient[Any, Any], token: str = ADMIN) -> None:
        self.client = client
        self.token = token

    def as_token(self, token: str | None) -> Api:
        return Api(self.client, token) if token is not None else _NoToken(self.client)

    def _headers(self) -> dict[str, str]:
        return {"X-API-Token": self.token}

    async def call(self, method: str, path: str, *, json: Any = None, data: Any = None,
                   params: dict[str, Any] | None = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": self._headers(), "params": params}
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        async with self.client.request(method, path, **kwargs) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self.call(method, path, **kwargs)
        assert status == 200, (status, body)
        return body

    async def tenant(self, tenant_id: str = "acme", **fields: Any) -> str:
        body = await self.ok("POST", "/tenant", json={"id": tenant_id, **fields})
        return str(body["api_key"])

    async def account(self, relay: Relay, tenant_id: str = "acme", account_id: str = "main",
                      **fields: Any) -> None:
        body = {"id": account_id, "tenant_id": tenant_id, "host": relay.host,
                "port": relay.port, "use_tls": False, **fields}
        await self.ok("POST", "/account", json=body)

    async def send(self, *messages: dict[str, Any], **top: Any) -> Any:
        return await self.ok("POST", "/commands/add-messages",
                             json={"messages": list(messages), **top})

    async def messages(self, tenant_id: str = "acme", **params: Any) -> list[dict[str, Any]]:
        body = await self.ok("GET", "/messages", params={"tenant_id": tenant_id, **params})
        return list(body["messages"])


class _NoToken(Api):
    def _headers(self) -> dict[str, str]:
        return {}


def message(i: int | str = 1, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": f"m{i}", "tenant_id": "acme", "account_id": "main",
        "from": "Sender <sender@acme.test>", "to": ["rcpt@example.org"],
        "subject": f"Hello {i}", "body": "Plain body",
    }
    base.update(fields)
    return base


ApiFactory = Callable[..., Awaitable[Api]]


class FakeClock:
    """A clock the test moves by hand (time starts at the real now)."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll an async condition until it holds (for effects of background tasks)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def make_api(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> AsyncIterator[ApiFactory]:
    """make_api(**settings) -> an Api on a freshly built app (worker running)."""

    async def factory(clock: Clock | None = None, resolver: Resolver = system_resolver,
                      **overrides: Any) -> Api:
        settings = make_settings(tmp_path / "data", **overrides)
        parts = await build(settings, clock=clock, resolver=resolver)
        client = await aiohttp_client(make_app(parts))
        api = Api(client)
        api.parts = parts  # type: ignore[attr-defined]
        return api

    yield factory


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()
