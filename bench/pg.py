"""PostgreSQL mode of the bench: end-to-end msgs/s of one and of three `mail-proxy serve`
instances on one database, on this machine, beside the raw SMTP limit of the same run.

Processes: the instances, one discarding sink (an aiosmtpd process that also counts distinct
X-Mail-Proxy-ID values, so duplicates are seen), the PostgreSQL server and this client.
The aiosmtpd sink takes more CPU per message than mail-proxy itself, from the same two cores;
--sink lean replaces it with a minimal responder (bench/common.py), closer to what a relay on
another machine costs this one, to see how the instances scale when they get the CPU.
For each instance count, on a fresh schema:

  e2e    POST N messages (batches of 500, two client lanes per instance, round-robin over the
         instances) -> the sink has N distinct ids
  ingest N messages posted while the tenant is suspended (intake alone)
  drain  then the tenant is activated -> N distinct ids at the sink (dispatch alone, without
         ingest competing for the CPU)
  single suspended again, N/4 messages posted one per request, 16 requests at a time
         (req/s, p50 and p99 latency)

Also printed: duplicates (deliveries - distinct ids), CPU seconds of the instances and of the
PostgreSQL server processes per 1000 messages, PostgreSQL transactions per 1000 messages
(from pg_stat_database, read after a pause for the statistics to be flushed: approximate),
how busy the machine was and how much of it the host took (steal: this is a virtual machine
whose neighbours make every figure vary from run to run).

    python bench/pg.py [--messages 10000] [--instances 1 3] [--accounts 1] [--rounds 1]
                       [--sink aiosmtpd|lean] [--db postgresql://postgres@127.0.0.1:5432/test]

The machine may be shared with other work: --rounds N alternates the configurations N times
and prints the median of each, so that a disturbance does not decide the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    TOKEN,
    Server,
    Sink,
    figure,
    headers,
    pct,
    raw_smtp_rate,
    rest_message,
    running_sink,
    single_latency,
)

DEFAULT_DB = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 500
TICK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting from /proc --------------------------------------------------------------

def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _postgres_cpu() -> float:
    """CPU seconds of every process named postgres (server, backends, background workers);
    backends that exited meanwhile are missing, so only differences over a phase count."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        total += _cpu_of(int(entry.name))
    return total


def _machine() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of the whole machine (steal: taken by the host)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(values[7]), float(sum(values))


Mark = tuple[float, float, float, float, tuple[float, float, float]]


@dataclass
class Usage:
    """CPU seconds spent during a phase, and the share of the machine that was busy."""

    servers: float
    postgres: float
    sink: float
    client: float
    seconds: float
    busy: float  # fraction of all cores
    steal: float  # fraction of all cores taken by the host (a virtual machine's neighbours)

    @staticmethod
    def mark(servers: Sequence[Server], sink: Sink) -> Mark:
        assert sink.proc is not None and sink.proc.pid is not None
        return (sum(_cpu_of(s.proc.pid) for s in servers if s.proc), _postgres_cpu(),
                _cpu_of(sink.proc.pid), time.process_time(), _machine())

    @staticmethod
    def since(mark: Mark, servers: Sequence[Server], sink: Sink, seconds: float) -> Usage:
        now = Usage.mark(servers, sink)
        (busy0, steal0, total0), (busy1, steal1, total1) = mark[4], now[4]
        total = max(1.0, total1 - total0)
        return Usage(servers=now[0] - mark[0], postgres=now[1] - mark[1], sink=now[2] - mark[2],
                     client=now[3] - mark[3], seconds=seconds,
                     busy=(busy1 - busy0) / total, steal=(steal1 - steal0) / total)


# -- one configuration ----------------------------------------------------------------------

async def _admin(session: aiohttp.ClientSession, method: str, url: str, body: object = None,
                 params: dict[str, str] | None = None) -> None:
    async with session.request(method, url, json=body, params=params,
                               headers=headers()) as resp:
        assert resp.status == 200, await resp.text()


