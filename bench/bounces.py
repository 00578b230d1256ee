"""Bounce poller benchmark: DSNs processed per second from a mailbox of 5,000, and the
end-to-end send rate with the poller busy beside it, each beside its same-run limit.

Usage: python bench/bounces.py [--dsns 5000] [--messages 10000]

It starts a private Dovecot (as the tests do; needs dovecot-imapd, and root for its
mail uid), the discarding sink and `mail-proxy serve` on SQLite. Limits measured in the
same run: a bare aioimaplib UID FETCH of the whole mailbox (what the poller can at most
read), and the end-to-end send rate with the poller off.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    Server,
    figure,
    headers,
    raw_smtp_rate,
    rest_message,
    running_sink,
    setup_tenant,
)

from tests.imap import Dovecot, dovecot_binary  # noqa: E402

TEMPLATE = (ROOT / "tests" / "data" / "bounces" / "dsn_511.eml").read_bytes()


def dsn(pk: str, client_id: str, rcpt: str, n: int) -> bytes:
    raw = (TEMPLATE.replace(b"{PK}", pk.encode()).replace(b"{CLIENT_ID}", client_id.encode())
           .replace(b"{RCPT}", rcpt.encode()))
    return raw.replace(b"<20261201100005.4Q8x1@mx.example.org>",
                       f"<bench-{n}@mx.example.org>".encode())


async def call(session: aiohttp.ClientSession, method: str, url: str, **kw: object) -> dict:
    async with session.request(method, url, headers=headers(), **kw) as resp:  # type: ignore[arg-type]
        body = await resp.json()
        assert resp.status == 200, body
        return body  # type: ignore[no-any-return]


async def post_all(session: aiohttp.ClientSession, url: str, prefix: str, count: int,
                   rcpt: str | None = None) -> None:
    for first in range(0, count, 1000):
        items = []
        for i in range(first, min(first + 1000, count)):
            item = rest_message(f"{prefix}{i}")
            item["to"] = [rcpt or f"user{prefix}{i}@example.org"]
            items.append(item)
        await call(session, "POST", url + "/commands/add-messages", json={"messages": items})


async def until(check: object, timeout: float = 900) -> None:
    began = time.perf_counter()
    while not await check():  # type: ignore[operator]
        if time.perf_counter() - began > timeout:
            raise RuntimeError("benchmark condition not reached")
        await asyncio.sleep(0.05)


async def pks(session: aiohttp.ClientSession, url: str, prefix: str) -> dict[str, str]:
    body = await call(session, "GET", url + "/messages",
                      params={"tenant_id": "bench", "limit": "100000"})
    return {m["id"]: m["pk"] for m in body["messages"] if m["id"].startswith("b" + prefix)}


async def fill(box: Dovecot, folder: str, mails: list[bytes], lanes: int = 4) -> None:
    queue = list(mails)

    async def lane() -> None:
        imap = await box.client()
        try:
            while queue:
                await imap.append(queue.pop(), mailbox=folder)
        finally:
            await imap.logout()

    await asyncio.gather(*(lane() for _ in range(lanes)))


async def raw_fetch_rate(box: Dovecot, folder: str) -> float:
    """Bare aioimaplib: SELECT and UID FETCH every message in chunks of 200."""
    imap = await box.client()
    try:
        began = time.perf_counter()
        await imap.select(folder)
        found = await imap.uid_search("ALL", charset=None)
        uids = found.lines[0].split()
        for start in range(0, len(uids), 200):
            chunk = b",".join(uids[start:start + 200]).decode()
            await imap.uid("fetch", chunk, "(UID BODY.PEEK[])")
        return len(uids) / (time.perf_counter() - began)
    finally:
        await imap.logout()


async def send_rate(session: aiohttp.ClientSession, url: str, sink: object, prefix: str,
                    count: int) -> float:
    base = sink.received  # type: ignore[attr-defined]
    began = time.perf_counter()
    await post_all(session, url, prefix, count, rcpt="rcpt@example.org")

    async def arrived() -> bool:
        return sink.received >= base + count  # type: ignore[attr-defined,no-any-return]

    await until(arrived)
    return count / (time.perf_counter() - began)


async def suppressed(session: aiohttp.ClientSession, url: str) -> int:
    body = await call(session, "GET", url + "/tenant/bench/suppressions",
                      params={"limit": "1"})
    return int(body["total"])


async def main(args: argparse.Namespace) -> None:
    binary = dovecot_binary()
    if binary is None:
        raise SystemExit("dovecot is not installed (apt-get install dovecot-imapd)")
    box = Dovecot(binary)
    box.start()
    try:
        with running_sink() as sink:
            await run(args, box, sink)
    finally:
        box.stop()


async def switch(session: aiohttp.ClientSession, url: str, **values: object) -> None:
    await call(session, "PUT", url + "/instance", json=values)
    await call(session, "POST", url + "/instance/reload-bounce")


async def run(args: argparse.Namespace, box: Dovecot, sink: object) -> None:
    raw = await raw_smtp_rate(sink.port)  # type: ignore[attr-defined]
    figure("raw SMTP 8 connections", raw, "msgs/s")
    folders = [await box.new_folder() for _ in range(1 + args.rounds)]
    server = await Server(extra_env={
        "GMP_BOUNCE_IMAP_HOST": box.host, "GMP_BOUNCE_IMAP_PORT": str(box.port),
        "GMP_BOUNCE_IMAP_USER": box.user, "GMP_BOUNCE_IMAP_PASSWORD": box.password,
        "GMP_BOUNCE_IMAP_SSL": "false", "GMP_BOUNCE_IMAP_FOLDER": folders[0],
        "GMP_BOUNCE_POLL_INTERVAL": "1", "GMP_BOUNCE_ENABLED": "false"}).start()
    url = server.url
    try:
        async with aiohttp.ClientSession() as session:
            await setup_tenant(session, url, sink.port)  # type: ignore[attr-defined]
            await fill_folders(args, box, sink, session, url, folders)
            limit = await raw_fetch_rate(box, folders[0])
            figure("raw aioimaplib UID FETCH of the mailbox", limit, "msgs/s")

            # 1. The whole first folder, polled and recorded.
            began = time.perf_counter()
            await switch(session, url, bounce_enabled=True)

            async def all_in() -> bool:
                return await suppressed(session, url) >= args.dsns

            await until(all_in)
            rate = args.dsns / (time.perf_counter() - began)
            figure(f"bounces processed ({args.dsns} DSNs)", rate, "DSNs/s",
                   f"raw fetch {limit:,.0f} msgs/s, {100 * rate / limit:.0f} %")

            # 2. End-to-end send rate: poller off and poller busy, alternating rounds.
            offs, ons, busy = [], [], []
            for r in range(args.rounds):
                await switch(session, url, bounce_enabled=False)
                offs.append(await send_rate(session, url, sink, f"x{r}-", args.messages))
                await switch(session, url, bounce_enabled=True,
                             bounce_imap_folder=folders[r + 1])
                ons.append(await send_rate(session, url, sink, f"y{r}-", args.messages))
                busy.append(await suppressed(session, url) < (r + 2) * args.dsns)
            await switch(session, url, bounce_enabled=False)
            offs.append(await send_rate(session, url, sink, "z-", args.messages))
            off, on = statistics.median(offs), statistics.median(ons)
            print("poller off rounds:", " ".join(f"{x:,.0f}" for x in offs))
            print("poller busy rounds:", " ".join(f"{x:,.0f}" for x in ons),
                  "(still busy at the end of each:", busy, ")")
            figure("end-to-end, poller off (median)", off, "msgs/s",
                   f"raw SMTP {raw:,.0f} msgs/s")
            figure("end-to-end, poller busy beside it (median)", on, "msgs/s",
                   f"{100 * on / off:.1f} % of poller off (target >= 95 %)")
    finally:
        server.stop()


async def fill_folders(args: argparse.Namespace, box: Dovecot, sink: object,
                       session: aiohttp.ClientSession, url: str, folders: list[str]) -> None:
    """Send one message per DSN (each to its own recipient), then fill each folder with
    `dsns` DSNs of those messages."""
    total = len(folders) * args.dsns
    base = sink.received  # type: ignore[attr-defined]
    await post_all(session, url, "d", total)

    async def delivered() -> bool:
        return sink.received >= base + total  # type: ignore[attr-defined,no-any-return]

    await until(delivered)
    known = await pks(session, url, "d")
    names = sorted(known, key=lambda k: int(k[2:]))  # ids are b<prefix><n>
    assert len(names) == total, len(names)
    mails = [dsn(known[c], c, f"user{c[1:]}@example.org", n) for n, c in enumerate(names)]
    began = time.perf_counter()
    for i, folder in enumerate(folders):
        await fill(box, folder, mails[i * args.dsns:(i + 1) * args.dsns])
    print(f"filled {len(folders)} folders with {args.dsns} DSNs each in "
          f"{time.perf_counter() - began:.1f} s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsns", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
