"""A file server for attachment tests: a real aiohttp server on 127.0.0.1.

    /files/{name}        the bytes put in `files[name]` (GET, counted in `hits[name]`)
    /slow                answers after `slow_seconds`
    /redirect/{n}        302 to `redirect_to` (a full URL), or n-1 hops to itself
    /status/{code}       that status
    /private/{name}      the file, only with `Authorization: Basic user:pass`
    /tenant/attachments  the tenant endpoint: POST {"storage_path": name} with the bearer
                         token `endpoint_token`, answers files[name]
Every request's headers are kept in `requests` (path, headers).
"""

from __future__ import annotations

import asyncio
import base64
import collections
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.slow_seconds = 3.0
        self.redirect_to = ""
        self.endpoint_token = "endpoint-token"
        self.fail_status: int | None = None
        self.server: TestServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _record(self, request: web.Request) -> None:
        self.requests.append((request.path, dict(request.headers)))

    async def file(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        name = request.match_info["name"]
        self.hits[name] += 1
        if self.fail_status is not None:
            return web.Response(status=self.fail_status)
        if name not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[name], content_type="application/octet-stream")

    async def slow(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        await asyncio.sleep(self.slow_seconds)
        return web.Response(body=b"late")

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        hops = int(request.match_info["n"])
        target = self.redirect_to if hops <= 1 else f"/redirect/{hops - 1}"
        return web.Response(status=302, headers={"Location": target})

    async def status(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(status=int(request.match_info["code"]))

    async def private(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        expected = "Basic " + base64.b64encode(b"user:pass").decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        return await self.file(request)

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if request.headers.get("Authorization") != f"Bearer {self.endpoint_token}":
            return web.Response(status=403)
        name = (await request.json())["storage_path"]
        self.hits[name] += 1
        if name not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[name])


FileServerFactory = Callable[[], Awaitable[FileServer]]


@pytest.fixture
async def file_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[FileServer]:
    files = FileServer()
    app = web.Application()
    app.router.add_get("/files/{name}", files.file)
    app.router.add_get("/slow", files.slow)
    app.router.add_get("/redirect/{n}", files.redirect)
    app.router.add_get("/status/{code}", files.status)
    app.router.add_get("/private/{name}", files.private)
    app.router.add_post("/tenant/attachments", files.endpoint)
    files.server = await aiohttp_server(app, host="127.0.0.1")
    yield files