async def _post_all(session: aiohttp.ClientSession, servers: Sequence[Server], prefix: str,
                    count: int, accounts: int) -> None:
    """Post count messages in batches of BATCH, two lanes per instance, round-robin."""
    starts = list(range(0, count, BATCH))
    lanes = [servers[i % len(servers)] for i in range(2 * len(servers))]

    async def lane(server: Server) -> None:
        while starts:
            first = starts.pop(0)
            items = []
            for n in range(first, min(first + BATCH, count)):
                item = rest_message(f"{prefix}-{n}")
                item["account_id"] = f"a{n % accounts}"
                items.append(item)
            async with session.post(server.url + "/commands/add-messages",
                                    json={"messages": items}, headers=headers()) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()

    await asyncio.gather(*(lane(server) for server in lanes))


async def _until_distinct(sink: Sink, target: int, timeout: float = 900) -> None:
    began = time.perf_counter()
    while sink.distinct < target:
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"sink has {sink.distinct} of {target} distinct ids")
        await asyncio.sleep(0.01)


async def _drop_schema(db: str, schema: str) -> None:
    con = await asyncpg.connect(db)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await con.close()


async def run_instances(args: argparse.Namespace, sink: Sink, count: int, limit: str
                        ) -> dict[str, float]:
    """Both phases on `count` fresh instances; msgs/s per phase."""
    rates: dict[str, float] = {}
    schema = "bench_" + uuid.uuid4().hex[:12]
    env = {"GMP_DB_PATH": f"{args.db}?schema={schema}",
           "GMP_ENCRYPTION_KEY": args.key, "GMP_DB_POOL_SIZE": str(args.pool)}
    servers = [Server(env) for _ in range(count)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        if count == args.instances[0]:
            shown = servers[0].settings()
            shown.pop("GMP_ENCRYPTION_KEY", None)
            print("settings:", " ".join(f"{k}={v}" for k, v in sorted(shown.items())))
        url = servers[0].url
        async with aiohttp.ClientSession() as session:
            await _admin(session, "POST", url + "/tenant", {"id": "bench"})
            for a in range(args.accounts):
                await _admin(session, "POST", url + "/account", {
                    "id": f"a{a}", "tenant_id": "bench", "host": "127.0.0.1",
                    "port": sink.port, "use_tls": False, "batch_size": args.batch_size})
            label = f"{count} instance{'s' if count > 1 else ''}"

            # end to end: POST -> sink, ingest and dispatch competing
            received, distinct = sink.received, sink.distinct
            xacts = await _xacts(args.db)
            mark = Usage.mark(servers, sink)
            began = time.perf_counter()
            await _post_all(session, servers, f"e2e{count}", args.messages, args.accounts)
            await _until_distinct(sink, distinct + args.messages)
            elapsed = time.perf_counter() - began
            use = Usage.since(mark, servers, sink, elapsed)
            await asyncio.sleep(1)  # late duplicates (none expected) still count
            dupes = (sink.received - received) - (sink.distinct - distinct)
            rates["e2e"] = args.messages / elapsed
            figure(f"e2e {label}, {args.messages} msgs", rates["e2e"], "msgs/s", limit)
            _usage(label, use, args.messages, dupes)
            await _print_xacts(args.db, xacts, args.messages)

            # drain of a backlog: dispatch alone
            params = {"tenant_id": "bench"}
            await _admin(session, "POST", url + "/commands/suspend", params=params)
            mark = Usage.mark(servers, sink)
            began = time.perf_counter()
            await _post_all(session, servers, f"drain{count}", args.messages, args.accounts)
            elapsed = time.perf_counter() - began
            use = Usage.since(mark, servers, sink, elapsed)
            rates["ingest"] = args.messages / elapsed
            figure(f"ingest {label}, {args.messages} msgs", rates["ingest"], "msgs/s")
            _usage(label + " ingest", use, args.messages, None)
            received, distinct = sink.received, sink.distinct
            xacts = await _xacts(args.db)
            mark = Usage.mark(servers, sink)
            began = time.perf_counter()
            await _admin(session, "POST", url + "/commands/activate", params=params)
            await _until_distinct(sink, distinct + args.messages)
            elapsed = time.perf_counter() - began
            use = Usage.since(mark, servers, sink, elapsed)
            await asyncio.sleep(1)
            dupes = (sink.received - received) - (sink.distinct - distinct)
            rates["drain"] = args.messages / elapsed
            figure(f"drain {label}, {args.messages} queued", rates["drain"], "msgs/s", limit)
            _usage(label + " drain", use, args.messages, dupes)
            await _print_xacts(args.db, xacts, args.messages)

            # single-message enqueue, delivery suspended again (these are never sent)
            await _admin(session, "POST", url + "/commands/suspend", params=params)
            singles = args.messages // 4
            mark = Usage.mark(servers, sink)
            began = time.perf_counter()
            samples = await single_latency(session, [s.url for s in servers], f"one{count}",
                                           singles, account_id="a0")
            elapsed = time.perf_counter() - began
            use = Usage.since(mark, servers, sink, elapsed)
            rates["single"] = singles / elapsed
            figure(f"single-message enqueue {label}, c16", rates["single"], "req/s",
                   f"p50 {pct(samples, 0.5):.1f} ms, p99 {pct(samples, 0.99):.1f} ms")
            _usage(label + " single", use, singles, None)
    finally:
        for server in servers:
            server.stop()
        await _drop_schema(args.db, schema)
    return rates


async def _xacts(db: str) -> int:
    con = await asyncpg.connect(db)
    try:
        await asyncio.sleep(1.2)
        return int(await con.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"))
    finally:
        await con.close()


async def _print_xacts(db: str, before: int, messages: int) -> None:
    done = await _xacts(db) - before  # a statement outside a transaction counts as one
    print(f"    PostgreSQL transactions per 1000 msgs: {done * 1000 / messages:.0f}")


def _usage(label: str, use: Usage, messages: int, dupes: int | None) -> None:
    per = 1000 / messages
    cores = "  ".join(f"{name} {cpu / use.seconds:.2f}" for name, cpu in (
        ("instances", use.servers), ("postgres", use.postgres), ("sink", use.sink),
        ("client", use.client)))
    seen = "" if dupes is None else f"duplicates {dupes}; "
    print(f"    {label}: {seen}CPU s per 1000 msgs: instances "
          f"{use.servers * per:.2f}, postgres {use.postgres * per:.2f}; cores used: {cores}; "
          f"machine busy {100 * use.busy:.0f} % (host steal {100 * use.steal:.0f} %)",
          flush=True)


async def main(args: argparse.Namespace) -> None:
    print(f"bench/pg.py: messages={args.messages} instances={args.instances} "
          f"accounts={args.accounts} batch_size={args.batch_size} post_batch={BATCH} "
          f"lanes=2/instance db_pool={args.pool} db={args.db.split('@')[-1]} sink={args.sink} "
          f"cores={os.cpu_count()} (admin token {TOKEN!r})")
    with running_sink(count_ids=True, lean=args.sink == "lean") as sink:
        raw = await raw_smtp_rate(sink.port)
        figure("raw SMTP 8 connections", raw, "msgs/s")
        limit = f"raw: {raw:,.0f} msgs/s"
        results: dict[tuple[int, str], list[float]] = {}
        for round_ in range(args.rounds):  # alternate the configurations: drift hits all
            if args.rounds > 1:
                print(f"-- round {round_ + 1} of {args.rounds}", flush=True)
            for count in args.instances:
                for phase, rate in (await run_instances(args, sink, count, limit)).items():
                    results.setdefault((count, phase), []).append(rate)
        if args.rounds > 1:
            print(f"-- median of {args.rounds} rounds")
            for (count, phase), rates in sorted(results.items(), key=lambda kv: kv[0][::-1]):
                figure(f"{phase} {count} instance{'s' if count > 1 else ''} (median)",
                       statistics.median(rates), "msgs/s",
                       "all: " + ", ".join(f"{r:,.0f}" for r in rates))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=200, help="account batch_size")
    parser.add_argument("--pool", type=int, default=10, help="GMP_DB_POOL_SIZE")
    parser.add_argument("--db", default=DEFAULT_DB)
    parser.add_argument("--sink", choices=("aiosmtpd", "lean"), default="aiosmtpd",
                        help="the discarding relay: aiosmtpd (performance.md's measure), or "
                             "a minimal SMTP responder that takes little of the machine")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every configuration, alternating, and print medians")
    parsed = parser.parse_args()
    parsed.key = base64.b64encode(os.urandom(32)).decode("ascii")
    asyncio.run(main(parsed))
