"""SMTP submission listener (contract §13), end to end: real clients, the real app in the
test's event loop, the real relay sink behind it."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from mailproxy.errors import StoreError
from tests.conftest import ADMIN, Api, ApiFactory
from tests.relay import HOST, Relay, free_port, make_certificate

WORKTREE = Path(__file__).resolve().parents[2]
SUBMISSION_PASSWORD = "submission-secret"
FAIL_DELAY = 0.3


@dataclass
class Proxy:
    api: Api
    port: int
    token: str  # the tenant's API token
    relay: Relay

    @property
    def user(self) -> str:
        return "acme/main"


async def start_proxy(make_api: ApiFactory, relay: Relay, **settings: Any) -> Proxy:
    port = free_port()
    values: dict[str, Any] = {
        "smtp_port": port, "smtp_auth_fail_delay_seconds": FAIL_DELAY, **settings,
    }
    api = await make_api(**values)
    token = await api.tenant("acme")
    await api.account(relay, submission_password=SUBMISSION_PASSWORD)
    return Proxy(api, port, token, relay)


@pytest.fixture
async def proxy(make_api: ApiFactory, relay: Relay) -> Proxy:
    return await start_proxy(make_api, relay)


async def connect(port: int, **options: Any) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False, timeout=10, **options)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


async def session(proxy: Proxy, password: str | None = None) -> aiosmtplib.SMTP:
    smtp = await connect(proxy.port)
    await smtp.auth_plain(proxy.user, password or proxy.token)
    return smtp


def plain_blob(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


async def command(smtp: aiosmtplib.SMTP, *parts: str) -> tuple[int, str]:
    response = await smtp.execute_command(*(p.encode() for p in parts))
    return response.code, response.message


def simple(client_id: str | None = None, *, subject: str = "Hello", extra: str = "") -> bytes:
    head = f"X-Mail-Proxy-ID: {client_id}\r\n" if client_id else ""
    return (
        f"{head}{extra}From: sender@acme.test\r\nTo: rcpt@example.org\r\n"
        f"Subject: {subject}\r\n\r\nBody line\r\n"
    ).encode()


async def records(api: Api) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in await api.messages()}


async def wait_status(api: Api, client_id: str, status: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        record = (await records(api)).get(client_id)
        if record is not None and record["status"] == status:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{client_id} never reached {status}: {record}")
        await asyncio.sleep(0.02)


# -- content and envelope ----------------------------------------------------------------

ATTACHMENT = base64.encodebytes(bytes(range(256)) * 12).decode("ascii").splitlines()
MULTIPART_LINES = [
    "From: Jörg Müller <sender@acme.test>",
    "To: Alice <alice@example.org>",
    "Cc: bob@example.org",
    "Bcc: hidden@example.org,",
    " other-hidden@example.org",
    "Subject: Grüße aus Köln",
    "Message-ID: <multipart-1@acme.test>",
    "Date: Thu, 01 Jan 2026 00:00:00 +0000",
    "X-Mail-Proxy-Priority: high",
    "X-Mail-Proxy-Batch: jan",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="b1"',
    "",
    "--b1",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    "Grüße — ein 8-bit Text ✓",
    ".a line that starts with a dot",
    "..and one with two",
    ".",
    "y" * 900,
    "",
    "--b1",
    'Content-Type: application/octet-stream; name="table.bin"',
    "Content-Transfer-Encoding: base64",
    'Content-Disposition: attachment; filename="table.bin"',
    "",
    *ATTACHMENT,
    "--b1--",
    "",
]
# What the relay must see: Bcc (with its continuation) and the control headers cut out.
DELIVERED_LINES = [line for i, line in enumerate(MULTIPART_LINES) if i not in (3, 4, 8, 9)]


def multipart() -> bytes:
    return "\r\n".join(MULTIPART_LINES).encode("utf-8")


def delivered(pk: str, client_id: str) -> bytes:
    head = f"X-Mail-Proxy-ID: {pk}\r\nX-Genro-Mail-ID: {client_id}\r\n"
    return head.encode() + "\r\n".join(DELIVERED_LINES).encode("utf-8")


RECIPIENTS = ["alice@example.org", "bob@example.org", "hidden@example.org"]


async def test_aiosmtplib_multipart_8bit_is_relayed_byte_for_byte(proxy: Proxy) -> None:
    smtp = await session(proxy)
    errors, reply = await smtp.sendmail("bounces@acme.test", RECIPIENTS, multipart(),
                                        mail_options=["BODY=8BITMIME"])
    await smtp.quit()
    assert errors == {}
    assert reply.startswith("2.0.0 Queued as smtp-")
    client_id = reply.removeprefix("2.0.0 Queued as ")
    [got] = await proxy.relay.wait_for(1)
    record = (await records(proxy.api))[client_id]
    assert got.content == delivered(record["pk"], client_id)
    assert got.mail_from == "bounces@acme.test"
    assert list(got.rcpt_tos) == RECIPIENTS
    assert "BODY=8BITMIME" in got.mail_options
    assert b"hidden@example.org" not in got.content


def _smtplib_send(port: int, user: str, password: str, message: bytes) -> dict[str, Any]:
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.ehlo()
        client.user, client.password = user, password
        code, _ = client.auth("LOGIN", client.auth_login)
        assert code == 235
        refused: dict[str, Any] = client.sendmail(
            "bounces@acme.test", RECIPIENTS, message, mail_options=["BODY=8BITMIME"])
        return refused


async def test_stdlib_smtplib_with_login_and_submission_password(proxy: Proxy) -> None:
    refused = await asyncio.to_thread(
        _smtplib_send, proxy.port, proxy.user, SUBMISSION_PASSWORD, multipart())
    assert refused == {}
    [got] = await proxy.relay.wait_for(1)
    [record] = await proxy.api.messages()
    assert got.content == delivered(record["pk"], record["id"])
    assert list(got.rcpt_tos) == RECIPIENTS
    assert "BODY=8BITMIME" in got.mail_options


def _smtplib_utf8(port: int, user: str, password: str) -> None:
    message = "From: Ünïcode <jörg@acme.test>\r\nSubject: ✓\r\n\r\nHallo\r\n".encode()
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.login(user, password)
        client.sendmail("jörg@acme.test", ["zoë@exämple.org"], message,
                        mail_options=["SMTPUTF8", "BODY=8BITMIME"])


async def test_utf8_envelope_is_relayed_with_smtputf8(proxy: Proxy) -> None:
    await asyncio.to_thread(_smtplib_utf8, proxy.port, proxy.user, proxy.token)
    [got] = await proxy.relay.wait_for(1)
    assert got.mail_from == "jörg@acme.test"
    assert list(got.rcpt_tos) == ["zoë@exämple.org"]
    assert "SMTPUTF8" in got.mail_options


async def test_null_sender_and_message_listing_shape(proxy: Proxy) -> None:
    await proxy.api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    smtp = await session(proxy)
    extra = ("X-Mail-Proxy-Priority: high\r\nX-Mail-Proxy-Batch: jan\r\n"
             "X-Mail-Proxy-Deferred-Ts: 4102444800\r\n")
    message = simple("listed-1", subject="=?utf-8?q?Caf=C3=A9?= ok", extra=extra)
    _, reply = await smtp.sendmail("", ["rcpt@example.org", "cc@example.org"], message)
    await smtp.quit()
    assert reply == "2.0.0 Queued as listed-1"
    [record] = await proxy.api.messages()
    assert record["message"] == {
        "id": "listed-1", "tenant_id": "acme", "account_id": "main", "from": "",
        "to": ["rcpt@example.org", "cc@example.org"], "raw_size": len(message),
        "subject": "Café ok",
    }
    assert (record["priority"], record["batch_code"], record["deferred_ts"]) == (1, "jan",
                                                                               4102444800)
    assert record["status"] == "scheduled"
    assert record["suspended"] is True


async def test_suspended_tenant_is_accepted_and_held(proxy: Proxy) -> None:
    await proxy.api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    smtp = await session(proxy)
    _, reply = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("held-1"))
    assert reply == "2.0.0 Queued as held-1"
    await asyncio.sleep(0.3)
    assert proxy.relay.accepted == 0
    await proxy.api.ok("POST", "/commands/activate", params={"tenant_id": "acme"})
    [got] = await proxy.relay.wait_for(1)
    assert got.mail_from == "sender@acme.test"
    assert not {"BODY=8BITMIME", "SMTPUTF8"} & set(got.mail_options)  # plain ASCII
    await smtp.quit()


async def test_null_sender_is_relayed_as_null_sender(proxy: Proxy) -> None:
    smtp = await session(proxy)
    await smtp.sendmail("", ["rcpt@example.org"], simple("null-1"))
    await smtp.quit()
    [got] = await proxy.relay.wait_for(1)
    assert got.mail_from == "<>"  # aiosmtpd records the null path as written


# -- idempotency ---------------------------------------------------------------------------

async def test_resubmitting_a_delivered_id_is_already_accepted_and_sent_once(
    proxy: Proxy,
) -> None:
    smtp = await session(proxy)
    _, first = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("idem-1"))
    assert first == "2.0.0 Queued as idem-1"
    await proxy.relay.wait_for(1)
    await wait_status(proxy.api, "idem-1", "sent")
    _, again = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"],
                                   simple("idem-1", subject="changed"))
    assert again == "2.0.0 Already accepted as idem-1"
    await asyncio.sleep(0.3)
    await smtp.quit()
    assert proxy.relay.accepted == 1
    [record] = await proxy.api.messages()
    assert record["message"]["subject"] == "Hello"


async def test_resubmitting_a_waiting_id_replaces_it(proxy: Proxy) -> None:
    await proxy.api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    smtp = await session(proxy)
    for subject in ("first", "second"):
        _, reply = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"],
                                       simple("upsert-1", subject=subject))
        assert reply == "2.0.0 Queued as upsert-1"
    await smtp.quit()
    [record] = await proxy.api.messages()
    assert record["message"]["subject"] == "second"
    await proxy.api.ok("POST", "/commands/activate", params={"tenant_id": "acme"})
    [got] = await proxy.relay.wait_for(1)
    assert b"Subject: second" in got.content
    await asyncio.sleep(0.2)
    assert proxy.relay.accepted == 1


async def test_resubmitting_an_id_being_sent_gets_451(proxy: Proxy) -> None:
    proxy.relay.stalls["DATA"] = 1.5
    smtp = await session(proxy)
    await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("busy-1"))
    await wait_status(proxy.api, "busy-1", "sending")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("busy-1"))
    assert (refused.value.code, refused.value.message) == (451, "4.3.0 message is being sent")
    await smtp.quit()
    await proxy.relay.wait_for(1)


# -- TLS and AUTH --------------------------------------------------------------------------

async def test_starttls_then_auth_and_no_auth_before_tls(
    make_api: ApiFactory, relay: Relay, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    proxy = await start_proxy(make_api, relay, smtp_tls_cert=str(cert), smtp_tls_key=str(key),
                              smtp_allow_plain_auth=False)
    smtp = await connect(proxy.port)
    assert smtp.supports_extension("starttls")
    assert not smtp.supports_extension("auth")
    code, text = await command(smtp, "AUTH", "PLAIN", plain_blob(proxy.user, proxy.token).decode())
    assert (code, text) == (538, "5.7.11 Encryption required for requested authentication "
                                 "mechanism")
    assert await command(smtp, "MAIL", "FROM:<sender@acme.test>") == (
        530, "5.7.0 Authentication required")
    await smtp.starttls(tls_context=ssl.create_default_context(cafile=str(cert)))
    await smtp.ehlo()
    assert smtp.esmtp_extensions["auth"] == "PLAIN LOGIN"
    assert not smtp.supports_extension("starttls")
    await smtp.auth_plain(proxy.user, proxy.token)
    _, reply = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("tls-1"))
    await smtp.quit()
    assert reply == "2.0.0 Queued as tls-1"
    await relay.wait_for(1)


async def test_implicit_tls_port(make_api: ApiFactory, relay: Relay, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    tls_port = free_port()
    proxy = await start_proxy(make_api, relay, smtp_tls_cert=str(cert), smtp_tls_key=str(key),
                              smtp_allow_plain_auth=False, smtp_tls_port=tls_port,
                              smtp_port=0)  # implicit TLS only
    context = ssl.create_default_context(cafile=str(cert))
    async with aiosmtplib.SMTP(hostname=HOST, port=tls_port, use_tls=True,
                               tls_context=context, timeout=10) as smtp:
        await smtp.ehlo()
        assert not smtp.supports_extension("starttls")
        await smtp.auth_login(proxy.user, SUBMISSION_PASSWORD)
        _, reply = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"],
                                       simple("implicit-1"))
    assert reply == "2.0.0 Queued as implicit-1"
    await relay.wait_for(1)


async def test_ehlo_advertises_the_listener_extensions(proxy: Proxy) -> None:
    smtp = await connect(proxy.port)
    extensions = smtp.esmtp_extensions
    await smtp.quit()
    assert extensions["size"] == "26214400"
    for name in ("8bitmime", "smtputf8", "pipelining"):
        assert name in extensions
    assert extensions["auth"] == "PLAIN LOGIN"  # loopback listener: plain auth allowed
    assert "starttls" not in extensions  # no certificate configured


async def test_mail_before_auth_is_530(proxy: Proxy) -> None:
    smtp = await connect(proxy.port)
    assert await command(smtp, "MAIL", "FROM:<sender@acme.test>") == (
        530, "5.7.0 Authentication required")
    await smtp.quit()


async def test_bad_credentials_are_535_after_the_delay(proxy: Proxy) -> None:
    smtp = await connect(proxy.port)
    for user, password in [(proxy.user, "wrong"), ("acme/main", ADMIN), ("acme", proxy.token),
                           ("other/main", proxy.token)]:
        started = time.monotonic()
        code, text = await command(smtp, "AUTH", "PLAIN", plain_blob(user, password).decode())
        assert (code, text) == (535, "5.7.8 Authentication credentials invalid"), user
        assert time.monotonic() - started >= FAIL_DELAY
    await smtp.quit()


async def test_repeated_failures_get_421_and_the_connection_closed(
    make_api: ApiFactory, relay: Relay
) -> None:
    proxy = await start_proxy(make_api, relay, smtp_auth_max_failures=3,
                              smtp_auth_fail_delay_seconds=0.01)
    smtp = await connect(proxy.port)
    for _ in range(3):
        code, _text = await command(smtp, "AUTH", "PLAIN", plain_blob(proxy.user, "no").decode())
        assert code == 535
    assert await command(smtp, "AUTH", "PLAIN", plain_blob(proxy.user, proxy.token).decode()
                         ) == (421, "4.7.0 Too many failed attempts")
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await smtp.noop()
    other = await connect(proxy.port)  # the same client address, a new connection
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await other.auth_login(proxy.user, proxy.token)
    assert refused.value.code == 421


async def test_unknown_account_and_inactive_tenant_are_550_at_mail(proxy: Proxy) -> None:
    smtp = await session(proxy)
    await proxy.api.ok("DELETE", "/account/main", params={"tenant_id": "acme"})
    # The account went away after AUTH (an unknown pair is refused at AUTH itself).
    assert await command(smtp, "MAIL", "FROM:<sender@acme.test>") == (
        550, "5.7.1 Unknown account")
    await smtp.quit()
    await proxy.api.account(proxy.relay, submission_password=SUBMISSION_PASSWORD)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        smtp = await connect(proxy.port)
        await smtp.auth_plain("acme/nosuch", SUBMISSION_PASSWORD)
    await proxy.api.ok("PUT", "/tenant/acme", json={"active": False})
    smtp = await session(proxy)
    assert await command(smtp, "MAIL", "FROM:<sender@acme.test>") == (
        550, "5.7.1 Tenant is not active")
    await smtp.quit()


# -- envelope and content limits -----------------------------------------------------------

async def test_malformed_addresses_are_501(proxy: Proxy) -> None:
    smtp = await session(proxy)
    assert (await command(smtp, "MAIL", "FROM:<no-at-sign>"))[0] == 501
    assert (await command(smtp, "MAIL", "FROM:<jörg@acme.test>"))[0] == 501  # no SMTPUTF8
    assert await command(smtp, "MAIL", "FROM:<sender@acme.test>") == (250, "2.1.0 OK")
    for bad in ("<not an address>", "<a@-bad-.example>", "<a@b@c>", "<zoë@example.org>"):
        code, text = await command(smtp, "RCPT", f"TO:{bad}")
        assert code == 501, bad
        assert text.startswith("5.1.3"), text
    assert await command(smtp, "RCPT", "TO:<ok@example.org>") == (250, "2.1.5 OK")
    await smtp.quit()


async def test_recipients_beyond_the_limit_are_452(make_api: ApiFactory, relay: Relay) -> None:
    proxy = await start_proxy(make_api, relay, smtp_max_recipients=3)
    smtp = await session(proxy)
    await command(smtp, "MAIL", "FROM:<sender@acme.test>")
    for n in range(3):
        assert (await command(smtp, "RCPT", f"TO:<r{n}@example.org>"))[0] == 250
    assert await command(smtp, "RCPT", "TO:<r3@example.org>") == (
        452, "4.5.3 Too many recipients")
    await smtp.data(simple("limit-1"))
    await smtp.quit()
    [got] = await relay.wait_for(1)
    assert list(got.rcpt_tos) == ["r0@example.org", "r1@example.org", "r2@example.org"]


async def test_oversized_messages_are_552_at_mail_and_at_data(
    make_api: ApiFactory, relay: Relay
) -> None:
    proxy = await start_proxy(make_api, relay, smtp_max_size=10_000)
    smtp = await session(proxy)
    code, text = await command(smtp, "MAIL", "FROM:<sender@acme.test>", "SIZE=20000")
    assert (code, text[:5]) == (552, "5.3.4")
    await smtp.mail("sender@acme.test")  # no SIZE=: caught while the data arrives
    await smtp.rcpt("rcpt@example.org")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp.data(simple("big-1") + (b"z" * 900 + b"\r\n") * 12)
    assert (refused.value.code, refused.value.message[:5]) == (552, "5.3.4")
    assert await command(smtp, "NOOP") == (250, "OK")  # the session goes on
    await smtp.quit()
    assert await proxy.api.messages() == []


async def test_a_line_over_1000_octets_is_500_and_the_session_goes_on(proxy: Proxy) -> None:
    smtp = await session(proxy)
    await smtp.mail("sender@acme.test")
    await smtp.rcpt("rcpt@example.org")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp.data(simple("long-1") + b"x" * 1000 + b"\r\n")
    assert (refused.value.code, refused.value.message) == (
        500, "Line too long (see RFC5321 4.5.3.1.6)")
    assert await command(smtp, "NOOP") == (250, "OK")
    await smtp.sendmail("sender@acme.test", ["rcpt@example.org"],
                        simple("fits-1") + b"y" * 998 + b"\r\n")
    await smtp.quit()
    [got] = await proxy.relay.wait_for(1)
    assert got.content.endswith(b"\r\n\r\nBody line\r\n" + b"y" * 998 + b"\r\n")
    assert [r["id"] for r in await proxy.api.messages()] == ["fits-1"]


@pytest.mark.parametrize("header", [
    "X-Mail-Proxy-Priority: urgent", "X-Mail-Proxy-Priority: 7",
    "X-Mail-Proxy-Deferred-Ts: tomorrow", "X-Mail-Proxy-Deferred-Ts: -5",
    "X-Mail-Proxy-Batch: " + "b" * 65, "X-Mail-Proxy-ID: " + "i" * 256,
])
async def test_invalid_control_header_is_554(proxy: Proxy, header: str) -> None:
    smtp = await session(proxy)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp.sendmail("sender@acme.test", ["rcpt@example.org"],
                            simple(extra=header + "\r\n"))
    assert refused.value.code == 554
    assert refused.value.message.startswith("5.6.0 Invalid control header value: X-Mail-Proxy-")
    await smtp.quit()
    assert await proxy.api.messages() == []


async def test_storage_failure_is_451_and_nothing_is_queued(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = proxy.api.parts.listener  # type: ignore[attr-defined]

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreError("database write failed: disk I/O error")

    smtp = await session(proxy)
    monkeypatch.setattr(listener.submission.store, "enqueue", broken)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("fail-1"))
    assert refused.value.code == 451
    assert refused.value.message.startswith("4.3.0 ")
    monkeypatch.undo()
    assert await proxy.api.messages() == []
    _, reply = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("fail-1"))
    assert reply == "2.0.0 Queued as fail-1"  # the client's retry goes through
    await smtp.quit()
    await proxy.relay.wait_for(1)


# -- robustness and logging ----------------------------------------------------------------

def _raw_session(port: int, lines: list[bytes]) -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        for line in lines:
            sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_garbage_and_malformed_mime_never_break_the_listener(proxy: Proxy) -> None:
    garbage = [
        b"\x00\xff\xfe garbage\r\n", b"EHLO\r\n", b"MAIL FROM:<<<>>>\r\n", b"A" * 5000 + b"\r\n",
        b"AUTH PLAIN !!!notbase64\r\n", b"AUTH PLAIN " + base64.b64encode(b"nonul") + b"\r\n",
        b"RCPT TO:<x@example.org>\r\n", b"DATA\r\n", b"\r\n", b"QUIT\r\n",
    ]
    answer = await asyncio.to_thread(_raw_session, proxy.port, garbage)
    assert answer.startswith(b"220 ")
    assert b"221 " in answer
    smtp = await session(proxy)
    for raw in (b"no header block at all\r\n", b"Subject: =?bogus?x?%%%?=\r\n\r\n",
                b": empty name\r\n\x00\x01\r\n", b"\r\n"):
        _, reply = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], raw)
        assert reply.startswith("2.0.0 Queued as smtp-"), raw
    await smtp.quit()
    await proxy.relay.wait_for(4)


async def _exchange(port: int, writes: list[bytes], until: bytes) -> bytes:
    """Send `writes` as they come (pipelined), read until `until` arrives, then hang up."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"".join(writes))
    answer = b""
    async with asyncio.timeout(10):
        while until not in answer and (chunk := await reader.read(65536)):
            answer += chunk
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_client_gone_mid_data_leaves_nothing_queued_and_no_error(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailproxy")
    partial = simple("gone-1") + b"half a line of the body"
    answer = await _exchange(proxy.port, [
        b"EHLO client\r\n", b"AUTH PLAIN " + plain_blob(proxy.user, proxy.token) + b"\r\n",
        b"MAIL FROM:<sender@acme.test>\r\n", b"RCPT TO:<rcpt@example.org>\r\n",
        b"DATA\r\n", partial], until=b"354 ")
    assert b"354 " in answer
    assert b"Queued" not in answer
    smtp = await session(proxy)  # the listener goes on
    await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("after-1"))
    await smtp.quit()
    await proxy.relay.wait_for(1)
    assert [r["id"] for r in await proxy.api.messages()] == ["after-1"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_commands_pipelined_after_the_end_mark_are_answered(proxy: Proxy) -> None:
    # The content, its end mark, and the next transaction and QUIT in one write.
    answer = await _exchange(proxy.port, [
        b"EHLO client\r\n", b"AUTH PLAIN " + plain_blob(proxy.user, proxy.token) + b"\r\n",
        b"MAIL FROM:<sender@acme.test>\r\nRCPT TO:<rcpt@example.org>\r\nDATA\r\n",
        simple("pipe-1") + b".\r\nMAIL FROM:<sender@acme.test>\r\n"
        b"RCPT TO:<rcpt@example.org>\r\nDATA\r\n",
        simple("pipe-2") + b"..dotted\r\n.\r\nQUIT\r\n"], until=b"221 ")
    assert answer.count(b"250 2.0.0 Queued as pipe-") == 2
    assert answer.rstrip().endswith(b"221 Bye")
    got = await proxy.relay.wait_for(2)
    assert sorted(m.content.split(b"\r\n\r\n", 1)[1] for m in got) == [
        b"Body line\r\n", b"Body line\r\n.dotted\r\n"]


async def test_protocol_logger_stays_at_info_and_no_secret_is_logged(
    make_api: ApiFactory, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("mail.log").setLevel(logging.NOTSET)
    proxy = await start_proxy(make_api, relay)
    assert logging.getLogger("mail.log").getEffectiveLevel() >= logging.INFO
    caplog.clear()  # the relay sink shares aiosmtpd's logger; judge from here on
    smtp = await connect(proxy.port)
    await smtp.auth_login(proxy.user, proxy.token)
    await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("log-1"))
    await smtp.quit()
    await relay.wait_for(1)
    secrets = (proxy.token, base64.b64encode(proxy.token.encode()).decode())
    for record in caplog.records:
        if record.name.startswith("mail.log"):
            assert record.levelno >= logging.INFO, (record.getMessage(), record.created)
        assert not any(s in record.getMessage() for s in secrets), record.getMessage()


async def test_protocol_trace_is_off_unless_debugging(
    make_api: ApiFactory, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("mail.log").setLevel(logging.NOTSET)
    proxy = await start_proxy(make_api, relay)
    caplog.clear()
    smtp = await session(proxy)
    await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("quiet-1"))
    await smtp.quit()
    assert logging.getLogger("mail.log").getEffectiveLevel() == logging.WARNING
    assert not [r for r in caplog.records if r.name == "mail.log"]


async def test_warns_when_nobody_could_authenticate(
    make_api: ApiFactory, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mailproxy.smtp")
    await make_api(smtp_host="0.0.0.0", smtp_port=free_port())
    warnings = [r.getMessage() for r in caplog.records if r.name == "mailproxy.smtp"]
    assert any("GMP_SMTP_ALLOW_PLAIN_AUTH" in w and "GMP_SMTP_TLS_CERT" in w for w in warnings)


# -- a crash right after the 250 -----------------------------------------------------------

@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (tmp_path / f"serve-{len(started)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mailproxy", "serve"], env=env, stdout=log,
                stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert process.poll() is None, "mail-proxy serve exited"
            try:
                async with http.get(f"{base}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("mail-proxy serve did not become healthy")


@pytest.mark.slow
async def test_message_acknowledged_before_a_sigkill_is_delivered_after_restart(
    tmp_path: Path, spawn: Callable[[dict[str, str]], subprocess.Popen[bytes]]
) -> None:
    api_port, smtp_port, relay_port = free_port(), free_port(), free_port()
    env = {
        **os.environ, "PYTHONPATH": str(WORKTREE), "GMP_DATA_DIR": str(tmp_path / "data"),
        "GMP_API_TOKEN": ADMIN, "GMP_PORT": str(api_port), "GMP_SMTP_PORT": str(smtp_port),
        "GMP_SEND_LOOP_INTERVAL": "0.05", "GMP_RETRY_BASE_SECONDS": "1",
        "GMP_SMTP_CONNECT_TIMEOUT_SECONDS": "2",
    }
    base = f"http://{HOST}:{api_port}"
    first = spawn(env)
    await _wait_healthy(base, first)
    async with aiohttp.ClientSession(headers={"X-API-Token": ADMIN}) as http:
        async with http.post(f"{base}/tenant", json={"id": "acme"}) as resp:
            token = (await resp.json())["api_key"]
        account = {"id": "main", "tenant_id": "acme", "host": HOST, "port": relay_port,
                   "use_tls": False}
        async with http.post(f"{base}/account", json=account) as resp:
            assert resp.status == 200
    smtp = await connect(smtp_port)
    await smtp.auth_plain("acme/main", token)
    _, reply = await smtp.sendmail("sender@acme.test", ["rcpt@example.org"], simple("crash-1"))
    first.kill()  # SIGKILL right after the 250
    assert reply == "2.0.0 Queued as crash-1"
    first.wait(10)
    smtp.close()
    with Relay(port=relay_port) as relay:
        second = spawn(env)
        await _wait_healthy(base, second)
        [got] = await relay.wait_for(1, timeout=20)
    assert b"X-Genro-Mail-ID: crash-1\r\n" in got.content
    assert got.content.endswith(b"Subject: Hello\r\n\r\nBody line\r\n")
