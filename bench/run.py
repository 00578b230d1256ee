"""`make bench`: ingest, end-to-end, enqueue latency and memory, beside the raw SMTP limit.

Usage: python bench/run.py [--messages 20000] [--queued 100000] [--scale | --scale-only]
                           [--ingest-only]
  --scale also measures ingest and drain cost per message at 10,000 vs 200,000 queued
          (two servers side by side, ingest chunks alternating between them, medians).
  --ingest-only: batched ingest alone, after a warm-up, beside raw sqlite3, with the
          server's CPU per message in each of its busy threads (besides the event loop,
          the SQLite writer: the reader is idle while delivery is paused).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Server,
    bare_json_latency,
    figure,
    headers,
    pct,
    raw_smtp_rate,
    raw_sqlite_insert_rate,
    rest_message,
    running_sink,
    setup_tenant,
    single_latency,
)


async def post_batches(session: aiohttp.ClientSession, url: str, start: int, count: int,
                       batch: int = 1000, parallel: int = 2) -> float:
    """Post `count` messages in batches; return the elapsed seconds."""
    queue = list(range(start, start + count, batch))

    async def worker() -> None:
        while queue:
            first = queue.pop(0)
            body = {"messages": [rest_message(i) for i in range(first, min(first + batch,
                                                                         start + count))]}
            async with session.post(url + "/commands/add-messages", json=body,
                                    headers=headers()) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return time.perf_counter() - began


async def command(session: aiohttp.ClientSession, url: str, name: str) -> None:
    async with session.post(f"{url}/commands/{name}", params={"tenant_id": "bench"},
                            headers=headers()) as resp:
        assert resp.status == 200


async def wait_received(sink_count: object, target: int, timeout: float = 600) -> float:
    began = time.perf_counter()
    while getattr(sink_count, "received") < target:  # noqa: B009
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"sink received {sink_count.received} of {target}")
        await asyncio.sleep(0.01)
    return time.perf_counter() - began


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process (Linux /proc), by thread id."""
    out = {}
    for tid in Path(f"/proc/{pid}/task").iterdir():
        fields = (tid / "stat").read_text().rsplit(")", 1)[1].split()
        out[tid.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


async def ingest_only(sink: object, count: int) -> None:
    server = await Server().start()
    assert server.proc is not None
    try:
        async with aiohttp.ClientSession() as session:
            await setup_tenant(session, server.url, getattr(sink, "port"))  # noqa: B009
            await command(session, server.url, "suspend")
            await post_batches(session, server.url, 90_000_000, 2000)  # warm-up
            before = thread_cpu(server.proc.pid)
            client_before = time.process_time()
            elapsed = await post_batches(session, server.url, 0, count)
            client_cpu = time.process_time() - client_before
            after = thread_cpu(server.proc.pid)
    finally:
        server.stop()
    ingest = count / elapsed
    sqlite_raw = raw_sqlite_insert_rate(count)
    figure("batched ingest (1000/batch, paused, warm)", ingest, "msgs/s")
    figure("raw sqlite3 insert, same rows (1000/txn)", sqlite_raw, "rows/s")
    figure("batched ingest / raw sqlite3 insert", 100 * ingest / sqlite_raw, "%")
    main_thread = str(server.proc.pid)
    spent = sorted(((after[t] - before.get(t, 0.0), t) for t in after), reverse=True)
    for seconds, tid in spent:
        if seconds > 0.01:
            name = "event loop" if tid == main_thread else f"thread {tid}"
            figure(f"server CPU, {name}", 1e6 * seconds / count, "us/msg")
    figure("bench client CPU (builds and encodes bodies)", 1e6 * client_cpu / count, "us/msg")


async def main(args: argparse.Namespace) -> None:
    if args.ingest_only:
        with running_sink() as sink:
            await ingest_only(sink, args.ingest)
        return
    if args.scale_only:
        with running_sink() as sink:
            await scale(sink, args.large)
        return
    with running_sink() as sink:
        raw = await raw_smtp_rate(sink.port)
        limit = f"raw aiosmtplib->sink, 8 connections: {raw:,.0f} msgs/s"
        figure("raw SMTP 8 connections", raw, "msgs/s")
        server = await Server().start()
        print("settings:", " ".join(f"{k}={v}" for k, v in sorted(server.settings().items())))
        try:
            async with aiohttp.ClientSession() as session:
                await setup_tenant(session, server.url, sink.port)
                await command(session, server.url, "suspend")
                elapsed = await post_batches(session, server.url, 0, args.ingest)
                ingest = args.ingest / elapsed
                sqlite_raw = raw_sqlite_insert_rate(args.ingest)
                figure("batched ingest (1000/batch, paused)", ingest, "msgs/s")
                figure("raw sqlite3 insert, same rows (1000/txn)", sqlite_raw, "rows/s")
                figure("batched ingest / raw sqlite3 insert", 100 * ingest / sqlite_raw, "%")
                samples = await single_latency(session, [server.url], "lat", 4000)
                bare = await bare_json_latency(session)
                figure("enqueue p50 (concurrency 16)", pct(samples, 0.50), "ms")
                figure("enqueue p99 (concurrency 16)", pct(samples, 0.99), "ms")
                figure("bare aiohttp JSON endpoint p99 (conc. 16)", pct(bare, 0.99), "ms")
                figure("enqueue p99 / bare aiohttp p99", pct(samples, 0.99) / pct(bare, 0.99),
                       "x")
                figure("enqueue throughput (single, conc. 16)",
                       len(samples) / (sum(samples) / 1000 / 16), "req/s")
                # drain what ingest and latency queued, then measure end to end
                base = sink.received
                queued = args.ingest + len(samples)
                await command(session, server.url, "activate")
                drain = await wait_received(sink, base + queued)
                figure("drain of a queued backlog", queued / drain, "msgs/s", limit)
                base = sink.received
                began = time.perf_counter()
                await post_batches(session, server.url, 10_000_000, args.messages, batch=500)
                await wait_received(sink, base + args.messages)
                e2e = args.messages / (time.perf_counter() - began)
                figure(f"end-to-end {args.messages} msgs (POST->sink)", e2e, "msgs/s", limit)
                figure("end-to-end / raw SMTP", 100 * e2e / raw, "%")
                await command(session, server.url, "suspend")
                await post_batches(session, server.url, 20_000_000, args.queued)
                rss, peak = server.rss_mb()
                figure(f"RSS with {args.queued} queued, just after the last batch", rss, "MB")
                await asyncio.sleep(2)  # past the quiet second that trims the heap
                figure(f"RSS with {args.queued} queued, 2 s later", server.rss_mb()[0], "MB")
                figure("peak RSS over the whole run", peak, "MB")
        finally:
            server.stop()
        if args.scale:
            await scale(sink, args.large)


async def settled(sink: object, quiet: float = 0.5) -> None:
    """Wait until the sink has received nothing new for `quiet` seconds."""
    last = -1
    while last != getattr(sink, "received"):  # noqa: B009
        last = getattr(sink, "received")  # noqa: B009
        await asyncio.sleep(quiet)


async def scale(sink: object, large: int = 200_000, rounds: int = 4, chunk: int = 5000
                ) -> None:
    """Ingest and drain cost per message with 10k vs `large` (200k) messages already queued,
    and each server's RSS with its backlog.

    Two servers run side by side, one per backlog, and the ingest chunks alternate between
    them `rounds` times (medians): a host that slows down for a while slows both alike.
    The chunks add to the backlogs (10k grows to 30k, 200k to 220k with the defaults).
    """
    port = getattr(sink, "port")  # noqa: B009
    servers = {10_000: Server(), large: Server()}
    ingest: dict[int, list[float]] = {backlog: [] for backlog in servers}
    drain: dict[int, float] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for backlog, server in servers.items():
                await server.start()
                await setup_tenant(session, server.url, port)
                await command(session, server.url, "suspend")
                await post_batches(session, server.url, 0, backlog)
                rss, _peak = server.rss_mb()
                figure(f"RSS with {backlog} queued (scale servers)", rss, "MB")
            await asyncio.sleep(2)  # past the quiet second that trims the heap
            for backlog, server in servers.items():
                figure(f"RSS with {backlog} queued (scale servers), settled",
                       server.rss_mb()[0], "MB")
            for r in range(rounds):
                for backlog, server in servers.items():
                    first = 50_000_000 + r * chunk
                    elapsed = await post_batches(session, server.url, first, chunk)
                    ingest[backlog].append(elapsed / chunk * 1e6)
            for backlog, server in servers.items():
                # release everything; time the first `chunk` claimed and sent from the backlog
                base = getattr(sink, "received")  # noqa: B009
                await command(session, server.url, "activate")
                drain[backlog] = (await wait_received(sink, base + chunk)) / chunk * 1e6
                await command(session, server.url, "suspend")
                await settled(sink)  # sends in flight land before the next server's count
    finally:
        for server in servers.values():
            server.stop()
    costs = {backlog: statistics.median(values) for backlog, values in ingest.items()}
    for backlog in servers:
        every = ", ".join(f"{v:.0f}" for v in ingest[backlog])
        figure(f"ingest cost at {backlog} queued", costs[backlog], "us/msg", f"all: {every}")
        figure(f"claim+send cost at {backlog} queued", drain[backlog], "us/msg")
    figure(f"ingest cost ratio {large}/10000", costs[large] / costs[10_000], "x")
    figure(f"claim+send cost ratio {large}/10000", drain[large] / drain[10_000], "x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--ingest", type=int, default=20_000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--scale-only", action="store_true", help="only the --scale figures")
    parser.add_argument("--ingest-only", action="store_true",
                        help="only batched ingest, warm, with server CPU per thread")
    parser.add_argument("--large", type=int, default=200_000,
                        help="the large backlog of --scale (10k is the small one)")
    asyncio.run(main(parser.parse_args()))
