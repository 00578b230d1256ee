"""`mail-proxy serve` on a PostgreSQL server that restarts while messages keep arriving.

The server is a throwaway cluster of this test (initdb + pg_ctl as the postgres user, in a
temporary directory, on a free port), never the shared test server. While clients post
continuously, the cluster is restarted (`pg_ctl restart -m fast`: every session is ended),
and in a second run stopped the same way and started again 3 s later.

What must hold: every message acknowledged with HTTP 200, before, during or after the
restart, reaches the relay; /health answers 200 again; posts after the restart are taken
and delivered.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import message
from tests.procs import TOKEN, ServeProcess, new_encryption_key
from tests.relay import Relay, free_port, mail_id

PGBIN = Path(os.environ.get("TEST_PGBIN", "/usr/lib/postgresql/15/bin"))


class Cluster:
    """A private PostgreSQL cluster run as the postgres OS user."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailproxy-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/test"
        self.options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
                        "-c fsync=off -c full_page_writes=off")

    def _run(self, *cmd: str | Path) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr, self.log())

    def start(self) -> None:
        self._run(PGBIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        self._run(PGBIN / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w",
                  "-o", self.options, "start")
        self._run(PGBIN / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "test")

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def restart(self, pause: float) -> None:
        """Fast shutdown (sessions ended, clean checkpoint), then start with the same options:
        `pg_ctl restart`, or stop, `pause` seconds down, start."""
        old = self.pid()
        if pause:
            self._run(PGBIN / "pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")
            time.sleep(pause)
            self._run(PGBIN / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w",
                      "-o", self.options, "start")
        else:
            self._run(PGBIN / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w",
                      "-m", "fast", "restart")
        assert self.pid() != old, "the server did not restart"

    def log(self) -> str:
        path = self.dir / "log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PGBIN / "pg_ctl"), "-D",
                            str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def _missing_tools() -> str | None:
    for tool in ("initdb", "pg_ctl", "createdb"):
        if not (PGBIN / tool).exists():
            return f"{PGBIN / tool} not found"
    if shutil.which("runuser") is None:
        return "runuser not found"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres OS user"
    return None


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    problem = _missing_tools()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot run a private PostgreSQL cluster: {problem}")
        pytest.skip(f"cannot run a private PostgreSQL cluster: {problem}")
    started = Cluster()
    try:
        started.start()
        yield started
    finally:
        started.remove()


class Load:
    """Clients posting small batches until stopped; remembers what was acknowledged."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.acked: dict[str, float] = {}  # id -> time of the 200
        self.refused: Counter[str] = Counter()
        self.stopping = False

    async def client(self, name: str) -> None:
        n = 0
        while not self.stopping:
            ids = [f"{name}-{n}-{i}" for i in range(10)]
            n += 1
            body = {"messages": [message(0, id=i) for i in ids]}
            try:
                async with self.session.post(
                    self.url + "/commands/add-messages", json=body,
                    headers={"X-API-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=30),
                ) as resp:
                    answer = await resp.json()
                    if resp.status != 200:
                        self.refused[f"HTTP {resp.status}"] += 1
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.refused[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            assert answer["rejected"] == [], answer
            now = time.time()
            self.acked.update((i, now) for i in ids)
            await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("pause", [0.0, 3.0], ids=["restart", "down-3s"])
async def test_service_survives_a_database_restart(
    cluster: Cluster, relay: Relay, tmp_path: Path, pause: float
) -> None:
    relay.stalls["DATA"] = 0.005  # keep a backlog queued when the restart comes
    server = ServeProcess(tmp_path / "serve", GMP_DB_PATH=cluster.url,
                          GMP_ENCRYPTION_KEY=new_encryption_key(),
                          GMP_SEND_LOOP_INTERVAL="0.1", GMP_LEASE_SECONDS="10")
    server.start()
    try:
        async with aiohttp.ClientSession() as session:
            await server.ready(session)
            await server.call(session, "POST", "/tenant", {"id": "acme"})
            await server.call(session, "POST", "/account", {
                "id": "main", "tenant_id": "acme", "host": relay.host, "port": relay.port,
                "use_tls": False})
            load = Load(session, server.url)
            clients = [asyncio.create_task(load.client(f"c{k}")) for k in range(4)]
            await asyncio.sleep(2.0)
            before = dict(load.acked)
            restart_began = time.time()
            await asyncio.to_thread(cluster.restart, pause)
            restarted = time.time()
            await asyncio.sleep(3.0)  # posting goes on through reconnection
            load.stopping = True
            await asyncio.gather(*clients)

            # /health is 200 again
            deadline = time.monotonic() + 30
            while True:
                async with session.get(server.url + "/health") as resp:
                    if resp.status == 200:
                        break
                assert time.monotonic() < deadline, "no /health 200 after the restart"
                await asyncio.sleep(0.2)
            # new posts are taken and delivered
            fresh = [f"after-{i}" for i in range(20)]
            answer = await server.call(session, "POST", "/commands/add-messages", {
                "messages": [message(0, id=i) for i in fresh]})
            assert (answer["queued"], answer["rejected"]) == (20, [])

            wanted = set(load.acked) | set(fresh)
            deadline = time.monotonic() + 60
            while not wanted <= {mail_id(r) for r in relay.messages}:
                assert time.monotonic() < deadline, "acknowledged messages were lost"
                await asyncio.sleep(0.2)
            # and every outcome was recorded: nothing is left open
            while (await server.call(session, "GET", "/status"))["pending_messages"]:
                assert time.monotonic() < deadline, "messages left open after delivery"
                await asyncio.sleep(0.2)
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()

    times: dict[str, float] = {}
    for item in relay.messages:
        times.setdefault(mail_id(item), item.time)
    counts = Counter(mail_id(r) for r in relay.messages)
    acked_during = [i for i, t in load.acked.items() if restart_began <= t <= restarted + 1]
    delivered_later = [i for i in before if times[i] > restarted]
    print(f"\npg restart: {len(load.acked)} acknowledged ({len(before)} before the restart, "
          f"{len(acked_during)} while it ran or within 1 s after), refused "
          f"{dict(load.refused)}, restart took {restarted - restart_began:.2f} s, "
          f"{len(delivered_later)} acknowledged before it delivered after it, "
          f"{sum(n - 1 for n in counts.values())} duplicates")
    assert set(load.acked) | set(fresh) <= set(times)
    assert delivered_later, "the backlog was gone before the restart: nothing was tested"
    assert any(t > restarted for t in load.acked.values()), "no post taken after the restart"
