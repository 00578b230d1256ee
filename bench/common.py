"""Shared pieces of the benchmarks: a discarding sink process, a server process, figures."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp

TOKEN = "bench-admin-token"
BODY_2KB = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 36)[:2000]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PROXY_ID = re.compile(rb"^X-Mail-Proxy-ID: *([^\r\n]*)", re.MULTILINE | re.IGNORECASE)


def _counting(counter: Any, distinct: Any) -> Callable[[bytes], None]:
    """accept(content) for a sink: counts every message and, with `distinct`, each
    X-Mail-Proxy-ID once."""
    seen: set[bytes] = set()

    def accept(content: bytes) -> None:
        with counter.get_lock():
            counter.value += 1
        if distinct is not None:
            found = _PROXY_ID.search(content.split(b"\r\n\r\n", 1)[0])
            key = found.group(1) if found else b""
            if key not in seen:
                seen.add(key)
                with distinct.get_lock():
                    distinct.value += 1

    return accept


def _sink_main(port: int, counter: Any, ready: Any, distinct: Any = None) -> None:
    from aiosmtpd.controller import Controller

    accept = _counting(counter, distinct)

    class Discard:
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                              responses: list[str]) -> list[str]:
            # aiosmtpd reads commands one by one, so it can take them pipelined; it just
            # does not say so. Relays such as Postfix do.
            session.host_name = hostname
            return [*responses[:-1], "250-PIPELINING", responses[-1]]

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            accept(envelope.content)
            return "250 OK"

    # uvloop, as `mail-proxy serve` uses: the sink stands for a relay on another machine, so
    # the less CPU it takes from this one, the more the figures measure mail-proxy.
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    controller = Controller(Discard(), hostname="127.0.0.1", port=port, loop=loop)
    controller.start()
    ready.set()
    signal.sigwait({signal.SIGTERM})
    controller.stop()


class _LeanSmtp(asyncio.Protocol):
    """Just enough of a relay's SMTP server (RFC 5321) to accept and discard mail: replies
    without parsing arguments, so that it takes little CPU, as an MTA written in C would."""

    EHLO = (b"250-sink\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
            b"250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n")

    def __init__(self, accept: Any, delay: float = 0.0, chunking: bool = True) -> None:
        self.accept = accept  # called with each message's content
        self.delay = delay  # seconds before each batch of replies leaves: a relay's distance
        if not chunking:  # content only after DATA's 354
            self.EHLO = self.EHLO.replace(b"250-CHUNKING\r\n", b"")
        self.buffer = bytearray()
        self.in_data = False
        self.chunk = 0  # bytes of a BDAT LAST chunk still to come
        self.scanned = 0  # how much of the content was searched for its end already
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport instances

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        replies: list[bytes] = []
        while buffer:
            if self.chunk or self.in_data:
                reply = self._content()
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    break
                line = bytes(buffer[:end])
                del buffer[:end + 2]
                reply = self._command(line)
            if reply is None:
                break
            replies.append(reply)
            if reply.startswith(b"221"):
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
        if replies and self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._send, b"".join(replies))
        elif replies:
            self.transport.write(b"".join(replies))

    def _content(self) -> bytes | None:
        """The reply once a whole message (DATA up to its dot, or a BDAT chunk) is in."""
        buffer = self.buffer
        if self.chunk:
            if len(buffer) < self.chunk:
                return None
            return self._chunk_done()
        if buffer.startswith(b".\r\n"):
            end, skip = 0, 3
        else:
            end = buffer.find(b"\r\n.\r\n", self.scanned)
            skip = 5
        if end < 0:
            self.scanned = max(0, len(buffer) - 4)
            return None
        self.accept(bytes(buffer[:end]))
        del buffer[:end + skip]
        self.in_data, self.scanned = False, 0
        return b"250 2.0.0 OK\r\n"

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
            return b"250 2.0.0 OK\r\n"
        if verb == b"EHLO":
            return self.EHLO
        if verb == b"BDAT":  # BDAT <size> LAST; the chunk follows at once, no reply yet
            self.chunk = int(line.split()[1])
            content = self._content()
            return content if content is not None else b""
        if verb == b"DATA":
            self.in_data = True
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"502 5.5.2 Command not implemented\r\n"

    def _chunk_done(self) -> bytes:
        self.accept(bytes(self.buffer[:self.chunk]))
        del self.buffer[:self.chunk]
        self.chunk = 0
        return b"250 2.0.0 OK\r\n"

    def _send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


def _lean_sink_main(port: int, counter: Any, ready: Any, distinct: Any = None,
                    delay: float = 0.0, chunking: bool = True) -> None:
    accept = _counting(counter, distinct)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _LeanSmtp(accept, delay, chunking),
                                          "127.0.0.1", port)
        ready.set()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


@dataclass
class Sink:
    """A discarding aiosmtpd relay in its own process, counting what it accepted.

    With count_ids it also counts distinct X-Mail-Proxy-ID values (one per stored message),
    so that received - distinct is the number of duplicate deliveries.
    """

    port: int = field(default_factory=free_port)
    counter: Any = field(default_factory=lambda: mp.Value("q", 0))
    proc: mp.Process | None = None
    count_ids: bool = False
    seen: Any = field(default_factory=lambda: mp.Value("q", 0))
    lean: bool = False
    delay: float = 0.0  # lean only: seconds each reply is held back, as by a network RTT
    chunking: bool = True  # lean only: offers CHUNKING (BDAT)

    def start(self) -> Sink:
        ready = mp.Event()
        distinct = self.seen if self.count_ids else None
        lean = (self.delay, self.chunking) if self.lean else ()
        args = (self.port, self.counter, ready, distinct, *lean)
        self.proc = mp.Process(target=_lean_sink_main if self.lean else _sink_main,
                               args=args, daemon=True)
        self.proc.start()
        ready.wait(10)
        return self

    @property
    def received(self) -> int:
        return int(self.counter.value)

    @property
    def distinct(self) -> int:
        """Distinct X-Mail-Proxy-ID values received (count_ids only)."""
        return int(self.seen.value)

    def stop(self) -> None:
        if self.proc is not None and self.proc.pid is not None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.join(5)


def raw_message(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "bench@acme.test"
    msg["To"] = "rcpt@example.org"
    msg["Subject"] = f"bench {i}"
    msg.set_content(BODY_2KB)
    return msg.as_bytes()


async def raw_smtp_rate(port: int, connections: int = 8, total: int = 8000,
                        data: bytes | None = None) -> float:
    """aiosmtplib -> sink with reused connections: the raw limit of this machine (for 2 KB
    messages, or for `data`)."""
    import aiosmtplib

    data = raw_message(0) if data is None else data
    per = total // connections

    async def one() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for _ in range(per):
            await client.sendmail("bench@acme.test", ["rcpt@example.org"], data)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return per * connections / (time.perf_counter() - start)


BENCH_SETTINGS = {
    "GMP_SEND_CONCURRENCY_PER_ACCOUNT": "8",
    "GMP_SMTP_POOL_SIZE": "8",
    "GMP_SEND_CONCURRENCY": "16",
    "GMP_LOG_LEVEL": "WARNING",
}


class Server:
    """`mail-proxy serve` on SQLite in a temporary data dir, as a child process."""

    def __init__(self, extra_env: dict[str, str] | None = None, smtp: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailproxy-bench-"))
        self.port = free_port()
        self.smtp_port = free_port() if smtp else 0
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **BENCH_SETTINGS, "GMP_DATA_DIR": str(self.dir),
                    "GMP_API_TOKEN": TOKEN, "GMP_PORT": str(self.port),
                    "GMP_SMTP_PORT": str(self.smtp_port), **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def settings(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith("GMP_") and k != "GMP_API_TOKEN"}

    async def start(self) -> Server:
        self.proc = subprocess.Popen([sys.executable, "-m", "mailproxy", "serve"], env=self.env)
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/health") as resp:
                        if resp.status == 200:
                            return self
                await asyncio.sleep(0.05)
        raise RuntimeError("server did not start")

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process in MB."""
        assert self.proc is not None
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_sink(count_ids: bool = False, lean: bool = False, delay: float = 0.0,
                 chunking: bool = True) -> Iterator[Sink]:
    sink = Sink(count_ids=count_ids, lean=lean, delay=delay, chunking=chunking).start()
    try:
        yield sink
    finally:
        sink.stop()


