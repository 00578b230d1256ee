"""SMTP ingress bench (docs/performance.md): 8 aiosmtplib connections into `mail-proxy serve`.

Three processes share the machine, as in production: `mail-proxy serve` (SQLite, defaults
unless listed), a discarding aiosmtpd sink standing in for the relay, and this client.
Figures, all from the same run:

  raw      aiosmtplib -> sink directly, 8 connections (the ceiling on this machine)
  accepted aiosmtplib -> mail-proxy SMTP listener, 8 connections, each 250 after commit
  e2e      first submission -> the sink has received every message (delivery by the worker)

    python bench/smtp_ingress.py [--messages 10000] [--connections 8] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib

HOST = "127.0.0.1"
ADMIN = "bench-admin-token"
ROOT = Path(__file__).resolve().parents[1]


# -- the sink (run as a separate process with --sink PORT) -------------------------------

class _Sink:
    """Discards every message; NOOP answers with the number accepted so far."""

    def __init__(self) -> None:
        self.accepted = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted += 1
        return "250 2.0.0 OK"

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        return f"250 {self.accepted}"

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd can take pipelined commands; say so
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


async def _run_sink(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    sink = _Sink()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink", enable_SMTPUTF8=True, loop=loop), HOST, port)
    async with server:
        await server.serve_forever()


# -- helpers ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def message(size: int) -> bytes:
    head = (
        b"From: Bench <bench@acme.test>\r\nTo: sink@example.org\r\nSubject: bench message\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2] + b"\r\n"


async def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(f"nothing listens on {port}")


async def sink_count(port: int) -> int:
    async with aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False) as smtp:
        response = await smtp.noop()
    return int(response.message.split()[0])


async def blast(port: int, data: bytes, total: int, connections: int,
                login: tuple[str, str] | None) -> float:
    """Send `total` messages over `connections` connections; seconds until the last 250."""

    async def one(count: int) -> None:
        smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False, timeout=60)
        await smtp.connect()
        if login is not None:
            await smtp.login(*login)
        for _ in range(count):
            _, reply = await smtp.sendmail("bench@acme.test", ["sink@example.org"], data)
            if not reply.startswith("2"):
                raise RuntimeError(reply)
        await smtp.quit()

    shares = [total // connections + (1 if i < total % connections else 0)
              for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in shares))
    return time.perf_counter() - started


async def wait_sink(port: int, target: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while (count := await sink_count(port)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink has {count} of {target}")
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def setup_tenant(api: str, sink_port: int) -> str:
    async with aiohttp.ClientSession(headers={"X-API-Token": ADMIN}) as http:
        async with http.post(f"{api}/tenant", json={"id": "acme"}) as resp:
            resp.raise_for_status()
            token = str((await resp.json())["api_key"])
        account = {"id": "main", "tenant_id": "acme", "host": HOST, "port": sink_port,
                   "use_tls": False}
        async with http.post(f"{api}/account", json=account) as resp:
            resp.raise_for_status()
    return token


def spawn(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(list(args), env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


# -- the run ------------------------------------------------------------------------------

async def run(args: argparse.Namespace, workdir: Path) -> None:
    sink_port, api_port, smtp_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GMP_DATA_DIR": str(workdir / "data"),
        "GMP_API_TOKEN": ADMIN,
        "GMP_PORT": str(api_port),
        "GMP_SMTP_PORT": str(smtp_port),
        "GMP_SEND_CONCURRENCY_PER_ACCOUNT": "8",
        "GMP_SMTP_POOL_SIZE": "8",
        "GMP_LOG_LEVEL": args.log_level,
    }
    settings = {k: v for k, v in env.items() if k.startswith("GMP_") or k == "PYTHONPATH"}
    sink = spawn([sys.executable, __file__, "--sink", str(sink_port)], dict(os.environ),
                 workdir / "sink.log")
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    server = spawn([sys.executable, *profile, "-m", "mailproxy", "serve"], env,
                   workdir / "serve.log")
    try:
        await wait_port(sink_port, sink)
        await wait_port(api_port, server)
        await wait_port(smtp_port, server)
        token = await setup_tenant(f"http://{HOST}:{api_port}", sink_port)
        data = message(args.size)
        n, conns = args.messages, args.connections

        raw_seconds = await blast(sink_port, data, n, conns, None)
        before = await sink_count(sink_port)

        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        accept_seconds = await blast(smtp_port, data, n, conns, ("acme/main", token))
        finished = await wait_sink(sink_port, before + n)
        e2e_seconds = finished - started
        server_cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        stop(server)
        stop(sink)

    raw, accepted, e2e = n / raw_seconds, n / accept_seconds, n / e2e_seconds
    print(f"# smtp ingress bench, commit {commit()}, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}")
    print(f"# messages={n} size={len(data)}B connections={conns} client+sink loop=asyncio "
          f"(serve uses uvloop when installed)")
    for key in sorted(settings):
        print(f"# {key}={settings[key]}")
    print("# every other GMP_* setting at its default (SQLite, GMP_SQLITE_SYNCHRONOUS=FULL)")
    print(f"raw_smtp_8conn        {raw:8.0f} msgs/s   ({raw_seconds:.2f} s)")
    print(f"smtp_ingress_accepted {accepted:8.0f} msgs/s   ({accept_seconds:.2f} s)   "
          f"{accepted / raw:.0%} of raw")
    print(f"smtp_ingress_e2e      {e2e:8.0f} msgs/s   ({e2e_seconds:.2f} s)   "
          f"{e2e / raw:.0%} of raw")
    print(f"serve_cpu_per_message {server_cpu / n * 1000:8.2f} ms      "
          f"({server_cpu:.2f} s CPU in mail-proxy serve, ingress + delivery)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, db)")
    parser.add_argument("--profile", help="write a cProfile of mail-proxy serve to this file")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        asyncio.run(_run_sink(args.sink))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    try:
        asyncio.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"# work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
