"""SMTP submission listener (contract §13): aiosmtpd's protocol in the app's own event loop.

Thin by design: every decision is a call to SmtpSubmission, whose results map to replies
here. aiosmtpd is used through its documented extension points (handler hooks, auth_*
mechanisms, _create_session/_create_envelope) plus `push`, where the few replies that
aiosmtpd words by itself get the enhanced status codes of §13.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from mailproxy.errors import ConfigError, StoreError
from mailproxy.ingress.smtp_data import read_data
from mailproxy.submission import (
    Acceptance,
    AuthThrottle,
    Login,
    RecipientVerdict,
    Sender,
    SenderVerdict,
    SmtpSubmission,
)

log = logging.getLogger("mailproxy.smtp")
PROTOCOL_LOGGER = "mail.log"  # aiosmtpd's logger; below INFO it would log AUTH exchanges

TOO_MANY_FAILURES = "421 4.7.0 Too many failed attempts"
LOCAL_ERROR = "451 4.3.0 Local error, message not queued; try again later"
STORAGE_ERROR = "451 4.3.0 Storage unavailable, message not queued; try again later"
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
SUPPRESSED = "550 5.7.1 Recipient address is on the suppression list"

# aiosmtpd answers these itself, without enhanced codes (or, for a path it cannot parse,
# with 553 where §13 asks for 501).
_REWORDED = {
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "553 5.1.3 Error: malformed address": "501 5.1.3 Malformed address",
}
# `<dot-atom@dot-atom> params`: what the email parser would return unchanged.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+"
_SIMPLE_PATH = re.compile(rf"\s*<({_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>(.*)\Z", re.S)
_SENDER_REPLY = {
    SenderVerdict.MALFORMED: "501 5.1.3 Malformed sender address",
    SenderVerdict.UNKNOWN_ACCOUNT: "550 5.7.1 Unknown account",
    SenderVerdict.INACTIVE_TENANT: "550 5.7.1 Tenant is not active",
}
_RECIPIENT_REPLY = {
    RecipientVerdict.OK: "250 2.1.5 OK",
    RecipientVerdict.MALFORMED: "501 5.1.3 Malformed recipient address",
    RecipientVerdict.TOO_MANY: "452 4.5.3 Too many recipients",
}


def _data_reply(status: Acceptance, client_id: str | None, detail: str | None) -> str:
    if status is Acceptance.QUEUED:
        return f"250 2.0.0 Queued as {client_id}"
    if status is Acceptance.ALREADY_ACCEPTED:
        return f"250 2.0.0 Already accepted as {client_id}"
    if status is Acceptance.BEING_SENT:
        return "451 4.3.0 message is being sent"
    if status is Acceptance.INVALID_CONTROL:
        return f"554 5.6.0 Invalid control header value: {detail}"
    return "552 5.3.4 Message size exceeds fixed maximum message size"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class _Session(Session):
    """aiosmtpd's Session without its deprecation log line on every successful AUTH."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.last_sender: Sender | None = None

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _Envelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.sender: Sender | None = None


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    host: str
    port: int
    tls_port: int
    tls_context: ssl.SSLContext | None
    plain_auth: bool
    max_size: int
    auth_fail_delay: float
    hostname: str


class _Handler:
    """aiosmtpd handler hooks: each one asks the submission service and maps its answer."""

    def __init__(self, submission: SmtpSubmission) -> None:
        self.submission = submission

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a custom EHLO hook
        out = []
        for line in responses:
            if line[4:].upper().startswith("AUTH "):
                line = line[:4] + "AUTH PLAIN LOGIN"
            elif line[4:] == "HELP":
                out.append("250-PIPELINING")
            out.append(line)
        return out

    async def handle_MAIL(
        self, server: SMTP, session: _Session, envelope: _Envelope, address: str,
        options: list[str],
    ) -> str:
        login = session.auth_data
        if not session.authenticated or not isinstance(login, Login):
            return AUTH_REQUIRED
        path = "" if address == "<>" else address
        try:
            verdict, sender = await self.submission.sender(
                login, path, envelope.smtp_utf8, session.last_sender)
        except StoreError as exc:
            log.error("SMTP MAIL FROM: storage failure: %s", exc)
            return STORAGE_ERROR
        if sender is None:
            return _SENDER_REPLY[verdict]
        envelope.sender = session.last_sender = sender
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: _Envelope, address: str,
        options: list[str],
    ) -> str:
        verdict = self.submission.recipient(address, envelope.smtp_utf8, len(envelope.rcpt_tos))
        if verdict is RecipientVerdict.OK and envelope.sender is not None:
            try:
                if await self.submission.suppressed(envelope.sender, address):
                    return SUPPRESSED
            except StoreError as exc:
                log.error("SMTP RCPT TO: storage failure: %s", exc)
                return STORAGE_ERROR
        if verdict is RecipientVerdict.OK:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return _RECIPIENT_REPLY[verdict]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: _Envelope) -> str:
        if envelope.sender is None:  # cannot happen: MAIL FROM was accepted
            return "503 5.5.1 Error: need MAIL command"
        raw = envelope.original_content or b""
        try:
            result = await self.submission.submit(envelope.sender, envelope.rcpt_tos, raw)
        except StoreError as exc:
            log.error("SMTP DATA: storage failure, message not queued: %s", exc)
            return STORAGE_ERROR
        return _data_reply(result.status, result.client_id, result.detail)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s: %s", type(error).__name__, error, exc_info=error)
        return LOCAL_ERROR