def headers() -> dict[str, str]:
    return {"X-API-Token": TOKEN}


async def setup_tenant(session: aiohttp.ClientSession, url: str, sink_port: int) -> None:
    async with session.post(url + "/tenant", json={"id": "bench"}, headers=headers()) as r:
        assert r.status == 200, await r.text()
    account = {"id": "main", "tenant_id": "bench", "host": "127.0.0.1", "port": sink_port,
               "use_tls": False, "batch_size": 200}
    async with session.post(url + "/account", json=account, headers=headers()) as r:
        assert r.status == 200, await r.text()


def rest_message(i: int | str) -> dict[str, Any]:
    return {"id": f"b{i}", "tenant_id": "bench", "account_id": "main",
            "from": "bench@acme.test", "to": ["rcpt@example.org"], "subject": f"bench {i}",
            "body": BODY_2KB}


def figure(name: str, value: float, unit: str, limit: str = "") -> None:
    line = f"{name:<44} {value:>12,.1f} {unit:<8}"
    if limit:
        line += f"  [{limit}]"
    print(line, flush=True)


async def single_latency(session: aiohttp.ClientSession, urls: Sequence[str], prefix: str,
                         total: int, concurrency: int = 16, account_id: str = "main"
                         ) -> list[float]:
    """One message per POST, `concurrency` requests at a time, the lanes spread round-robin
    over the urls: the milliseconds of each request."""
    samples: list[float] = []
    numbers = iter(range(total))

    async def lane(url: str) -> None:
        for n in numbers:
            item = rest_message(f"{prefix}-{n}")
            item["account_id"] = account_id
            began = time.perf_counter()
            async with session.post(url + "/commands/add-messages", json={"messages": [item]},
                                    headers=headers()) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            samples.append((time.perf_counter() - began) * 1000)

    await asyncio.gather(*(lane(urls[i % len(urls)]) for i in range(concurrency)))
    return samples


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# -- the limits of the building blocks, measured in the same run ---------------------------

