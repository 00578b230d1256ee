"""Which URLs and command lines the CLI trusts in a data directory (mailproxy.cli.trust)."""

from __future__ import annotations

import os

import pytest

from mailproxy.cli.trust import is_loopback_url, is_server_process, serves


@pytest.mark.parametrize(("url", "trusted"), [
    ("http://127.0.0.1:8000", True), ("http://127.9.8.7:1", True), ("http://[::1]:8000", True),
    ("http://localhost:8000", True), ("https://localhost", True),
    ("http://evil", False), ("http://192.0.2.1:9", False), ("http://10.0.0.1:8000", False),
    ("http://127.0.0.1.evil.test:80", False), ("http://localhost.evil.test", False),
    ("http://0.0.0.0:8000", False), ("ftp://127.0.0.1", False), ("http://127.0.0.1:x", False),
    ("", False),
])
def test_only_loopback_urls_are_trusted(url: str, trusted: bool) -> None:
    assert is_loopback_url(url) is trusted


@pytest.mark.parametrize(("argv", "server"), [
    (["/venv/bin/python3", "-m", "mailproxy", "serve", "x", "--data-dir", "/d"], True),
    (["/venv/bin/python3", "/venv/bin/mail-proxy", "serve"], True),
    (["/usr/local/bin/mail-proxy", "serve"], True),
    (["python3", "-X", "dev", "-m", "mailproxy", "serve"], True),
    (["/venv/bin/python3", "/venv/bin/mail-proxy", "default", "tenants", "list"], False),
    (["python3", "-m", "mailproxy"], False),
    (["python3", "/tmp/mailproxy-notes.py", "serve"], False),
    (["vim", "mailproxy/serve.py"], False),
    (["sleep", "60", "mail-proxy", "serve"], False),
    ([], False),
])
def test_a_server_is_a_mail_proxy_serve_command_line(argv: list[str], server: bool) -> None:
    assert serves(argv) is server


def test_a_pid_without_a_readable_proc_entry_is_no_server() -> None:
    assert not is_server_process(os.getpid())  # pytest, not a server
    assert not is_server_process(2**22 + 1)  # above pid_max: no /proc entry
