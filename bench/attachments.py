"""Attachments end to end: msgs/s with one 200 KB attachment per message fetched by http_url,
cache cold vs warm, beside the plain-text end-to-end rate of the same run; and the peak RSS
of the server with 1,000 such messages in flight.

Usage: python bench/attachments.py [--messages 1000] [--plain 5000]

The file server runs in its own process (aiohttp on 127.0.0.1, allowed with
GMP_ATTACHMENT_ALLOW_PRIVATE); the sink is common.py's lean discarding relay (Python's
aiosmtpd reads DATA line by line and would be the bottleneck at 270 KB per message). The
raw figure is aiosmtplib sending a message of the same size straight to that sink.
Cold: every message names its own URL and no MD5, so every attachment is fetched. Warm:
every message names the same URL with its content_md5, so the file is fetched once and then
read from the disk tier (200 KB is above the 100 KB memory threshold).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Server,
    figure,
    free_port,
    headers,
    raw_message,
    raw_smtp_rate,
    rest_message,
    running_sink,
    setup_tenant,
)
from run import command, wait_received

SIZE = 200 * 1024
BLOB = os.urandom(SIZE)
MD5 = hashlib.md5(BLOB).hexdigest()


def _file_server(port: int, hits: Any, ready: Any) -> None:
    from aiohttp import web

    async def serve(request: web.Request) -> web.Response:
        with hits.get_lock():
            hits.value += 1
        return web.Response(body=BLOB, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/files/{name}", serve)

    async def started(_app: web.Application) -> None:
        ready.set()

    app.on_startup.append(started)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Files:
    def __init__(self) -> None:
        self.port = free_port()
        self.hits: Any = mp.Value("q", 0)
        ready = mp.Event()
        self.proc = mp.Process(target=_file_server, args=(self.port, self.hits, ready),
                               daemon=True)
        self.proc.start()
        ready.wait(10)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


def large_message() -> bytes:
    """A 2 KB text message with the 200 KB attachment, as the proxy would send it."""
    from email.message import EmailMessage
    from email.parser import BytesParser
    from email.policy import default

    msg = BytesParser(policy=default).parsebytes(raw_message(0))
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(BLOB, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


def with_attachment(i: int, files: Files, warm: bool) -> dict[str, Any]:
    item = rest_message(i)
    attachment: dict[str, Any] = {"filename": "report.pdf"}
    if warm:
        attachment.update(storage_path=files.url("shared.pdf"), content_md5=MD5)
    else:
        attachment["storage_path"] = files.url(f"{i}.pdf")
    item["attachments"] = [attachment]
    return item


async def post(session: aiohttp.ClientSession, url: str, items: list[dict[str, Any]],
               batch: int = 100) -> None:
    for first in range(0, len(items), batch):
        async with session.post(url + "/commands/add-messages",
                                json={"messages": items[first:first + batch]},
                                headers=headers()) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            assert not body["rejected"], body["rejected"][:3]


def cpu_seconds(proc: Any) -> float:
    """User + system CPU a child process (the server, the sink) has used so far."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rate(session: aiohttp.ClientSession, server: Server, sink: Any,
               items: list[dict[str, Any]]) -> float:
    """POST the items, wait until the sink has them all: messages per second. Also prints
    the server's CPU per message, steadier than the rate on a shared host."""
    base = sink.received
    cpu, sink_cpu = cpu_seconds(server.proc), cpu_seconds(sink.proc)
    began = time.perf_counter()
    await post(session, server.url, items)
    await wait_received(sink, base + len(items))
    elapsed = time.perf_counter() - began
    used, sink_used = cpu_seconds(server.proc) - cpu, cpu_seconds(sink.proc) - sink_cpu
    figure("  server CPU per message", 1000 * used / len(items), "ms",
           f"{100 * used / elapsed:.0f} % of one core")
    figure("  sink CPU per message", 1000 * sink_used / len(items), "ms",
           f"{100 * sink_used / elapsed:.0f} % of one core")
    return len(items) / elapsed


async def main(args: argparse.Namespace) -> None:
    env = {"GMP_ATTACHMENT_ALLOW_PRIVATE": "127.0.0.0/8"}
    files = Files()
    n = args.messages
    try:
        with running_sink(lean=True) as sink:
            raw_large = await raw_smtp_rate(sink.port, total=800, data=large_message())
            figure("raw SMTP 8 connections, 200 KB attached", raw_large, "msgs/s")
            server = await Server(env).start()
            print("settings:", " ".join(f"{k}={v}" for k, v in sorted(server.settings().items())))
            try:
                async with aiohttp.ClientSession() as session:
                    await setup_tenant(session, server.url, sink.port)
                    plain = await rate(session, server, sink,
                                       [rest_message(f"p{i}") for i in range(args.plain)])
                    limit = f"plain-text end-to-end, same run: {plain:,.0f} msgs/s"
                    figure(f"end-to-end {args.plain} plain msgs", plain, "msgs/s")
                    hits = files.hits.value
                    cold = await rate(session, server, sink,
                                      [with_attachment(i, files, False) for i in range(n)])
                    figure(f"end-to-end {n} msgs + 200 KB http_url, cold", cold, "msgs/s",
                           limit)
                    figure("  file server hits (cold)", files.hits.value - hits, "fetches")
                    hits = files.hits.value
                    warm = await rate(session, server, sink, [
                        with_attachment(i, files, True) for i in range(n, 2 * n)])
                    figure(f"end-to-end {n} msgs + 200 KB http_url, warm", warm, "msgs/s",
                           limit)
                    figure("  file server hits (warm)", files.hits.value - hits, "fetches")
                    figure("warm / plain", 100 * warm / plain, "%", "target >= 50 %")
                    figure("cold / plain", 100 * cold / plain, "%")
                    figure("warm / raw SMTP of the same size", 100 * warm / raw_large, "%")
            finally:
                server.stop()
            await in_flight(files, sink, n)
    finally:
        files.stop()


async def in_flight(files: Files, sink: Any, n: int) -> None:
    """A fresh server: n messages with attachments queued while paused, then released."""
    server = await Server({"GMP_ATTACHMENT_ALLOW_PRIVATE": "127.0.0.0/8"}).start()
    try:
        async with aiohttp.ClientSession() as session:
            await setup_tenant(session, server.url, sink.port)
            await command(session, server.url, "suspend")
            await post(session, server.url,
                       [with_attachment(10_000_000 + i, files, False) for i in range(n)])
            base_rss, _ = server.rss_mb()
            base = sink.received
            await command(session, server.url, "activate")
            await wait_received(sink, base + n)
            _rss, peak = server.rss_mb()
            figure(f"RSS with {n} queued (before release)", base_rss, "MB")
            figure(f"peak RSS, {n} x 200 KB in flight", peak, "MB", "target <= 200 MB")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--plain", type=int, default=5000)
    asyncio.run(main(parser.parse_args()))
