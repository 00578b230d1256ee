"""Where the bytes come from: the filesystem sandbox and guarded HTTP (§10).

Each source streams into a Spool and raises FetchError with its retry decision.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from mailproxy.attachments.cache import Spool
from mailproxy.attachments.names import FetchError
from mailproxy.model import ClientAuth
from mailproxy.netguard import AddressRefused, AllowList, check_literal

CHUNK = 64 * 1024
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP fetch: GET for http_url, POST with a JSON body for the tenant endpoint."""

    url: str
    method: str = "GET"
    json: Mapping[str, Any] | None = None
    auth: ClientAuth | None = None
    restricted: bool = True


def parse_roots(text: str | None) -> tuple[Path, ...]:
    """GMP_ATTACHMENT_ROOTS: comma-separated absolute directories, resolved once."""
    roots = []
    for item in (text or "").split(","):
        item = item.strip()
        if item:
            roots.append(Path(item).resolve())
    return tuple(roots)


def sandboxed(path_text: str, roots: tuple[Path, ...]) -> Path:
    """The real path of a filesystem attachment, or ValueError saying why it is refused.

    `..` components are refused outright; the resolved path (symlinks followed) must lie
    inside one of the roots; relative paths resolve against the first root.
    """
    if not roots:
        raise ValueError("filesystem attachments are disabled (GMP_ATTACHMENT_ROOTS unset)")
    pure = PurePosixPath(path_text)
    if ".." in pure.parts:
        raise ValueError("path contains '..'")
    candidate = Path(pure) if pure.is_absolute() else roots[0] / pure
    real = Path(os.path.realpath(candidate))
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise ValueError("path is outside the allowed roots")
    return real


def read_file(path: Path, spool: Spool, limit: int, filename: str) -> None:
    """Blocking: copy a sandboxed file into the spool (run in a thread)."""
    try:
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size > limit:
                raise FetchError(filename, f"larger than {limit} bytes", temporary=False)
            while chunk := fh.read(CHUNK):
                spool.write(chunk)
                if spool.size > limit:
                    raise FetchError(filename, f"larger than {limit} bytes", temporary=False)
    except FileNotFoundError:
        raise FetchError(filename, "file not found", temporary=False) from None
    except IsADirectoryError:
        raise FetchError(filename, "path is a directory", temporary=False) from None
    except PermissionError:
        raise FetchError(filename, "file not readable", temporary=False) from None


def auth_headers(auth: ClientAuth | None) -> dict[str, str]:
    if auth is None:
        return {}
    if auth.method == "bearer" and auth.token:
        return {"Authorization": f"Bearer {auth.token}"}
    if auth.method == "basic" and auth.user is not None:
        pair = f"{auth.user}:{auth.password or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def classify_status(status: int) -> bool:
    """True when an HTTP error status is worth a retry (408, 429, 5xx)."""
    return status in (408, 429) or status >= 500


class HttpSource:
    """aiohttp sessions: a guarded one for URLs a tenant wrote, an open one for the rest."""

    def __init__(self, allow: AllowList, timeout: float) -> None:
        self._allow = allow
        self._timeout = timeout
        self._open: aiohttp.ClientSession | None = None
        self._guarded: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        from mailproxy.netguard import GuardedResolver

        self._open = aiohttp.ClientSession(trust_env=False)
        self._guarded = aiohttp.ClientSession(
            trust_env=False,
            connector=aiohttp.TCPConnector(resolver=GuardedResolver(self._allow),
                                           use_dns_cache=False),
        )

    async def close(self) -> None:
        for session in (self._open, self._guarded):
            if session is not None:
                await session.close()
        self._open = self._guarded = None

    async def fetch(self, request: Request, spool: Spool, limit: int, filename: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._follow(request, spool, limit, filename)
        except TimeoutError:
            raise FetchError(filename, f"timeout after {self._timeout:g} s",
                             temporary=True) from None
        except AddressRefused as exc:
            raise FetchError(filename, str(exc), temporary=False) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise FetchError(filename, str(exc.os_error), temporary=False) from None
            raise FetchError(filename, f"connection failed: {exc}", temporary=True) from None
        except aiohttp.InvalidURL as exc:
            raise FetchError(filename, f"invalid URL: {exc}", temporary=False) from None
        except aiohttp.ClientError as exc:
            raise FetchError(filename, f"connection failed: {exc}", temporary=True) from None

    async def _follow(self, request: Request, spool: Spool, limit: int, filename: str) -> None:
        url, auth = request.url, request.auth
        for _hop in range(MAX_REDIRECTS + 1):
            status, location = await self._once(request, url, auth, spool, limit, filename)
            if location is None:
                return
            target = urljoin(url, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise FetchError(filename, "redirect to a non-HTTP URL refused",
                                 temporary=False)
            if origin(target) != origin(url):
                auth = None  # credentials never follow to another origin
            url = target
            if status == 303:
                request = Request(url, "GET", None, None, request.restricted)
        raise FetchError(filename, f"more than {MAX_REDIRECTS} redirects", temporary=False)

    async def _once(self, request: Request, url: str, auth: ClientAuth | None, spool: Spool,
                    limit: int, filename: str) -> tuple[int, str | None]:
        if urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(filename, "only http and https URLs are fetched", temporary=False)
        session = self._guarded if request.restricted else self._open
        assert session is not None, "attachment fetcher not started"
        if request.restricted:
            check_literal(urlsplit(url).hostname or "", self._allow)
        async with session.request(request.method, url, json=request.json,
                                   headers=auth_headers(auth), allow_redirects=False) as resp:
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                return resp.status, resp.headers["Location"]
            if not 200 <= resp.status < 300:
                raise FetchError(filename, f"HTTP {resp.status}",
                                 temporary=classify_status(resp.status))
            if (resp.content_length or 0) > limit:
                raise FetchError(filename, f"larger than {limit} bytes", temporary=False)
            async for chunk in resp.content.iter_chunked(CHUNK):
                spool.write(chunk)
                if spool.size > limit:
                    raise FetchError(filename, f"larger than {limit} bytes", temporary=False)
            return resp.status, None
