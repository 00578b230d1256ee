"""The delivery layer alone: SmtpPool, 8 concurrent senders, into the lean sink.

    python bench/delivery.py [--base /other/checkout] [--rtt-ms 0] [--messages 6000]
                             [--rounds 2] [--sink lean|aiosmtpd]

Prints msgs/s and the client's CPU microseconds per message. --rtt-ms makes the sink hold
each batch of replies back that long, as a relay on another machine would; with --base the
other checkout's SmtpPool runs in alternation with this one's, on the same sink.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


async def measure(port: int, messages: int, connections: int) -> tuple[float, float]:
    from common import raw_message

    from mailproxy.delivery import SmtpPool
    from mailproxy.model import Account

    pool = SmtpPool(pool_size=connections, local_hostname="bench.test")
    account = Account("bench", "main", "127.0.0.1", port, use_tls=False)
    data = raw_message(1)
    await pool.send(account, "bench@acme.test", ["rcpt@example.org"], data)
    left = iter(range(messages))

    async def lane() -> None:
        for _ in left:
            await pool.send(account, "bench@acme.test", ["rcpt@example.org"], data)

    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(connections)))
    cpu, seconds = time.process_time() - cpu, time.perf_counter() - began
    await pool.close()
    return messages / seconds, cpu / messages * 1e6


def child(port: int, messages: int) -> None:
    """Run in a subprocess whose PYTHONPATH picks the checkout."""
    try:
        import uvloop
    except ImportError:
        rate, cpu = asyncio.run(measure(port, messages, 8))
    else:
        rate, cpu = uvloop.run(measure(port, messages, 8))
    print(f"{rate} {cpu}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", help="PYTHONPATH of another checkout to alternate with")
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sink", choices=("aiosmtpd", "lean"), default="lean")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    if args.child:
        child(args.child, args.messages)
        return
    from common import running_sink

    checkouts = {"new": str(HERE.parents[1])}
    if args.base:
        checkouts = {"base": args.base, **checkouts}  # a PYTHONPATH value
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in checkouts}
    lean = args.sink == "lean" or args.rtt_ms > 0
    with running_sink(lean=lean, delay=args.rtt_ms / 1000) as sink:
        for r in range(args.rounds):
            names = list(checkouts) if r % 2 == 0 else list(reversed(checkouts))
            for name in names:
                out = subprocess.run(
                    [sys.executable, str(HERE), "--child", str(sink.port),
                     "--messages", str(args.messages)],
                    env={"PYTHONPATH": checkouts[name], "PATH": "/usr/bin:/bin"},
                    capture_output=True, text=True, check=True).stdout.split()
                rate, cpu = float(out[0]), float(out[1])
                results[name].append((rate, cpu))
                print(f"round {r + 1} {name:<4} {rate:8,.0f} msgs/s {cpu:7.1f} us CPU/msg",
                      flush=True)
    for name, values in results.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"{name:<4} rtt={args.rtt_ms} ms median {rate:8,.0f} msgs/s {cpu:7.1f} us CPU/msg")


if __name__ == "__main__":
    main()