SCHEMA = Path(__file__).resolve().parents[1] / "mailproxy" / "store" / "sql" / "sqlite"


def raw_sqlite_insert_rate(rows: int = 20_000, batch: int = 1000) -> float:
    """Rows/s of plain sqlite3 inserting the REST bench's rows into mail-proxy's own schema
    (same indexes), WAL with synchronous=FULL, `batch` rows per transaction: what batched
    ingest would cost with nothing but the database."""
    import json
    import sqlite3
    import uuid

    with tempfile.TemporaryDirectory(prefix="mailproxy-rawsql-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for migration in sorted(SCHEMA.glob("[0-9][0-9][0-9]_*.sql")):
            conn.executescript(migration.read_text())
        sql = ("INSERT INTO messages (pk, tenant_id, client_id, account_id, status, queued, "
               "priority, payload, created_ts, updated_ts) "
               "VALUES (?, 'bench', ?, 'main', 'pending', 1, 2, ?, ?, ?)")
        payloads = [(f"r{i}", json.dumps(rest_message(i))) for i in range(rows)]
        began = time.perf_counter()
        for first in range(0, rows, batch):
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            conn.executemany(sql, [(uuid.uuid4().hex, cid, body, now, now)
                                   for cid, body in payloads[first:first + batch]])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - began
        conn.close()
    return rows / elapsed


def _bare_http_main(port: int, ready: Any) -> None:
    from aiohttp import web

    async def add(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"ok": True, "queued": [m["id"] for m in body["messages"]]})

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/commands/add-messages", add)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


async def bare_json_latency(session: aiohttp.ClientSession, total: int = 4000
                            ) -> list[float]:
    """single_latency against a bare aiohttp JSON endpoint (parse, answer, nothing else) in
    its own process: the floor of one enqueue's latency on this machine."""
    port = free_port()
    ready = mp.Event()
    proc = mp.Process(target=_bare_http_main, args=(port, ready), daemon=True)
    proc.start()
    try:
        ready.wait(10)
        return await single_latency(session, [f"http://127.0.0.1:{port}"], "bare", total)
    finally:
        if proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.join(5)
