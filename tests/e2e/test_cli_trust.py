"""The CLI in an untrusted checkout: a forged ./data must not get the admin token.

Each test runs `mail-proxy default tenants list` as a subprocess in a directory whose
data/server.json and data/server.pid were written by hand, with GMP_API_TOKEN set. A
real aiohttp server on 127.0.0.1 records every request and its X-API-Token header. The
CLI's proxy variables point at that recorder too (loopback excepted), so a request to an
off-loopback URL lands there instead of leaving the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.endpoint import closed_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-that-must-stay-home"


@dataclass
class Recorder:
    port: int = 0
    tokens: list[str | None] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.tokens.append(request.headers.get("X-API-Token"))
        return web.json_response({"tenants": []})


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    yield rec
    await runner.cleanup()


def sleeper(tmp_path: Path, script: str, *args: str) -> subprocess.Popen[bytes]:
    """A process that does nothing, with the command line a forger would like."""
    path = tmp_path / script
    path.write_text("import time\ntime.sleep(120)\n", encoding="utf-8")
    return subprocess.Popen([sys.executable, str(path), *args])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


async def run_cli(checkout: Path, recorder: Recorder, pid: int, url: str) -> tuple[int, str]:
    data = checkout / "data"
    data.mkdir(parents=True)
    (data / "server.pid").write_text(f"{pid}\n", encoding="ascii")
    (data / "server.json").write_text(json.dumps({"name": "default", "pid": pid, "url": url}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMP_")
           and k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    proxy = f"http://127.0.0.1:{recorder.port}"
    env.update(HOME=str(checkout), PYTHONPATH=str(ROOT), GMP_API_TOKEN=TOKEN,
               GMP_PORT=str(closed_port()), http_proxy=proxy, https_proxy=proxy,
               no_proxy="127.0.0.1,localhost,::1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailproxy", "default", "tenants", "list", cwd=checkout,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.parametrize("who", ["pid 1", "a process that only names mailproxy"])
async def test_a_pid_that_is_no_mail_proxy_server_gets_no_token(
    tmp_path: Path, recorder: Recorder, processes: list[subprocess.Popen[bytes]], who: str
) -> None:
    pid = 1
    if who != "pid 1":
        processes.append(sleeper(tmp_path, "mailproxy-notes.py", "serve"))
        pid = processes[-1].pid
    code, out = await run_cli(tmp_path / "checkout", recorder, pid,
                              f"http://127.0.0.1:{recorder.port}")
    assert recorder.tokens == []
    assert code == 3, out
    assert "instance default is not running" in out
    assert f"names pid {pid}, which is no running mail-proxy serve" in out


async def test_a_recorded_url_off_loopback_is_refused_before_connecting(
    tmp_path: Path, recorder: Recorder, processes: list[subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "bin").mkdir()
    processes.append(sleeper(tmp_path, "bin/mail-proxy", "serve"))  # passes for a server
    code, out = await run_cli(tmp_path / "checkout", recorder, processes[-1].pid,
                              "http://192.0.2.1:9")
    assert recorder.tokens == []
    assert code == 3, out
    assert ("instance default is not running here: its data directory names "
            "http://192.0.2.1:9, which is not a loopback address") in out