class SubmissionSMTP(SMTP):
    """One submission session. AUTH is verified asynchronously against the store."""

    def __init__(self, listener: SmtpListener, *, implicit_tls: bool) -> None:
        config = listener.config
        super().__init__(
            listener.handler,
            data_size_limit=config.max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.hostname,
            ident="mail-proxy ESMTP",
            tls_context=None if implicit_tls else config.tls_context,
            # aiosmtpd only knows STARTTLS; an implicit-TLS session is encrypted already.
            auth_require_tls=not (config.plain_auth or implicit_tls),
            loop=asyncio.get_running_loop(),
        )
        self.listener = listener

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def _create_envelope(self) -> Envelope:
        return _Envelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.listener.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.listener.sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            await super().push(_REWORDED.get(status, status))
        else:
            await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd parses every path with the `email` header parser (about 0.2 ms); the
        usual `<local@domain> [params]` takes a regex, anything else the parser."""
        match = _SIMPLE_PATH.match(arg)
        if match is None:
            result: tuple[str | None, str | None] = super()._getaddr(arg)
            return result
        return match.group(1), match.group(2)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the content read in blocks (smtp_data.read_data), not line
        by line; the checks before it, the replies and the handler call are aiosmtpd's."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            read = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if read.refusal is not None:
            await self.push(read.refusal)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = read.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    @property
    def client_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self.listener.throttle.blocked(self.client_ip):
            await self.push(TOO_MANY_FAILURES)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """Called by the built-in mechanisms once they decoded the credentials: only hand
        them back; auth_PLAIN/auth_LOGIN below verify them without blocking the loop."""
        return AuthResult(success=True, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, decoded: AuthResult) -> AuthResult:
        credentials = decoded.auth_data
        if not decoded.success or not isinstance(credentials, LoginPassword):
            return decoded  # aiosmtpd already answered (bad base64, '*' abort)
        try:
            login = await self.listener.submission.login(
                _text(credentials.login), _text(credentials.password))
        except StoreError as exc:
            log.error("SMTP AUTH: storage failure: %s", exc)
            return AuthResult(success=False, handled=False, message=AUTH_UNAVAILABLE)
        if login is not None:
            return AuthResult(success=True, auth_data=login)
        self.listener.throttle.failed(self.client_ip)
        await asyncio.sleep(self.listener.config.auth_fail_delay)
        return AuthResult(success=False, handled=False, message=AUTH_INVALID)


class SmtpListener:
    """The listening sockets and the live sessions, started and stopped with the app."""

    def __init__(
        self, submission: SmtpSubmission, throttle: AuthThrottle, config: ListenerConfig
    ) -> None:
        self.submission = submission
        self.throttle = throttle
        self.config = config
        self.handler = _Handler(submission)
        self.sessions: set[SubmissionSMTP] = set()
        self._servers: list[asyncio.Server] = []

    @property
    def serving(self) -> bool:
        """Whether a listening socket is open (the dashboard shows it)."""
        return any(server.is_serving() for server in self._servers)

    async def start(self) -> None:
        _quiet_protocol_logger()
        config = self.config
        loop = asyncio.get_running_loop()
        endpoints: list[tuple[int, ssl.SSLContext | None]] = []
        if config.port:
            endpoints.append((config.port, None))
        if config.tls_port and config.tls_context is not None:
            endpoints.append((config.tls_port, config.tls_context))
        elif config.tls_port:
            log.warning("GMP_SMTP_TLS_PORT is set but GMP_SMTP_TLS_CERT/GMP_SMTP_TLS_KEY are "
                        "not: the implicit-TLS listener stays off")
        for port, context in endpoints:
            implicit = context is not None
            try:
                server = await loop.create_server(
                    lambda implicit=implicit: SubmissionSMTP(self, implicit_tls=implicit),
                    config.host, port, ssl=context, reuse_address=True,
                )
            except OSError as exc:
                await self.stop()
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise ConfigError(f"cannot listen for SMTP on {config.host}:{port}: {reason}"
                                  ) from None
            self._servers.append(server)
            log.info("SMTP submission listening on %s:%d%s", config.host, port,
                     " (implicit TLS)" if implicit else "")
        if config.tls_context is None and not config.plain_auth:
            log.warning(
                "SMTP listener on %s has no certificate (GMP_SMTP_TLS_CERT/GMP_SMTP_TLS_KEY) "
                "and GMP_SMTP_ALLOW_PLAIN_AUTH is not true: no client can authenticate",
                config.host)

    async def stop(self) -> None:
        """Stop accepting, then hang up open sessions (an unacknowledged message is not
        queued, or is queued and will be answered 'Already accepted' on the retry)."""
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for _ in range(100):
            if not self.sessions:
                break
            await asyncio.sleep(0.01)


def _quiet_protocol_logger() -> None:
    """aiosmtpd logs command lines (and AUTH data) at DEBUG: never below INFO (§13).

    Its INFO lines trace every command, five per message: kept for GMP_LOG_LEVEL=DEBUG,
    otherwise only its warnings pass (at 1,000 msgs/s those lines cost a tenth of a core).
    """
    protocol = logging.getLogger(PROTOCOL_LOGGER)
    if protocol.getEffectiveLevel() <= logging.DEBUG:
        protocol.setLevel(logging.INFO)
    elif protocol.getEffectiveLevel() < logging.WARNING:
        protocol.setLevel(logging.WARNING)


def server_tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The listener's certificate, or None; both files are needed together."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("GMP_SMTP_TLS_CERT and GMP_SMTP_TLS_KEY must be set together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the SMTP certificate {cert}: {exc}") from None
    return context
