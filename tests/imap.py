"""A real Dovecot IMAP server for the bounce tests, on 127.0.0.1 and a free port.

Started once per test session (`dovecot -F -c <conf>`) with a passwd-file user and Maildir
storage in a temporary directory outside pytest's 0700 tmp root (Dovecot's unprivileged
processes must reach it). `dovecot_tls` is a second one with IMAPS and a self-signed
certificate made here (`ssl = required`). Each test works in its own folder. When Dovecot
is not installed the tests that need it are skipped, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioimaplib import IMAP4, IMAP4_SSL

from tests.relay import free_port, make_certificate

USER = "bounce"
PASSWORD = "secret"

CONF = """\
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
{ssl}
auth_mechanisms = plain login
mail_location = maildir:{d}/mail/%u/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
  default_fields = uid=nobody gid=nogroup home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
"""


# Plain IMAP with LOGIN allowed in clear text (the default fixture).
PLAIN = "ssl = no\ndisable_plaintext_auth = no"
# IMAPS with a certificate the fixture makes (Dovecot still allows a clear-text login from
# loopback, which it counts as secure).
TLS = "ssl = required\nssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem"


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot",) if os.path.exists(p)), None)


def require_dovecot() -> str:
    binary = dovecot_binary()
    if binary is None:
        message = "Dovecot is not installed (apt-get install dovecot-imapd)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class Dovecot:
    host = "127.0.0.1"
    user = USER
    password = PASSWORD

    def __init__(self, binary: str, tls: bool = False) -> None:
        self.binary = binary
        self.tls = tls
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.ca_file: str | None = None  # the self-signed certificate, when tls
        self.dir = Path(tempfile.mkdtemp(prefix="gmp-dovecot-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        d = self.dir
        d.chmod(0o755)
        for sub in ("run", "state", f"mail/{USER}/Maildir/cur", f"mail/{USER}/Maildir/new",
                    f"mail/{USER}/Maildir/tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        if self.tls:
            cert, key = make_certificate(d)
            cert.rename(d / "cert.pem")
            key.rename(d / "key.pem")
            self.ca_file = str(d / "cert.pem")
        ssl_conf = (TLS if self.tls else PLAIN).format(d=d)
        (d / "dovecot.conf").write_text(CONF.format(d=d, port=self.port, ssl=ssl_conf,
                                                    tls_port=self.tls_port))
        subprocess.run(["chown", "-R", "nobody:nogroup", str(d / "mail")], check=True)
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(d / "dovecot.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dovecot did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- client side ---------------------------------------------------------------------

    async def client(self) -> IMAP4:
        imap: IMAP4
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file)
            imap = IMAP4_SSL(host=self.host, port=self.tls_port, timeout=10,
                             ssl_context=context)
        else:
            imap = IMAP4(host=self.host, port=self.port, timeout=10)
        await imap.wait_hello_from_server()
        response = await imap.login(self.user, self.password)
        assert response.result == "OK", response
        return imap

    async def new_folder(self) -> str:
        name = "t" + uuid.uuid4().hex[:10]
        imap = await self.client()
        try:
            assert (await imap.create(name)).result == "OK"
        finally:
            await imap.logout()
        return name

    async def append(self, folder: str, *messages: bytes) -> None:
        imap = await self.client()
        try:
            for raw in messages:
                response = await imap.append(raw, mailbox=folder)
                assert response.result == "OK", response
        finally:
            await imap.logout()

    async def recreate(self, folder: str) -> None:
        """Delete and create the folder again: it gets a new UIDVALIDITY."""
        imap = await self.client()
        try:
            assert (await imap.delete(folder)).result == "OK"
            await asyncio.sleep(1.1)  # a new second: Dovecot's next UIDVALIDITY differs
            assert (await imap.create(folder)).result == "OK"
        finally:
            await imap.logout()

    async def uids(self, folder: str, criteria: str = "ALL") -> list[int]:
        imap = await self.client()
        try:
            assert (await imap.select(folder)).result == "OK"
            response = await imap.uid_search(criteria, charset=None)
            return [int(x) for x in response.lines[0].split()]
        finally:
            await imap.logout()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot(require_dovecot())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dovecot_tls() -> Iterator[Dovecot]:
    """A second Dovecot with `ssl = required`: IMAPS on `tls_port` with a self-signed
    certificate (`ca_file`), besides plain IMAP on `port`."""
    server = Dovecot(require_dovecot(), tls=True)
    server.start()
    yield server
    server.stop()
