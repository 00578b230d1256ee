"""Helpers for dashboard tests: sign in through the real form, read CSRF tokens from pages."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


async def sign_in(client: TestClient[Any, Any], token: str) -> str:
    """Sign in with the form; returns the session's CSRF token (read from the overview)."""
    async with client.get("/ui/login") as resp:
        assert resp.status == 200
        form_csrf = csrf_of(await resp.text())
    async with client.post("/ui/login", data={"token": token, "csrf": form_csrf},
                           allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        assert resp.headers["Location"] == "/ui/"
    async with client.get("/ui/") as resp:
        assert resp.status == 200
        return csrf_of(await resp.text())
