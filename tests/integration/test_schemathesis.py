"""Property-based API check: schemathesis against a live 127.0.0.1 server (stack notes §10).

Every generated request, valid or not, must get a documented, schema-conforming answer and
never a 5xx. Deliveries go to a sender that fails at once, so no generated account host is
ever contacted.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from mailproxy.app import build, make_app
from mailproxy.errors import TemporaryFailure
from mailproxy.model import Account
from tests.conftest import ADMIN, make_settings

pytest.importorskip("schemathesis")

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance," \
         "response_schema_conformance"


async def _refuse(account: Account, sender: str, recipients: Sequence[str], data: bytes,
                  **_: Any) -> tuple[()]:
    raise TemporaryFailure("sending disabled in this test")


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = await build(make_settings(tmp_path / "data"))
    monkeypatch.setattr(parts.pool, "send", _refuse)
    server = await aiohttp_server(make_app(parts), host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/openapi.json"
    binary = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(binary), "run", url, "--checks", CHECKS, "--max-examples", "25",
        "--header", f"X-API-Token: {ADMIN}", "--no-color", "--seed", "1",
        "--suppress-health-check", "all",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""}, cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report
