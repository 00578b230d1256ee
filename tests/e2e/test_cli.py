"""The mail-proxy command, run as a subprocess with HOME in a temporary directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay import Relay, free_port

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GMP_")}
        self.env.update(HOME=str(home), PYTHONPATH=str(ROOT), GMP_SHUTDOWN_GRACE_SECONDS="2",
                        GMP_SEND_LOOP_INTERVAL="0.05")

    def __call__(self, *args: str, stdin: str = "", timeout: float = 60
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailproxy", *args], input=stdin, capture_output=True,
            text=True, env=self.env, timeout=timeout, cwd=self.home,
        )

    def ok(self, *args: str, stdin: str = "") -> str:
        done = self(*args, stdin=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def kill_all(self) -> None:
        for pid_file in (self.home / ".mail-proxy").glob("*/server.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path)
    yield runner
    runner.kill_all()


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli().returncode == 2
    assert cli("start").returncode == 2
    assert cli("serve", "--port", "nope").returncode == 2
    assert cli("demo", "acme", "send", "a.eml", "b.eml", "--id", "x").returncode == 2
    assert cli("list", "--bogus").returncode == 2
    done = cli("stop")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert cli("--help").returncode == 0


def test_commands_on_a_stopped_instance_exit_3(cli: Cli) -> None:
    for args in (("demo", "info"), ("demo", "tenants", "list"),
                 ("demo", "acme", "accounts", "list"), ("demo", "acme", "run-now")):
        done = cli(*args)
        assert done.returncode == 3, (args, done.stderr)
        assert "mail-proxy start demo" in done.stderr
        assert done.stderr.count("\n") == 1  # one clear line, no traceback


def test_reserved_names_are_refused(cli: Cli) -> None:
    done = cli("start", "list")
    assert done.returncode == 2
    assert "reserved" in done.stderr


@pytest.mark.slow
def test_start_use_and_stop_an_instance(cli: Cli, relay: Relay) -> None:
    port, smtp_port = free_port(), free_port()
    out = cli.ok("start", "demo", "--port", str(port), "--smtp-port", str(smtp_port))
    assert f"http://127.0.0.1:{port}" in out
    token = (cli.home / ".mail-proxy/demo/api_token").read_text().strip()
    assert token in out  # first start shows the admin token ...
    config = (cli.home / ".mail-proxy/demo/config.ini").read_text()
    assert f"port = {port}" in config and f"smtp_port = {smtp_port}" in config
    again = cli.ok("start", "demo")
    assert "already running" in again and token not in again
    assert cli.ok("demo", "token").strip() == token

    listing = json.loads(cli.ok("list", "--json"))
    assert [(i["name"], i["status"]) for i in listing] == [("demo", "running")]
    info = json.loads(cli.ok("demo", "info", "--json"))
    assert info["tenants"] == 0 and info["url"] == f"http://127.0.0.1:{port}"

    added = cli.ok("demo", "tenants", "add", "acme", "--name", "Acme Corp")
    assert "tenant token (shown once)" in added
    assert cli("demo", "tenants", "add", "acme").returncode == 1
    assert cli("demo", "tenants", "add", "--no-input").returncode == 2
    assert "Acme Corp" in cli.ok("demo", "tenants", "list")
    cli.ok("demo", "acme", "accounts", "add", "main", "--host", relay.host,
           "--port", str(relay.port), "--no-tls")
    cli.ok("demo", "acme", "accounts", "add", "other", "--host", relay.host,
           "--port", str(relay.port), "--user", "u", "--password-stdin", stdin="secret\n")
    accounts = json.loads(cli.ok("demo", "acme", "accounts", "list", "--json"))
    assert {a["id"]: (a["has_password"], a["use_tls"]) for a in accounts} == {
        "main": (False, False), "other": (True, None)}

    eml = cli.home / "hello.eml"
    eml.write_bytes(b"From: Sender <sender@acme.test>\r\nTo: rcpt@example.org\r\n"
                    b"Bcc: hidden@example.org\r\nSubject: hi\r\n\r\nhello\r\n")
    assert cli("demo", "acme", "send", str(eml)).returncode == 2  # two accounts: --account
    sent = cli.ok("demo", "acme", "send", str(eml), str(eml), "--account", "main")
    ids = sent.split()
    assert len(ids) == 2 and all(i.startswith("cli-") for i in ids)
    deadline = time.monotonic() + 15
    while relay.accepted < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert relay.accepted == 2
    assert sorted(relay.messages[0].rcpt_tos) == ["hidden@example.org", "rcpt@example.org"]
    records = json.loads(cli.ok("demo", "acme", "messages", "list", "--json", "--history"))
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert "sent" in cli.ok("demo", "acme", "messages", "list")
    cli.ok("demo", "acme", "run-now")

    assert cli("demo", "acme", "accounts", "delete", "other").returncode == 2  # no --yes
    cli.ok("demo", "acme", "accounts", "delete", "other", "--yes")
    cli.ok("demo", "tenants", "delete", "acme", "--yes")

    assert "stopped" in cli.ok("stop", "demo")
    assert not (cli.home / ".mail-proxy/demo/server.pid").exists()
    assert cli("demo", "info").returncode == 3
    listing = json.loads(cli.ok("list", "--json"))
    assert listing[0]["status"] == "stopped"


@pytest.mark.slow
def test_ports_are_picked_and_remembered(cli: Cli) -> None:
    cli.ok("start", "one")
    config = (cli.home / ".mail-proxy/one/config.ini").read_text()
    port = int(config.split("port = ", 1)[1].split()[0])
    assert port >= 8000
    assert "smtp_port = " in config
    cli.ok("stop", "one")
    out = cli.ok("restart", "one")
    assert f":{port}" in out
    assert "admin token" not in out  # only the first start shows it
    cli.ok("stop", "one")
