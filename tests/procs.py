"""`mail-proxy serve` as a child process, for the end-to-end tests that start real servers."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.relay import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "serve-test-admin-token"


def new_encryption_key() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


class ServeProcess:
    """One `python -m mailproxy serve` on free ports; its log goes to <data_dir>/serve.log."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "serve.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GMP_DATA_DIR": str(data_dir),
            "GMP_API_TOKEN": TOKEN,
            "GMP_PORT": str(self.port),
            "GMP_SMTP_PORT": "0",
            "GMP_LOG_LEVEL": "WARNING",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.instance_id: str | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailproxy", "serve"], env=self.env, cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 30) -> None:
        """Wait for /health 200, then remember the instance id from /status."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            assert self.running, f"serve exited:\n{self.log_tail()}"
            try:
                async with session.get(self.url + "/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"serve did not become healthy:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        status = await self.call(session, "GET", "/status")
        self.instance_id = str(status["instance_id"])

    async def call(self, session: aiohttp.ClientSession, method: str, path: str,
                   body: Any = None) -> Any:
        """An admin request that must answer 200; returns the JSON body."""
        async with session.request(method, self.url + path, json=body,
                                   headers={"X-API-Token": TOKEN}) as resp:
            text = await resp.text()
            assert resp.status == 200, (method, path, resp.status, text)
            return await resp.json()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit code (SIGKILL after the timeout)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
