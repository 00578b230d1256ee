"""Dashboard figures (issue 15): page and fragment render time with 100,000 messages queued,
on SQLite and PostgreSQL, and what 5 polling dashboards cost the end-to-end send rate.

Usage: python bench/dashboard.py [--queued 100000] [--loads 50] [--messages 10000]
       [--rounds 2] [--pg postgresql://postgres@127.0.0.1:5432/test] [--no-pg]

Render time is measured by a client on loopback from request to last byte, so it is an upper
bound of the server-side time. The polling figure alternates rounds without and with the 5
pollers (medians), each poller fetching the overview and queue fragments every 5 s with
If-None-Match, as the browser page does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TOKEN, Server, figure, pct, running_sink, setup_tenant
from run import command, post_batches, wait_received

LIMIT_MS = 200.0
PAGES = ("/ui/", "/ui/fragments/overview", "/ui/queue", "/ui/fragments/queue",
         "/ui/queue?q=status:error", "/ui/queue?q=to:rcpt%40example.org+bench+99",
         "/ui/queue?q=status:pending+priority:2", "/ui/rates", "/ui/bounces", "MESSAGE")


async def signed_in(url: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.get(url + "/ui/login") as resp:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert csrf is not None
    async with session.post(url + "/ui/login", data={"token": TOKEN, "csrf": csrf.group(1)},
                            allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
    return session


async def first_pk(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/ui/queue") as resp:
        found = re.search(r'data-pk="([^"]+)"', await resp.text())
    assert found is not None
    return found.group(1)


async def render_times(url: str, loads: int, label: str) -> None:
    session = await signed_in(url)
    try:
        pk = await first_pk(session, url)
        for path in PAGES:
            target = f"/ui/messages/{pk}" if path == "MESSAGE" else path
            samples = []
            for _ in range(loads):
                began = time.perf_counter()
                async with session.get(url + target) as resp:
                    assert resp.status == 200, (target, resp.status)
                    await resp.read()
                samples.append((time.perf_counter() - began) * 1000)
            p95 = pct(samples, 0.95)
            name = "message page" if path == "MESSAGE" else path
            figure(f"{label} p95 {name}", p95, "ms",
                   f"limit {LIMIT_MS:.0f} ms; ratio {p95 / LIMIT_MS:.2f}")
    finally:
        await session.close()


async def fill(url: str, sink_port: int, queued: int) -> None:
    async with aiohttp.ClientSession() as session:
        await setup_tenant(session, url, sink_port)
        await command(session, url, "suspend")
        began = time.perf_counter()
        await post_batches(session, url, 0, queued)
        # some final rows too: intake errors (unknown account) land as `error`
        body = {"messages": [{"id": f"bad{i}", "tenant_id": "bench", "account_id": "nope",
                              "from": "a@acme.test", "to": ["r@example.org"], "subject": "x",
                              "body": "x"} for i in range(500)]}
        async with session.post(url + "/commands/add-messages", json=body,
                                headers={"X-API-Token": TOKEN}) as resp:
            await resp.read()
        print(f"  queued {queued} messages in {time.perf_counter() - began:.1f} s", flush=True)


async def renders(args: argparse.Namespace, sink_port: int, label: str,
                  env: dict[str, str] | None = None) -> None:
    server = await Server(env).start()
    try:
        await fill(server.url, sink_port, args.queued)
        await render_times(server.url, args.loads, label)
    finally:
        server.stop()


async def poller(url: str, stop: asyncio.Event) -> None:
    session = await signed_in(url)
    etags: dict[str, str] = {}
    try:
        while not stop.is_set():
            for path in ("/ui/fragments/overview", "/ui/fragments/queue"):
                headers = {"If-None-Match": etags[path]} if path in etags else {}
                async with session.get(url + path, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        etags[path] = resp.headers["ETag"]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)
    finally:
        await session.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (less disturbed by a busy host than a rate)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def send_rate(url: str, sink: object, start: int, count: int, pollers: int,
                    pid: int) -> tuple[float, float]:
    """(messages per second, server CPU milliseconds per message) of one round."""
    stop = asyncio.Event()
    await asyncio.sleep(2)  # the previous round's tail (outcomes, reports) settles first
    tasks = [asyncio.create_task(poller(url, stop)) for _ in range(pollers)]
    await asyncio.sleep(0.5)
    base = sink.received  # type: ignore[attr-defined]
    cpu = cpu_seconds(pid)
    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        await post_batches(session, url, start, count, batch=500)
        await wait_received(sink, base + count)
        rate = count / (time.perf_counter() - began)
    cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / count
    stop.set()
    await asyncio.gather(*tasks)
    print(f"  round: {pollers} pollers, {rate:,.0f} msgs/s, {cpu_ms:.3f} ms CPU/msg", flush=True)
    return rate, cpu_ms


async def polling_cost(args: argparse.Namespace, sink: object, sink_port: int) -> None:
    server = await Server().start()
    try:
        async with aiohttp.ClientSession() as session:
            await setup_tenant(session, server.url, sink_port)
        quiet: list[tuple[float, float]] = []
        polled: list[tuple[float, float]] = []
        assert server.proc is not None
        start = 1_000_000
        for round_ in range(args.rounds):
            order = ((0, quiet), (5, polled)) if round_ % 2 == 0 else ((5, polled), (0, quiet))
            for pollers, into in order:
                into.append(await send_rate(server.url, sink, start, args.messages, pollers,
                                            server.proc.pid))
                start += args.messages
        base = statistics.median(r for r, _ in quiet)
        with_ui = statistics.median(r for r, _ in polled)
        figure("e2e send rate, no dashboard (median)", base, "msgs/s")
        figure("e2e send rate, 5 dashboards polling", with_ui, "msgs/s",
               f"ratio {with_ui / base:.3f}; limit >= 0.95")
        cpu_base = statistics.median(c for _, c in quiet)
        cpu_ui = statistics.median(c for _, c in polled)
        figure("server CPU per message, no dashboard", cpu_base, "ms")
        figure("server CPU per message, 5 dashboards", cpu_ui, "ms",
               f"ratio {cpu_ui / cpu_base:.3f}")
    finally:
        server.stop()


async def drop_schema(db: str, schema: str) -> None:
    import asyncpg

    con = await asyncpg.connect(db)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await con.close()


async def main(args: argparse.Namespace) -> None:
    print("host: shared (other engineers' tests may run at the same time)", flush=True)
    with running_sink() as sink:
        if not (args.only_pg or args.only_polling):
            await renders(args, sink.port, "sqlite")
        if not (args.no_pg or args.only_polling):
            schema = "bench_dash_" + uuid.uuid4().hex[:8]
            try:
                key = base64.b64encode(os.urandom(32)).decode()
                await renders(args, sink.port, "postgres",
                              {"GMP_DB_PATH": f"{args.pg}?schema={schema}",
                               "GMP_ENCRYPTION_KEY": key})
            finally:
                await drop_schema(args.pg, schema)
        if not args.only_pg:
            await polling_cost(args, sink, sink.port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--only-pg", action="store_true", help="PostgreSQL render times only")
    parser.add_argument("--only-polling", action="store_true", help="the polling cost only")
    asyncio.run(main(parser.parse_args()))
