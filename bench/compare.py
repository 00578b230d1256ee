"""`make compare`: mail-proxy beside a raw aiosmtplib loop and Postfix, on one machine.

    python bench/compare.py [--messages 5000] [--connections 8] [--out docs]

Every path gets the same 2 KB messages from the same client (aiosmtplib, 8 connections,
or REST batches for mail-proxy's REST path) and delivers to the same discarding aiosmtpd
sink (bench/common.py, which advertises PIPELINING like a real relay):

  raw aiosmtplib -> sink         the ceiling: no queue, nothing durable
  mail-proxy SMTP -> sink        `mail-proxy serve` on SQLite FULL, each 250 after commit
  mail-proxy REST -> sink        1000-message batches, each 200 after commit
  Postfix -> sink                a private Postfix (tests/postfix.py): loopback relay with its
                                 default durable queue (one fsync per message)

For each: msgs/s accepted (until the last 250/200), p99 of one submission (ms), and msgs/s
end to end (until the sink has every message). The raw loop runs first and last, and the
figures are given as ratios to the mean of both. Writes <out>/benchmarks.md and
<out>/benchmarks.png (matplotlib, from the `bench` extra). Postfix is installed with apt
when missing (needs root).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Server, Sink, headers, pct, raw_message, running_sink
from run import command, post_batches, wait_received

from tests import postfix

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    path: str
    accepted: float  # msgs/s until the last acknowledgement
    p99_ms: float | None
    e2e: float  # msgs/s until the sink had every message
    note: str = ""
    raw: float = 0.0  # mean e2e of the raw runs just before and just after this path


async def smtp_blast(port: int, batch: list[bytes], connections: int,
                     login: tuple[str, str] | None = None) -> tuple[float, list[float]]:
    """Send the messages over `connections` connections: (seconds, ms per message)."""
    samples: list[float] = []
    messages = iter(batch)

    async def lane() -> None:
        smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False, timeout=120)
        await smtp.connect()
        if login is not None:
            await smtp.login(*login)
        for data in messages:
            began = time.perf_counter()
            await smtp.sendmail("bench@acme.test", ["rcpt@example.org"], data)
            samples.append((time.perf_counter() - began) * 1000)
        await smtp.quit()

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(connections)))
    return time.perf_counter() - began, samples


async def measure_smtp(name: str, port: int, sink: Sink, args: argparse.Namespace,
                       first: int, login: tuple[str, str] | None = None) -> Row:
    batch = [raw_message(i) for i in range(first, first + args.messages)]  # before timing
    base = sink.received
    began = time.perf_counter()
    seconds, samples = await smtp_blast(port, batch, args.connections, login)
    await wait_received(sink, base + args.messages)
    e2e = time.perf_counter() - began
    return Row(name, args.messages / seconds, pct(samples, 0.99), args.messages / e2e)


async def tenant(session: aiohttp.ClientSession, url: str, sink_port: int) -> str:
    """A tenant and an account relaying to the sink; the tenant's API key (SMTP login)."""
    async with session.post(url + "/tenant", json={"id": "bench"}, headers=headers()) as r:
        assert r.status == 200, await r.text()
        key = str((await r.json())["api_key"])
    account = {"id": "main", "tenant_id": "bench", "host": HOST, "port": sink_port,
               "use_tls": False, "batch_size": 200}
    async with session.post(url + "/account", json=account, headers=headers()) as r:
        assert r.status == 200, await r.text()
    return key


async def mailproxy_smtp_row(sink: Sink, args: argparse.Namespace) -> Row:
    server = await Server(smtp=True).start()
    try:
        async with aiohttp.ClientSession() as session:
            key = await tenant(session, server.url, sink.port)
            return await measure_smtp("mail-proxy SMTP -> sink", server.smtp_port, sink, args,
                                      1_000_000, ("bench/main", key))
    finally:
        server.stop()


async def mailproxy_rest_row(sink: Sink, args: argparse.Namespace) -> Row:
    server = await Server().start()
    try:
        async with aiohttp.ClientSession() as session:
            await tenant(session, server.url, sink.port)
            base = sink.received
            began = time.perf_counter()
            seconds = await post_batches(session, server.url, 2_000_000, args.messages)
            await wait_received(sink, base + args.messages)
            e2e = time.perf_counter() - began
            await command(session, server.url, "suspend")
            return Row("mail-proxy REST -> sink", args.messages / seconds, None,
                       args.messages / e2e, "1000-message batches (2 in parallel) of the same "
                       "text, composed by mail-proxy; no per-message p99")
    finally:
        server.stop()


def ensure_postfix() -> None:
    if postfix.available():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"],
                   check=True, env=env)


async def postfix_row(sink: Sink, args: argparse.Namespace) -> Row:
    ensure_postfix()
    started = postfix.PrivatePostfix(sink.port).start()
    try:
        return await measure_smtp("Postfix -> sink", started.port, sink, args, 3_000_000)
    finally:
        started.stop()


async def raw_row(sink: Sink, args: argparse.Namespace, first: int) -> Row:
    return await measure_smtp("raw aiosmtplib -> sink", sink.port, sink, args, first)


