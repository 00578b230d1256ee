"""A tenant application for delivery-report tests: a real aiohttp server on 127.0.0.1.

It records every request (headers and the exact body bytes) and answers as told:

    endpoint.status = 500                       # any status
    endpoint.reply = {"ok": True, "queued": 2}  # JSON body of the answer
    endpoint.hang = True                        # never answer (until the test ends)
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass(frozen=True, slots=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body)["delivery_report"])


class Endpoint:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.status = 200
        self.reply: Any = {"ok": True}
        self.hang = False
        self.release = asyncio.Event()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(Call(request.path, dict(request.headers), await request.read()))
        if self.hang:
            await self.release.wait()
        if 300 <= self.status < 400:
            return web.Response(status=self.status, headers={"Location": "/elsewhere"})
        return web.json_response(self.reply, status=self.status)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def items(self) -> list[dict[str, Any]]:
        return [item for call in self.calls for item in call.items]

    def heartbeats(self) -> list[Call]:
        return [c for c in self.calls if not c.items]

    async def wait_items(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.items()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} report items, got {self.items()}")
            await asyncio.sleep(0.05)
        return self.items()

    async def wait_calls(self, n: int, timeout: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} calls, got {len(self.calls)}")
            await asyncio.sleep(0.05)
        return self.calls


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


EndpointFactory = Callable[[], Awaitable[Endpoint]]


@pytest.fixture
async def make_endpoint(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[EndpointFactory]:
    made: list[Endpoint] = []

    async def factory() -> Endpoint:
        endpoint = Endpoint()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", endpoint.handle)
        endpoint.server = await aiohttp_server(app)
        made.append(endpoint)
        return endpoint

    yield factory
    for endpoint in made:
        endpoint.release.set()
