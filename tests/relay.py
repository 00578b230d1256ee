"""A programmable SMTP relay sink for tests, on aiosmtpd.

The relay runs in its own thread and event loop (aiosmtpd's Controller), listens on 127.0.0.1
on a free port and records what it receives. Tests steer it by setting attributes, which take
effect at the next command (TLS offer, SMTPUTF8 and AUTH settings at the next connection):

    relay.replies["DATA"] = "451 4.3.0 try again later"     # answer a command with a code
    relay.rcpt_replies["x@example.org"] = "550 5.1.1 user unknown"
    relay.stalls["DATA"] = 60                                  # sleep before answering
    relay.drop.add("DATA")                                     # close instead of answering
    relay.smtputf8 = False                                     # stop advertising SMTPUTF8
    relay.pipelining = False                                   # stop advertising PIPELINING

Use the `relay` fixture for a plain relay and `make_relay(...)` for TLS or AUTH variants.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import ipaddress
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailproxy.model import Account

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Received:
    """One DATA transaction as the relay saw it."""

    conn_id: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    login: str | None
    tls: bool
    reply: str
    time: float = field(default_factory=time.time)


_MAIL_ID = re.compile(rb"^X-Genro-Mail-ID: ([^\r\n]+)", re.MULTILINE | re.IGNORECASE)


def mail_id(item: Received) -> str:
    """The client message id a received message carries (its X-Genro-Mail-ID header)."""
    head = item.content.split(b"\r\n\r\n", 1)[0]
    found = _MAIL_ID.search(head)
    assert found is not None, head[:500]
    return found.group(1).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1; returns (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "relay-cert.pem"
    key_path = directory / "relay-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _RelaySMTP(SMTP):
    """aiosmtpd's SMTP session, numbered and tracked so the relay can count and close it."""

    def __init__(self, relay: Relay, conn_id: int, **kwargs: Any) -> None:
        super().__init__(relay.handler, **kwargs)
        self.relay = relay
        self.conn_id = conn_id
        self.implicit_tls = relay.implicit_tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.relay.live.discard(self)
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, relay: Relay, **kwargs: Any) -> None:
        self._relay = relay
        super().__init__(relay.handler, **kwargs)

    def factory(self) -> SMTP:
        return self._relay.new_session()


