"""SMTP delivery: a per-account pool of aiosmtplib connections.

Connections are keyed by (tenant_id, account_id) and never shared between accounts, so an
authenticated connection only ever carries its own account's mail (contract §9.6). Every
driver exception is translated here into TemporaryFailure or PermanentFailure (§9.4); nothing
from aiosmtplib or the socket layer leaves this module.

The reuse path is kept to MAIL/RCPT/DATA: a connection used less than a second ago is trusted,
one idle for longer is checked with NOOP first.

The transaction is driven through delivery_pipe: MAIL, every RCPT and DATA in one write when
the relay advertises PIPELINING (RFC 2920), else one command per round trip with aiosmtplib's
execute_command. On a pipelining relay a connection goes back to the pool as soon as a
transaction's content is out: the next message's commands follow it in the same stream while
the first still waits for its reply. The message is normalised and dot-stuffed here once, where
mail()/rcpt()/data() would parse every address and rescan the content again (about a fifth
of the CPU per message). aiosmtplib is pinned; tests/integration/test_delivery.py holds the
behaviour (byte-for-byte content, dot-stuffing, replies at each step) against a real relay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence

import aiosmtplib

from mailproxy.delivery_pipe import Exchange, OneByOne, Pipeline
from mailproxy.errors import (
    DeliveryError,
    PermanentFailure,
    RecipientFailure,
    TemporaryFailure,
    UnknownHost,
)
from mailproxy.model import Account
from mailproxy.policy import smtp_code_text

log = logging.getLogger(__name__)

IMPLICIT_TLS_PORT = 465
NOOP_AFTER_IDLE = 1.0
NOOP_TIMEOUT = 5.0
RSET_TIMEOUT = 5.0
QUIT_TIMEOUT = 2.0

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUOTED_LOCAL = re.compile(r'"(?:\\.|[^"\\])*"')  # a quoted-string local part may hold them:
_BREAKS_COMMAND = re.compile(r'[\s<>"]')  # would end the address or add ESMTP parameters
_LOST_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError)

ConnParams = tuple[str, int, str | None, str | None, bool | None]
# Looks a relay host up before connecting; raises socket.gaierror when it cannot.
Resolver = Callable[[str, int], Awaitable[object]]
# getaddrinfo answers meaning "this name does not exist / has no address" (NXDOMAIN,
# NODATA), as opposed to EAI_AGAIN and the like, which a later try may not meet.
_NO_SUCH_HOST = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None)


async def system_resolver(host: str, port: int) -> object:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _params(account: Account) -> ConnParams:
    """What a connection depends on; a change means the old connections are wrong."""
    return (account.host, account.port, account.user, account.password, account.use_tls)


def _has_credentials(account: Account) -> bool:
    return bool(account.user) and bool(account.password)


def _normalise(data: bytes) -> bytes:
    """CRLF line ends and a final CRLF, as transmitted; makes SIZE exact."""
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r"):
        data = _LINE_ENDS.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


Pieces = tuple[bytes, ...]


def _pieces(data: bytes | Sequence[bytes], crlf: bool) -> Pieces:
    """The message as the pieces to transmit: as given when the caller vouches for CRLF line
    ends (composed mail, not joined into one copy), else normalised in one piece."""
    pieces = (data,) if isinstance(data, bytes) else tuple(p for p in data if p)
    if crlf and pieces and pieces[-1].endswith(b"\r\n"):
        return pieces
    return (_normalise(b"".join(pieces)),)


def _starts_a_line_with_dot(pieces: Pieces) -> bool:
    """Whether any line of the CRLF message begins with a dot: a search for LF + dot in
    each piece (a C substring search, a few microseconds for a 2 KB message however many
    dots its text holds), and a look at where one piece meets the next."""
    line_start = True  # the message begins a line
    for piece in pieces:
        if (line_start and piece[:1] == b".") or b"\n." in piece:
            return True
        line_start = piece.endswith(b"\n")
    return False


def _data_content(pieces: Pieces) -> list[bytes]:
    """What follows DATA's 354: a second dot on lines starting with one, then the end mark,
    as pieces written together (nothing is copied to append the mark)."""
    if not _starts_a_line_with_dot(pieces):
        return [*pieces, b".\r\n"]
    stuffed = b"".join(pieces).replace(b"\r\n.", b"\r\n..")
    return [b"." if stuffed.startswith(b".") else b"", stuffed, b".\r\n"]


def _check_addresses(sender: str, recipients: Sequence[str], smtputf8: bool) -> None:
    if not recipients:
        raise PermanentFailure("no recipients")
    for address in (sender, *recipients):
        quoted = _QUOTED_LOCAL.match(address) if address.startswith('"') else None
        unquoted = address[quoted.end():] if quoted else address
        if (_CONTROL.search(address) or _BREAKS_COMMAND.search(unquoted)
                or (not smtputf8 and not address.isascii())):
            raise PermanentFailure(f"invalid address {address!r}")


def _reply_failure(code: int, message: str) -> DeliveryError:
    """4xx and unrecognised replies are worth a retry; 5xx are not."""
    text = smtp_code_text(code, message)
    if 500 <= code < 600:
        return PermanentFailure(text, code=code)
    return TemporaryFailure(text, code=code if code > 0 else None)


def _all_refused(refused: Sequence[RecipientFailure]) -> DeliveryError:
    """No recipient accepted: temporary if any refusal was 4xx, else permanent."""
    temporary = [r for r in refused if r.code is not None and 400 <= r.code < 500]
    first = temporary[0] if temporary else refused[0]
    text = smtp_code_text(first.code, first.reason)
    kind = TemporaryFailure if temporary else PermanentFailure
    return kind(text, code=first.code, recipients=tuple(refused))


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS or certificate error behind `exc`, if any (aiosmtplib wraps them)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError) and not isinstance(current, _LOST_TLS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _failure(exc: Exception, where: str) -> DeliveryError:
    """Classify a driver exception (contract §9.4)."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_failure(exc.code, exc.message)
    tls = _tls_error(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return PermanentFailure(f"TLS certificate rejected {where}: {tls.verify_message}")
    if tls is not None:
        return PermanentFailure(f"TLS error {where}: {tls.reason or tls}")
    if isinstance(exc, TimeoutError):
        return TemporaryFailure(f"timed out {where}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return TemporaryFailure(" ".join(exc.message.split()))
    if isinstance(exc, ConnectionError | aiosmtplib.SMTPServerDisconnected):
        return TemporaryFailure(f"connection lost {where}")
    if isinstance(exc, OSError):
        return TemporaryFailure(f"network error {where}: {exc}")
    log.warning("unexpected error %s", where, exc_info=exc)
    return TemporaryFailure(f"unexpected error {where}: {type(exc).__name__}: {exc}")


def _abort(smtp: aiosmtplib.SMTP) -> None:
    """Close at once, without QUIT; the socket is released on the next loop iteration."""
    transport = smtp.transport
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    smtp.close()


async def _hello(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        if not (500 <= exc.code < 600 and smtp.is_connected):
            raise
        await smtp.helo()


async def _login(smtp: aiosmtplib.SMTP, account: Account) -> None:
    assert account.user is not None and account.password is not None
    if not smtp.supports_extension("auth"):
        raise PermanentFailure("relay does not offer AUTH")
    if not smtp.supported_auth_methods:
        raise PermanentFailure("relay offers no supported AUTH mechanism")
    await smtp.login(account.user, account.password)


class _Conn:
    """One pooled connection and what its relay advertised."""

    __slots__ = ("broken", "chunking", "eightbit", "last_used", "pipe", "pipelining", "size",
                 "smtp", "smtputf8", "uses")

    def __init__(self, smtp: aiosmtplib.SMTP, now: float) -> None:
        self.smtp = smtp
        self.last_used = now
        self.uses = 0
        self.broken = False
        self.smtputf8 = smtp.supports_extension("smtputf8")
        self.eightbit = smtp.supports_extension("8bitmime")
        self.size = smtp.supports_extension("size")
        self.pipelining = smtp.supports_extension("pipelining")
        self.chunking = smtp.supports_extension("chunking")
        self.pipe: Pipeline | None = None  # holds the transport once pipelined on

    def exchange(self) -> Exchange:
        if not self.pipelining:
            return OneByOne(self.smtp)
        if self.pipe is None:
            self.pipe = Pipeline(self.smtp)
        return self.pipe.transaction()

    @property
    def owed(self) -> int:
        """Replies written for on this connection that have not arrived yet."""
        return 0 if self.pipe is None else self.pipe.owed

    @property
    def waits_on_earlier(self) -> bool:
        """Whether a send that gave this connection back still waits for its content reply."""
        return self.pipe is not None and self.pipe.waits_on_earlier

    async def command(self, command: str) -> None:
        """NOOP or RSET, through the pipeline if the connection has one; raises on a reply
        other than 250."""
        if self.pipe is None:
            reply = await self.smtp.execute_command(command.encode("ascii"))
        else:
            reply = await self.pipe.command(command.encode("ascii"))
        if reply.code != 250:
            raise aiosmtplib.SMTPResponseException(reply.code, reply.message)


class _AccountPool:
    """Connections of one account: idle ones (oldest first) and a bound on the total."""

    __slots__ = ("account", "busy", "idle", "params", "retired", "slots", "sweeper")

    def __init__(self, account: Account, size: int) -> None:
        self.account = account
        self.params = _params(account)
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.slots = asyncio.Semaphore(size)
        self.retired = False
        self.sweeper: asyncio.TimerHandle | None = None

    def retire(self) -> list[_Conn]:
        """Stop reusing; hand back the idle connections. Busy ones close on release."""
        self.retired = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        idle, self.idle = self.idle, []
        return idle


class SmtpPool:
    """Sends messages over pooled SMTP connections, one pool per account."""

    def __init__(
        self,
        *,
        pool_size: int = 5,
        pool_wait: float = 30,
        connect_timeout: float = 15,
        send_timeout: float = 30,
        tls_verify: bool = True,
        local_hostname: str | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._resolver = resolver
        self._pool_size = max(1, pool_size)
        self._pool_wait = pool_wait
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._tls_verify = tls_verify
        self._local_hostname = local_hostname
        self._tls_context: ssl.SSLContext | None = None
        self._pools: dict[tuple[str, str], _AccountPool] = {}
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    async def send(
        self,
        account: Account,
        sender: str,
        recipients: Sequence[str],
        data: bytes | Sequence[bytes],
        *,
        smtputf8: bool = False,
        eightbit: bool = False,
        crlf: bool = False,
    ) -> tuple[RecipientFailure, ...]:
        """Send one message (bytes, or the pieces of it); return the refused recipients when
        only some were refused.

        `crlf`: the caller vouches that `data` has CRLF line ends only (as compose makes
        them), so it is neither scanned for line ends again nor joined: half the CPU of a
        message carrying a 200 KB attachment. Raises TemporaryFailure or PermanentFailure,
        with per-recipient detail when every recipient was refused.
        """
        _check_addresses(sender, recipients, smtputf8)
        payload = _pieces(data, crlf)
        retried = False
        while True:
            lease = _Lease(self._release, *await self._acquire(account))
            try:
                return await self._deliver(lease.conn, sender, recipients, payload, smtputf8,
                                           eightbit, lease.give_back)
            except _StaleConnection as stale:
                # A reused connection died before the relay answered anything: nothing was
                # accepted, so one more try on another connection is safe.
                if retried:
                    raise stale.failure from None
                retried = True
            finally:
                lease.end()

    def discard(self, tenant_id: str, account_id: str) -> None:
        """Forget an account's connections (account updated or deleted)."""
        pool = self._pools.pop((tenant_id, account_id), None)
        if pool is not None:
            for conn in pool.retire():
                if conn.owed:  # closed by its transaction once the reply it waits for is in
                    conn.broken = True
                else:
                    _abort(conn.smtp)

    async def close(self) -> None:
        """Close every connection: QUIT the idle ones, abort those still in use."""
        self._closed = True
        pools = list(self._pools.values())
        self._pools.clear()
        idle: list[_Conn] = []
        for pool in pools:
            idle.extend(pool.retire())
            for conn in list(pool.busy):
                conn.broken = True
                _abort(conn.smtp)
        for conn in [conn for conn in idle if conn.owed]:  # a reply still on its way
            idle.remove(conn)
            _abort(conn.smtp)
        await asyncio.gather(*(self._quit(conn) for conn in idle))
        # Let the transports run their connection_lost callbacks before the caller moves on.
        await asyncio.sleep(0)

    # -- pool -------------------------------------------------------------------------------

    def _pool_for(self, account: Account) -> _AccountPool:
        key = (account.tenant_id, account.id)
        pool = self._pools.get(key)
        if pool is not None and pool.account is account:
            return pool
        if pool is not None and pool.params == _params(account):
            pool.account = account  # e.g. a new ttl; the connections still fit
            return pool
        if pool is not None:
            self.discard(*key)
        pool = _AccountPool(account, self._pool_size)
        self._pools[key] = pool
        return pool

    async def _acquire(self, account: Account) -> tuple[_AccountPool, _Conn]:
        while True:
            if self._closed:
                raise TemporaryFailure("delivery is shutting down")
            pool = self._pool_for(account)
            await self._take_slot(pool)
            if pool.retired:
                pool.slots.release()
                continue
            try:
                conn = await self._checkout(pool)
            except BaseException:
                pool.slots.release()
                raise
            pool.busy.add(conn)
            return pool, conn

    async def _take_slot(self, pool: _AccountPool) -> None:
        if not pool.slots.locked():
            await pool.slots.acquire()
            return
        try:
            async with asyncio.timeout(self._pool_wait):
                await pool.slots.acquire()
        except TimeoutError:
            raise TemporaryFailure("timed out waiting for a free relay connection") from None

    async def _checkout(self, pool: _AccountPool) -> _Conn:
        """The most recently used live idle connection, or a new one."""
        now = asyncio.get_running_loop().time()
        while pool.idle:
            conn = pool.idle.pop()
            idle_for = now - conn.last_used
            if not conn.smtp.is_connected or conn.broken or (
                    idle_for > pool.account.ttl and not conn.owed):
                _abort(conn.smtp)
                continue
            # A connection still owed the reply to a content is mid-exchange, not idle: a NOOP
            # would queue behind that reply (a relay may scan a content for seconds) and, timing
            # out, close the connection under the transaction that waits for it.
            if idle_for > NOOP_AFTER_IDLE and not conn.owed and not await self._alive(conn):
                continue
            conn.uses += 1
            return conn
        return await self._open(pool.account)

    def _release(self, pool: _AccountPool, conn: _Conn, early: bool = False) -> bool:
        """Back to the idle connections, or closed; the slot is freed. `early`: a send whose
        content is out offers it while it waits for the reply; a connection that would not
        be kept stays with that send (and its slot) until the send ends. False if so."""
        keep = (not (conn.broken or pool.retired) and pool.account.ttl > 0
                and conn.smtp.is_connected)
        if early and not keep:
            return False
        pool.busy.discard(conn)
        if keep:
            loop = asyncio.get_running_loop()
            conn.last_used = loop.time()
            pool.idle.append(conn)
            if pool.sweeper is None:
                pool.sweeper = loop.call_at(conn.last_used + pool.account.ttl, self._sweep, pool)
        elif conn.waits_on_earlier:
            # e.g. a send written behind another, cancelled before the relay got to it: the
            # one ahead has its whole content out and awaits the reply; it closes the
            # connection once that is in (_Lease.end). Until then the pool may hold one
            # connection more than its size.
            conn.broken = True
        else:
            _abort(conn.smtp)
        pool.slots.release()
        return True

    def _sweep(self, pool: _AccountPool) -> None:
        """Close idle connections unused for longer than the account ttl. One still owed the
        reply to a content is mid-exchange: looked at again a ttl later."""
        pool.sweeper = None
        loop = asyncio.get_running_loop()
        now, ttl = loop.time(), pool.account.ttl
        for conn in [c for c in pool.idle if c.last_used <= now - ttl and not c.owed]:
            pool.idle.remove(conn)
            _abort(conn.smtp)
        if pool.idle and not pool.retired:
            when = min(now + max(ttl, NOOP_AFTER_IDLE) if c.owed else c.last_used + ttl
                       for c in pool.idle)
            pool.sweeper = loop.call_at(when, self._sweep, pool)

    @staticmethod
    async def _alive(conn: _Conn) -> bool:
        try:
            async with asyncio.timeout(NOOP_TIMEOUT):
                await conn.command("NOOP")
        except Exception:
            _abort(conn.smtp)
            return False
        return True

    @staticmethod
    async def _quit(conn: _Conn) -> None:
        transport = conn.smtp.transport
        if conn.pipe is not None:
            conn.pipe.release()
        try:
            async with asyncio.timeout(QUIT_TIMEOUT):
                await conn.smtp.quit()
        except Exception:
            log.debug("QUIT failed; closing anyway", exc_info=True)
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        conn.smtp.close()

    # -- connecting -------------------------------------------------------------------------

    async def _open(self, account: Account) -> _Conn:
        """Connect, secure and log in within connect_timeout (contract §9.6)."""
        implicit = account.use_tls is not False and account.port == IMPLICIT_TLS_PORT
        context = await self._context() if account.use_tls is not False else None
        smtp = aiosmtplib.SMTP(
            hostname=account.host,
            port=account.port,
            local_hostname=await self._hostname(),
            timeout=None,
            use_tls=implicit,
            start_tls=False,
            tls_context=context,
        )
        where = f"connecting to {account.host}:{account.port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._resolve(account)
                await smtp.connect()
                await _hello(smtp)
                if context is not None and not implicit:
                    await self._starttls(smtp, account, context)
                if _has_credentials(account):
                    await _login(smtp, account)
        except DeliveryError:
            _abort(smtp)
            raise
        except Exception as exc:
            _abort(smtp)
            raise _failure(exc, where) from exc
        except BaseException:
            _abort(smtp)
            raise
        log.debug("connected to %s:%s for %s/%s", account.host, account.port, *account.key)
        return _Conn(smtp, asyncio.get_running_loop().time())

    async def _resolve(self, account: Account) -> None:
        """Tell a host name that does not exist (UnknownHost) from other connection errors:
        it is a mistake in the account, not an outage worth five retries over hours."""
        if _is_ip(account.host):
            return
        try:
            await self._resolver(account.host, account.port)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_HOST:
                raise UnknownHost(f"relay host {account.host} does not exist "
                                  f"(DNS: {exc.strerror})") from exc
            raise

    @staticmethod
    async def _starttls(smtp: aiosmtplib.SMTP, account: Account, context: ssl.SSLContext) -> None:
        if not smtp.supports_extension("starttls"):
            # use_tls None only upgrades when offered, but never logs in in clear text.
            if account.use_tls or _has_credentials(account):
                raise PermanentFailure("relay does not offer STARTTLS")
            return
        await smtp.starttls(tls_context=context)
        await _hello(smtp)

    async def _context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            if self._tls_verify:
                # Loading the system CA store blocks for a while: do it once, off the loop.
                self._tls_context = await asyncio.to_thread(ssl.create_default_context)
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                self._tls_context = context
        return self._tls_context

    async def _hostname(self) -> str:
        if self._local_hostname is None:
            name = await asyncio.to_thread(socket.getfqdn)
            self._local_hostname = name if name.isascii() and name else "localhost"
        return self._local_hostname

    # -- one transaction --------------------------------------------------------------------

    async def _deliver(
        self,
        conn: _Conn,
        sender: str,
        recipients: Sequence[str],
        payload: Pieces,
        smtputf8: bool,
        eightbit: bool,
        handoff: Callable[[], None],
    ) -> tuple[RecipientFailure, ...]:
        if smtputf8 and not conn.smtputf8:
            raise PermanentFailure("relay does not support SMTPUTF8")
        if eightbit and not conn.eightbit:
            raise PermanentFailure("relay does not support 8BITMIME")
        options = [f"SIZE={sum(map(len, payload))}"] if conn.size else []
        if eightbit:
            options.append("BODY=8BITMIME")
        if smtputf8:
            options.append("SMTPUTF8")
        progress = _Progress()
        try:
            return await self._transfer(conn, sender, recipients, payload, options, progress,
                                        handoff)
        except DeliveryError:
            await self._reset(conn, progress)
            raise
        except _StaleConnection:
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == -1:  # a reply we could not read: the stream may be out of step
                conn.broken = True
            else:
                await self._reset(conn, progress)
            raise _reply_failure(exc.code, exc.message) from exc
        except Exception as exc:
            conn.broken = True
            failure = _failure(exc, "sending to relay")
            if conn.uses > 0 and progress.replies == 0 and isinstance(exc, ConnectionError):
                raise _StaleConnection(failure) from exc
            raise failure from exc
        except BaseException:
            conn.broken = True
            raise

    async def _transfer(
        self,
        conn: _Conn,
        sender: str,
        recipients: Sequence[str],
        payload: Pieces,
        options: list[str],
        progress: _Progress,
        handoff: Callable[[], None],
    ) -> tuple[RecipientFailure, ...]:
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        # The commands are built here, not by aiosmtplib's mail()/rcpt(): the addresses are
        # bare addr-specs already checked by _check_addresses, which email.utils would only
        # parse again (a measurable share of the CPU per message).
        mail = b" ".join([b"MAIL FROM:<" + sender.encode(encoding) + b">",
                          *(option.encode("ascii") for option in options)])
        rcpts = [b"RCPT TO:<" + address.encode(encoding) + b">" for address in recipients]
        # With CHUNKING (RFC 3030) the content goes out in the same write as the commands,
        # length-delimited by BDAT: one round trip. Otherwise it follows DATA's 354.
        chunked = conn.pipelining and conn.chunking
        last, tail = ((b"BDAT %d LAST" % sum(map(len, payload)), payload) if chunked
                      else (b"DATA", ()))
        async with asyncio.timeout(self._send_timeout) as deadline:
            exchange = conn.exchange()
            commands = [mail, *rcpts, last]
            exchange.send([b"RSET", *commands] if exchange.reset else commands, tail)
            if exchange.behind:
                # The send ahead bounds this wait (it gives up at its own deadline, before
                # ours); the relay starts on this one once it has answered that content, and
                # from then on this one has the whole send_timeout.
                await exchange.after_previous()
                deadline.reschedule(asyncio.get_running_loop().time() + self._send_timeout)
            try:
                if exchange.reset:
                    await _rset_reply(exchange, conn)
                refused = await _envelope(exchange, conn.smtp, recipients, progress,
                                          250 if chunked else 354)
            except (DeliveryError, aiosmtplib.SMTPResponseException) as exc:
                if not await exchange.settle():
                    conn.broken = True
                if (exchange.behind and progress.replies == 0
                        and getattr(exc, "code", None) == 503):
                    # Refused as nested in a transaction that the relay kept open after
                    # refusing the content this one was written behind (its RCPT and
                    # DATA may have gone into that transaction): nothing of this message
                    # was sent, so it goes again on another connection.
                    conn.broken = True
                    raise _StaleConnection(TemporaryFailure(
                        "relay out of step after refusing the message before")) from exc
                raise
            if not chunked:
                exchange.send_content(_data_content(payload))
                if exchange.overlaps:
                    # The transaction ends with the next reply whatever it says (a refusal
                    # makes the next transaction begin with RSET): the connection can take
                    # the next transaction's commands now.
                    progress.mail_accepted = False
                    handoff()
                reply = await exchange.reply()
                if reply.code != 250:
                    raise _reply_failure(reply.code, reply.message)
        progress.mail_accepted = False
        return refused

    async def _reset(self, conn: _Conn, progress: _Progress) -> None:
        """After a refusal the connection stays usable; RSET if a transaction is open."""
        if conn.broken or not conn.smtp.is_connected:  # out of step: closed, not reset
            conn.broken = True
            return
        if not progress.mail_accepted:
            return
        try:
            async with asyncio.timeout(RSET_TIMEOUT):
                await conn.command("RSET")
        except Exception:
            conn.broken = True


async def _rset_reply(exchange: Exchange, conn: _Conn) -> None:
    reply = await exchange.reply()
    if reply.code != 250:
        conn.broken = True
        raise TemporaryFailure(f"relay refused RSET: {smtp_code_text(reply.code, reply.message)}")


async def _envelope(
    exchange: Exchange, smtp: aiosmtplib.SMTP, recipients: Sequence[str], progress: _Progress,
    last_code: int,
) -> tuple[RecipientFailure, ...]:
    """The replies to MAIL, each RCPT and the last command (DATA: 354, BDAT LAST: 250), in
    order; the refused recipients."""
    reply = await exchange.reply()
    if reply.code != 250:
        raise _reply_failure(reply.code, reply.message)
    progress.replies += 1
    progress.mail_accepted = True
    refused: list[RecipientFailure] = []
    for address in recipients:
        reply = await exchange.reply()
        if reply.code not in (250, 251):
            if not smtp.is_connected:  # 421: the relay is closing the session
                raise _reply_failure(reply.code, reply.message)
            refused.append(RecipientFailure(address, reply.code, " ".join(reply.message.split())))
        progress.replies += 1
    if len(refused) == len(recipients):
        raise _all_refused(refused)
    reply = await exchange.reply()
    if reply.code != last_code:
        raise _reply_failure(reply.code, reply.message)
    return tuple(refused)


class _Lease:
    """A connection taken from its pool for one send, given back once: when the send ends,
    or as soon as its content is out (give_back) for the next send to write behind it."""

    __slots__ = ("conn", "pool", "release", "returned")

    def __init__(self, release: Callable[[_AccountPool, _Conn, bool], bool],
                 pool: _AccountPool, conn: _Conn) -> None:
        self.release = release
        self.pool = pool
        self.conn = conn
        self.returned = False

    def give_back(self) -> None:
        if not self.returned:
            self.returned = self.release(self.pool, self.conn, True)

    def end(self) -> None:
        if not self.returned:
            self.release(self.pool, self.conn, False)
        elif self.conn.broken:  # back in the pool already: closed under whoever holds it
            _abort(self.conn.smtp)


class _Progress:
    """How far a transaction got, to decide on RSET and on a safe retry."""

    __slots__ = ("mail_accepted", "replies")

    def __init__(self) -> None:
        self.replies = 0
        self.mail_accepted = False


class _StaleConnection(Exception):
    """A reused connection failed before the relay answered anything."""

    def __init__(self, failure: DeliveryError) -> None:
        super().__init__(failure.message)
        self.failure = failure