# -- the report ---------------------------------------------------------------------------

def machine(load: list[float]) -> list[str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    done = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                          text=True, check=False)
    version = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem:.0f} GiB; "
        f"{platform.system()} {platform.release()} {platform.machine()}",
        f"- Python {platform.python_version()}; aiosmtplib {aiosmtplib.__version__}; "
        f"Postfix {done.stdout.strip() or 'unknown'}; mail-proxy commit {version or 'unknown'}",
        f"- run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; 1-minute load "
        f"average {min(load):.1f} to {max(load):.1f} during the run (sampled before each "
        f"path; {os.cpu_count()} cores)",
    ]


def write_report(rows: list[Row], args: argparse.Namespace, out: Path, load: list[float]
                 ) -> None:
    out.mkdir(parents=True, exist_ok=True)
    chart = out / "benchmarks.png"
    draw(rows, chart)
    lines = [
        "# Benchmarks: mail-proxy beside a raw aiosmtplib loop and Postfix",
        "",
        "Written by `make compare` (bench/compare.py); re-run it to refresh this page. Every "
        f"path got the same {args.messages} messages of about 2 KB from one client "
        f"({args.connections} aiosmtplib connections, or REST batches) and delivered them to "
        "the same discarding aiosmtpd sink on loopback, one path after another on one "
        "machine. mail-proxy ran with SQLite at synchronous=FULL (its default) and Postfix "
        "with its default durable queue: both acknowledge only what is on disk. The raw "
        "loop has no queue at all and is the ceiling; it ran before and after every other "
        "path, and each path's ratio is to the mean of the raw runs on either side of it, "
        "so that a host that slows down for a while slows both alike.",
        "",
        "| path | accepted msgs/s | p99 per submission | end to end msgs/s | raw beside it "
        "| e2e / raw |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        p99 = f"{row.p99_ms:.1f} ms" if row.p99_ms is not None else "n/a"
        lines.append(f"| {row.path} | {row.accepted:,.0f} | {p99} | {row.e2e:,.0f} | "
                     f"{row.raw:,.0f} | {row.e2e / row.raw:.0%} |")
    notes = [f"- {row.path}: {row.note}" for row in rows if row.note]
    lines += ["", *notes, "", f"![msgs/s and p99 per path]({chart.name})", "",
              "## Machine", "", *machine(load),
              *([f"- {args.host_note}"] if args.host_note else []),
              "", "Settings of mail-proxy: " + ", ".join(
                  f"`{k}={v}`" for k, v in sorted(Server().settings().items())
                  if k not in ("GMP_DATA_DIR", "GMP_PORT", "GMP_SMTP_PORT")), ""]
    (out / "benchmarks.md").write_text("\n".join(lines))


def draw(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.path.replace(" -> sink", "") for row in rows]
    fig, (rate, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = range(len(rows))
    rate.bar([i - 0.2 for i in x], [r.accepted for r in rows], 0.4, label="accepted")
    rate.bar([i + 0.2 for i in x], [r.e2e for r in rows], 0.4, label="end to end")
    rate.set_xticks(list(x), names, rotation=15, fontsize=8)
    rate.set_yscale("log")
    rate.set_ylabel("msgs/s (log scale)")
    rate.set_title("throughput (higher is better)")
    rate.legend()
    timed = [(n, r.p99_ms) for n, r in zip(names, rows, strict=True) if r.p99_ms is not None]
    lat.bar([n for n, _ in timed], [v for _, v in timed], 0.5, color="tab:red")
    lat.set_ylabel("ms")
    lat.set_title("p99 per SMTP submission (lower is better)")
    lat.tick_params(axis="x", labelrotation=15, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def main(args: argparse.Namespace) -> None:
    rows: list[Row] = []
    load = [os.getloadavg()[0]]
    with running_sink() as sink:
        raws = [await raw_row(sink, args, 0)]
        print(raws[-1], flush=True)
        for step in (mailproxy_smtp_row, mailproxy_rest_row, postfix_row):
            load.append(os.getloadavg()[0])
            row = await step(sink, args)
            raws.append(await raw_row(sink, args, 10_000_000 * len(raws)))
            row.raw = statistics.mean([raws[-2].e2e, raws[-1].e2e])
            print(row, raws[-1], sep="\n", flush=True)
            rows.append(row)
    e2e = [r.e2e for r in raws]
    raw = Row(raws[0].path, statistics.mean(r.accepted for r in raws),
              max(r.p99_ms or 0 for r in raws), statistics.mean(e2e),
              f"{len(raws)} runs, end to end {min(e2e):,.0f} to {max(e2e):,.0f} msgs/s; "
              "rates are their mean, p99 the worst", statistics.mean(e2e))
    load.append(os.getloadavg()[0])
    write_report([raw, *rows], args, Path(args.out), load)
    print(f"wrote {Path(args.out) / 'benchmarks.md'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--host-note", default="",
                        help="a line about the host, e.g. that it was shared during the run")
    asyncio.run(main(parser.parse_args()))