class _Handler:
    """aiosmtpd hooks; each consults the relay's current behaviour."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a custom EHLO hook
        reply = await self.relay.intervene("EHLO", server)
        if reply is not None:
            return [reply]
        if not self.relay.eightbit:
            responses = [line for line in responses if line[4:].upper() != "8BITMIME"]
        if self.relay.pipelining:  # aiosmtpd reads commands one by one, so it can pipeline
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return await self.relay.intervene("NOOP", server) or "250 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self.relay.intervene("RSET", server) or "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.relay.commands["QUIT"] += 1
        return "221 Bye"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.relay.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if server._reader._buffer:  # the next command came in the same write: pipelined
            self.relay.pipelined += 1
        reply = await self.relay.intervene("MAIL", server)
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = await self.relay.intervene("RCPT", server, address)
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return reply or "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await self.relay.intervene("DATA", server) or "250 2.0.0 OK"
        self.relay.record(server, session, envelope, reply)
        return reply


class Relay:
    """A relay sink with per-test behaviour. Start with start() or use as a context manager."""

    pipelining_default = True  # a test module may flip it to run its relays without

    def __init__(
        self,
        *,
        port: int | None = None,
        implicit_tls: bool = False,
        starttls: bool = False,
        require_starttls: bool = False,
        smtputf8: bool = True,
        eightbit: bool = True,
        pipelining: bool | None = None,
        auth: tuple[str, str] | None = None,
        auth_required: bool | None = None,
        auth_require_tls: bool = True,
        discard: bool = False,
        data_size_limit: int | None = 32 * 2**20,
        timeout: float = 60,
    ) -> None:
        self.host = HOST
        self.port = port or free_port()
        self.implicit_tls = implicit_tls
        # Read at each new connection:
        self.starttls = starttls
        self.require_starttls = require_starttls
        self.smtputf8 = smtputf8
        self.eightbit = eightbit
        self.pipelining = self.pipelining_default if pipelining is None else pipelining
        self.auth = auth
        self.auth_required = auth is not None if auth_required is None else auth_required
        self.auth_require_tls = auth_require_tls
        self.data_size_limit = data_size_limit
        self.timeout = timeout
        # Read at each command:
        self.replies: dict[str, str] = {}
        self.rcpt_replies: dict[str, str] = {}
        self.stalls: dict[str, float] = {}
        self.drop: set[str] = set()
        self.discard = discard
        # What happened:
        self.messages: list[Received] = []
        self.refused: list[Received] = []
        self.accepted = 0
        self.connections = 0
        self.pipelined = 0  # MAIL commands that arrived with the next command behind them
        self.commands: collections.Counter[str] = collections.Counter()
        self.logins: list[tuple[str, bool]] = []
        self.live: set[_RelaySMTP] = set()

        self.handler = _Handler(self)
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="relay-")
        self.cert_path, self.key_path = make_certificate(Path(self._tmp.name))
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(self.cert_path, self.key_path)
        self._controller: _Controller | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Relay:
        controller = _Controller(
            self,
            hostname=HOST,
            port=self.port,
            ssl_context=self.server_context if self.implicit_tls else None,
        )
        try:
            controller.start()
        except BaseException:
            self._tmp.cleanup()
            raise
        self._controller = controller
        self.connections = 0  # the Controller's own start-up probe is not a session
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            with contextlib.suppress(Exception):
                future = asyncio.run_coroutine_threadsafe(self._close_sessions(), controller.loop)
                future.result(timeout=5)
            controller.stop()
        self._tmp.cleanup()

    def kick(self) -> None:
        """Hang up every open session from the relay side, as an idle timeout would."""
        assert self._controller is not None, "relay not started"
        future = asyncio.run_coroutine_threadsafe(self._close_sessions(), self._controller.loop)
        future.result(timeout=5)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _close_sessions(self) -> None:
        for server in list(self.live):
            if server.transport is not None:
                server.transport.close()
        for _ in range(200):
            if not self.live:
                return
            await asyncio.sleep(0.01)

    # -- helpers for tests ------------------------------------------------------------------

    def account(self, tenant_id: str = "t1", account_id: str = "a1", **overrides: Any) -> Account:
        """An Account pointing at this relay (use_tls False unless overridden)."""
        values: dict[str, Any] = {"use_tls": False, **overrides}
        return replace(Account(tenant_id, account_id, self.host, self.port), **values)

    def client_context(self) -> ssl.SSLContext:
        """A client SSL context that trusts this relay's certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least n messages were accepted; return the recorded ones."""
        deadline = time.monotonic() + timeout
        while self.accepted < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay accepted {self.accepted} of {n} messages")
            await asyncio.sleep(0.005)
        return list(self.messages)

    def reset(self) -> None:
        """Forget what was received and go back to accepting everything."""
        self.replies.clear()
        self.rcpt_replies.clear()
        self.stalls.clear()
        self.drop.clear()
        self.messages.clear()
        self.refused.clear()
        self.accepted = 0
        self.commands.clear()
        self.pipelined = 0
        self.logins.clear()

    # -- called from the relay thread -------------------------------------------------------

    def new_session(self) -> SMTP:
        with self._lock:
            self.connections += 1
            conn_id = self.connections
        return _RelaySMTP(
            self,
            conn_id,
            hostname="relay.test",
            enable_SMTPUTF8=self.smtputf8,
            tls_context=self.server_context if self.starttls else None,
            require_starttls=self.require_starttls,
            authenticator=self._authenticate,
            # aiosmtpd only knows about STARTTLS; an implicit-TLS session is already encrypted.
            auth_require_tls=self.auth_require_tls and not self.implicit_tls,
            data_size_limit=self.data_size_limit,
            timeout=self.timeout,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            self.auth is not None
            and isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.auth[0]
            and auth_data.password.decode() == self.auth[1]
        )
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
        self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def intervene(self, command: str, server: SMTP, address: str | None = None) -> str | None:
        """Apply the configured stall, drop or reply for this command."""
        self.commands[command] += 1
        delay = self.stalls.get(command)
        if delay:
            await asyncio.sleep(delay)
        if command in self.drop:
            if server.transport is not None:
                server.transport.close()
            await asyncio.Event().wait()  # cancelled by aiosmtpd when the connection is lost
        if address is not None and address.lower() in self.rcpt_replies:
            return self.rcpt_replies[address.lower()]
        return self.replies.get(command)

    def record(self, server: SMTP, session: Session, envelope: Envelope, reply: str) -> None:
        accepted = reply.startswith("2")
        if accepted:
            self.accepted += 1
            if self.discard:
                return
        content = envelope.original_content or b""
        auth = session.auth_data
        item = Received(
            conn_id=server.conn_id if isinstance(server, _RelaySMTP) else 0,
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=content,
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_options),
            login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            tls=session.ssl is not None or self.implicit_tls,
            reply=reply,
        )
        (self.messages if accepted else self.refused).append(item)


@pytest.fixture
def relay() -> Iterator[Relay]:
    """A started plain relay that accepts everything."""
    with Relay() as started:
        yield started


@pytest.fixture
def make_relay() -> Iterator[Callable[..., Relay]]:
    """make_relay(**options) -> a started Relay; all are stopped at teardown."""
    started: list[Relay] = []

    def factory(**options: Any) -> Relay:
        instance = Relay(**options).start()
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()
