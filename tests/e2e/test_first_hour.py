"""A new user's first hour with the CLI: `make serve` and `mail-proxy` meet, hints help.

`make serve` is `mail-proxy serve` with GMP_DATA_DIR=./data of the checkout; here it runs as
a subprocess in a temporary "checkout" (with GMP_PORT=0, so the bound port is the kernel's
pick), and the CLI runs from that directory with no GMP_* variables, as a user types it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailproxy.cli import instances
from mailproxy.cli import main as cli_main
from tests.e2e.test_cli import ROOT, Cli
from tests.relay import Relay, free_port

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+)) \(instance (\S+),")


class MakeServe:
    """`make serve` in a checkout: the server's log is what the user reads."""

    def __init__(self, checkout: Path, **env: str) -> None:
        self.checkout = checkout
        self.log = checkout / "serve.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("GMP_")}
        self.env = {**base, "HOME": str(checkout), "PYTHONPATH": str(ROOT),
                    "GMP_DATA_DIR": str(checkout / "data"), "GMP_PORT": "0",
                    "GMP_SMTP_PORT": "0", "GMP_SHUTDOWN_GRACE_SECONDS": "2", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailproxy", "serve"], env=self.env,
                              cwd=self.checkout, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> tuple[str, str]:
        """Start and wait for the listening line; returns (url, instance name logged)."""
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "mailproxy", "serve"],
                                         env=self.env, cwd=self.checkout,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            found = LISTENING.search(self.log.read_text())
            if found:
                return found.group(1), found.group(3)
            time.sleep(0.05)
        raise AssertionError(f"serve did not log its address:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    path = tmp_path / "checkout"
    path.mkdir()
    return path


@pytest.fixture
def served(checkout: Path) -> Iterator[tuple[MakeServe, str, str]]:
    server = MakeServe(checkout)
    url, name = server.start()
    yield server, url, name
    server.stop()


@pytest.fixture
def user(checkout: Path) -> Iterator[Cli]:
    """The CLI as the user runs it: from the checkout, HOME its own, no GMP_* variables."""
    runner = Cli(checkout)
    runner.env.pop("GMP_SHUTDOWN_GRACE_SECONDS")
    yield runner
    runner.kill_all()


def test_the_log_names_the_instance_and_the_port_it_bound(
        served: tuple[MakeServe, str, str]) -> None:
    server, url, name = served
    port = int(url.rsplit(":", 1)[1])
    assert name == "default"
    assert port != 0
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the logged port is the one that answers
    assert not re.search(r"instance [0-9a-f]{12}", server.log.read_text())


def test_the_cli_lists_and_uses_the_instance_of_make_serve(
        served: tuple[MakeServe, str, str], user: Cli) -> None:
    _server, url, _name = served
    listing = json.loads(user.ok("list", "--json"))
    assert [(i["name"], i["status"], i["url"]) for i in listing] == [
        ("default", "running", url)]
    assert "default" in user.ok("list") and url in user.ok("list")
    added = user.ok("default", "tenants", "add", "acme", "--name", "Acme")
    assert "tenant token (shown once)" in added
    assert "Acme" in user.ok("default", "tenants", "list")
    info = json.loads(user.ok("default", "info", "--json"))
    assert info["url"] == url and info["tenants"] == 1


def test_start_default_does_not_start_a_second_instance_beside_make_serve(
        served: tuple[MakeServe, str, str], user: Cli) -> None:
    _server, url, _name = served
    out = user.ok("start", "default")
    assert f"default is already running at {url}" in out
    assert not (user.home / ".mail-proxy").exists()  # nothing new, nothing outside ./data


def test_start_elsewhere_beside_a_foreign_server_on_the_first_port_is_refused(
        served: tuple[MakeServe, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Seen from another directory, `make serve` on the first port is not an instance the
    CLI knows: `start default` says so instead of opening an empty one on the next port.
    (In-process, so that the first port can be the one the test's server bound.)"""
    _server, url, _name = served
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(elsewhere))
    for name in [n for n in os.environ if n.startswith("GMP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(instances, "FIRST_PORT", int(url.rsplit(":", 1)[1]))
    monkeypatch.setattr("mailproxy.cli.lifecycle.FIRST_PORT", instances.FIRST_PORT)
    try:
        assert cli_main.main(["start", "default"]) == 1
    finally:  # had it started one anyway, it must not outlive the test
        Cli(elsewhere).kill_all()
    err = capsys.readouterr().err
    assert f"a mail-proxy already answers at {url}" in err
    assert "--port" in err and err.count("\n") == 1
    assert not (elsewhere / ".mail-proxy" / "default").exists()


def test_a_missing_name_gets_a_usage_line_with_an_example(checkout: Path, user: Cli) -> None:
    done = user("tenants", "list")
    assert done.returncode == 2
    assert "unknown command" not in done.stderr
    assert "usage: mail-proxy NAME tenants list" in done.stderr
    assert "e.g. mail-proxy default tenants list" in done.stderr
    done = user("acme", "messages", "list")
    assert done.returncode == 3
    assert "mail-proxy default acme messages list" in done.stderr
    done = user("default")
    assert done.returncode == 2 and "e.g. mail-proxy default tenants list" in done.stderr
    done = user("default", "stop")
    assert done.returncode == 2 and "mail-proxy stop default" in done.stderr


def test_hints_name_the_command_that_helps(checkout: Path, user: Cli) -> None:
    done = user("default", "tenants", "list")
    assert done.returncode == 3
    assert "make serve" in done.stderr and "mail-proxy start default" in done.stderr
    (checkout / "data").mkdir()
    (checkout / "data" / "api_token").write_text("x\n")
    done = user("default", "tenants", "list")  # ./data exists but nothing runs
    assert done.returncode == 3
    assert "not running" in done.stderr and "start it with: make serve" in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_busy_port_stops_start_up_with_one_line(checkout: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = MakeServe(checkout, GMP_PORT=str(port)).run()
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f"mail-proxy: cannot listen on 127.0.0.1:{port}: address already in use "
            "(another mail-proxy? see: mail-proxy list)"]
        # The SMTP port busy: started parts are stopped again, nothing left unclosed.
        done = MakeServe(checkout, GMP_SMTP_PORT=str(port), GMP_PORT=str(free_port()),
                         GMP_API_TOKEN="t" * 32).run()
        assert done.returncode == 1
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert lines[0] == (f"mail-proxy: cannot listen for SMTP on 127.0.0.1:{port}: "
                            "address already in use")
        assert "Unclosed" not in done.stderr
    with contextlib.suppress(FileNotFoundError):
        assert not (checkout / "data" / "server.pid").exists()


def test_why_a_message_waits_is_in_the_cli_table_and_the_server_log(
        checkout: Path, relay: Relay) -> None:
    relay.replies["DATA"] = "451 4.3.0 try again later"
    server = MakeServe(checkout, GMP_RETRY_BASE_SECONDS="600", GMP_SEND_LOOP_INTERVAL="0.05")
    server.start()
    user = Cli(checkout)
    try:
        user.ok("default", "tenants", "add", "acme")
        user.ok("default", "acme", "accounts", "add", "main", "--host", relay.host,
                "--port", str(relay.port), "--no-tls")
        eml = checkout / "hello.eml"
        eml.write_bytes(b"From: a@acme.test\r\nTo: r@example.org\r\nSubject: hi\r\n\r\nhi\r\n")
        [message_id] = user.ok("default", "acme", "send", str(eml), "--id", "inv-1").split()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            [record] = json.loads(user.ok("default", "acme", "messages", "list", "--json"))
            if record["retry_count"] == 1:
                break
            time.sleep(0.1)
        assert record["last_error"] == "451 4.3.0 try again later"
        table = user.ok("default", "acme", "messages", "list", "--history")
        header, row, *history = table.splitlines()
        assert "ERROR" in header and "NEXT TRY" in header
        assert "451 4.3.0 try again later" in row and "deferred" in row
        assert _utc(record["deferred_ts"]) in row
        event_ts = int(_only_event(user)["event_ts"])  # type: ignore[call-overload]
        assert history == [f"  inv-1: {_utc(event_ts)} deferred 451 4.3.0 try again later"]
        assert not re.search(r"\b1[7-9]\d{8}\b", table)  # never a raw epoch
        log = server.log.read_text()
        assert (f"INFO mailproxy.delivery.outcome: deferred acme/main {message_id}: "
                f"451 4.3.0 try again later; next try "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(record['deferred_ts']))} "
                f"(retry 1)") in log
    finally:
        server.stop()


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _only_event(user: Cli) -> dict[str, object]:
    [record] = json.loads(user.ok("default", "acme", "messages", "list", "--json",
                                  "--history"))
    [event] = record["history"]
    return dict(event)


def test_an_unknown_tenant_names_the_command_that_lists_them(
        served: tuple[MakeServe, str, str], user: Cli) -> None:
    done = user("default", "ghost", "messages", "list")
    assert done.returncode == 1
    assert done.stderr.strip() == ("mail-proxy: tenant not found (HTTP 404); "
                                   "see: mail-proxy default tenants list")
    user.ok("default", "tenants", "add", "acme")
    done = user("default", "tenants", "add", "acme")
    assert done.returncode == 1 and "see: mail-proxy default tenants show acme" in done.stderr


def _walkthrough() -> str:
    """The README's first shell example (Send a message), as a user would paste it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Send a message", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_walkthrough_works_as_written(checkout: Path, relay: Relay) -> None:
    """Only the placeholders change: the port `make serve` bound, and the relay (a real
    aiosmtpd on loopback instead of smtp.example.com, so that nothing leaves the machine)."""
    smtp_port = free_port()
    server = MakeServe(checkout, GMP_SMTP_PORT=str(smtp_port))
    url, _name = server.start()
    try:
        port = url.rsplit(":", 1)[1]
        script = (_walkthrough().replace("localhost:8000", f"127.0.0.1:{port}")
                  .replace('"smtp.example.com", "port": 587',
                           f'"{relay.host}", "port": {relay.port}'))
        assert "smtp.example.com" not in script
        done = subprocess.run(["bash", "-euo", "pipefail", "-c",
                               script + '\necho "TENANT_TOKEN=$TENANT_TOKEN"'],
                              cwd=checkout, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert '{"ok":true,"queued":1,"rejected":[]}' in done.stdout.replace(" ", "")
        token = done.stdout.rsplit("TENANT_TOKEN=", 1)[1].strip()
        assert len(token) >= 40 and token != "null"
        assert _smtp_address(server) == f"127.0.0.1:{smtp_port}"
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:  # the README's Python
            assert smtp.login("acme/main", token)[0] == 235
    finally:
        server.stop()


def _smtp_address(server: MakeServe) -> str:
    return str(json.loads((server.checkout / "data" / "server.json").read_text())["smtp"])
