"""Side-by-side A/B of two mail-proxy checkouts on one sink, alternating, on a shared host.

    python bench/ab.py --base /path/to/other/checkout [--rounds 2] [--messages 10000]
                       [--sink aiosmtpd|lean|lean-data] [--rtt-ms 0]

Each round measures the raw aiosmtplib limit, then each checkout in turn (the order flips
every round): drain of a backlog of --messages, then end to end (POST -> sink) of as many,
and the server's CPU seconds per delivered message over both. The checkout under test is the
one on PYTHONPATH for `-m mailproxy` (this one unless --new is given).
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

from common import Server, raw_smtp_rate, running_sink, setup_tenant
from run import command, post_batches, wait_received

HERE = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one(checkout: str, sink: object, messages: int) -> dict[str, float]:
    port = getattr(sink, "port")  # noqa: B009
    server = await Server({"PYTHONPATH": checkout}).start()
    assert server.proc is not None
    try:
        async with aiohttp.ClientSession() as session:
            await setup_tenant(session, server.url, port)
            await command(session, server.url, "suspend")
            await post_batches(session, server.url, 0, messages)
            cpu0 = cpu_seconds(server.proc.pid)
            base = getattr(sink, "received")  # noqa: B009
            await command(session, server.url, "activate")
            drain = messages / await wait_received(sink, base + messages)
            base = getattr(sink, "received")  # noqa: B009
            began = time.perf_counter()
            await post_batches(session, server.url, 10_000_000, messages, batch=500)
            await wait_received(sink, base + messages)
            e2e = messages / (time.perf_counter() - began)
            cpu = (cpu_seconds(server.proc.pid) - cpu0) / (2 * messages) * 1000
    finally:
        server.stop()
    return {"drain": drain, "e2e": e2e, "cpu_ms": cpu}


async def main(args: argparse.Namespace) -> None:
    checkouts = {"base": args.base, "new": args.new}  # PYTHONPATH values
    results: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    raws: list[float] = []
    delay = args.rtt_ms / 1000
    lean = args.sink != "aiosmtpd" or delay > 0
    with running_sink(lean=lean, delay=delay, chunking=args.sink != "lean-data") as sink:
        for r in range(args.rounds):
            raw = await raw_smtp_rate(sink.port)
            raws.append(raw)
            order = list(checkouts) if r % 2 == 0 else list(reversed(checkouts))
            for name in order:
                got = await one(checkouts[name], sink, args.messages)
                results[name].append(got)
                print(f"round {r + 1} {name:<4} raw {raw:7,.0f}  drain {got['drain']:7,.0f} "
                      f"({got['drain'] / raw:4.0%})  e2e {got['e2e']:7,.0f} "
                      f"({got['e2e'] / raw:4.0%})  cpu {got['cpu_ms']:.2f} ms/msg", flush=True)
    raw = statistics.median(raws)
    sink_name = "lean" if lean and args.sink == "aiosmtpd" else args.sink  # --rtt-ms: lean
    print(f"sink={sink_name} rtt={args.rtt_ms} ms messages={args.messages} rounds={args.rounds} "
          f"raw median {raw:,.0f} msgs/s (aiosmtplib, 8 connections)")
    for key in ("drain", "e2e", "cpu_ms"):
        medians = {name: statistics.median(v[key] for v in results[name]) for name in results}
        rel = "" if key == "cpu_ms" else (f"  base {medians['base'] / raw:.0%} of raw, "
                                           f"new {medians['new'] / raw:.0%} of raw")
        print(f"{key:<7} base {medians['base']:9,.2f}  new {medians['new']:9,.2f}  "
              f"new/base {medians['new'] / medians['base']:.2f}x{rel}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True,
                        help="PYTHONPATH of the checkout to compare against")
    parser.add_argument("--new", default=str(HERE), help="the checkout under test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sink", choices=("aiosmtpd", "lean", "lean-data"), default="aiosmtpd",
                        help="lean: a minimal relay that offers CHUNKING; lean-data: the same "
                             "without CHUNKING (the content after DATA's 354)")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="the lean sink holds each reply back this long (a relay's RTT)")
    asyncio.run(main(parser.parse_args()))
