"""SMTP submission of hostile headers (issue 17): invalid UTF-8 or NUL in a header is either
accepted and relayed byte for byte, or refused with a 5xx and a reason; the session is never
dropped, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import pytest

from tests.conftest import ApiFactory, eventually
from tests.integration.test_smtp_ingress import Proxy, session, start_proxy
from tests.pg import PgSchema, require_server
from tests.procs import new_encryption_key
from tests.relay import Relay

PLAIN_HEADERS = [
    b"Subject: caf\xe9 \xff\xfe\r\n",                 # Latin-1 / invalid UTF-8
    b"Subject: a\x00b\r\n",                            # NUL
    b"X-Custom: \xc3\x28\x00\r\n",                     # both
]
# Control headers are read, not relayed: a value that is not clean text is refused.
CONTROL_HEADERS = [
    (b"X-Mail-Proxy-ID: id-\xff\xfe\r\n", "X-Mail-Proxy-ID"),
    (b"X-Mail-Proxy-ID: id-\x00-nul\r\n", "X-Mail-Proxy-ID"),
    (b"X-Mail-Proxy-Batch: b\x00\r\n", "X-Mail-Proxy-Batch"),
    (b"X-Mail-Proxy-Batch: b\xff\r\n", "X-Mail-Proxy-Batch"),
    (b"X-Mail-Proxy-Priority: hi\x00gh\r\n", "X-Mail-Proxy-Priority"),
    (b"X-Mail-Proxy-Deferred-Ts: 1\x00\r\n", "X-Mail-Proxy-Deferred-Ts"),
]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite, else the PostgreSQL server URL (skipped, or failed under CI=true,
    when it does not answer)."""
    return require_server() if request.param == "postgres" else None


@pytest.fixture
async def hostile_proxy(backend: str | None, make_api: ApiFactory, relay: Relay
                        ) -> AsyncIterator[Proxy]:
    if backend is None:
        yield await start_proxy(make_api, relay)
        return
    schema = PgSchema(backend)
    proxy = None
    try:
        proxy = await start_proxy(make_api, relay, db_path=schema.url,
                                  encryption_key=new_encryption_key())
        yield proxy
    finally:
        if proxy is not None:
            await proxy.api.client.close()  # stop the app before its schema goes
        await schema.drop()


def _mail(header: bytes) -> bytes:
    return (b"From: sender@acme.test\r\nTo: rcpt@example.org\r\n" + header
            + b"\r\nbody \xff line\r\n")


async def _offer(smtp: aiosmtplib.SMTP, data: bytes) -> tuple[int, str]:
    """MAIL/RCPT/DATA by hand, so that a refusal is a reply we can read, not an exception."""
    for line in (b"MAIL FROM:<sender@acme.test>", b"RCPT TO:<rcpt@example.org>"):
        reply = await smtp.execute_command(line)
        assert reply.code == 250, reply
    try:
        reply = await smtp.data(data)
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    return reply.code, reply.message


@pytest.mark.parametrize("header", PLAIN_HEADERS, ids=range(len(PLAIN_HEADERS)))
async def test_hostile_header_is_relayed_byte_for_byte(hostile_proxy: Proxy, header: bytes
                                                      ) -> None:
    proxy = hostile_proxy
    smtp = await session(proxy)
    code, text = await _offer(smtp, _mail(header))
    assert code == 250, (code, text)
    assert (await smtp.noop()).code == 250  # the session goes on
    await smtp.quit()
    [got] = await proxy.relay.wait_for(1, timeout=15)
    assert header in got.content, got.content[:600]
    assert b"body \xff line" in got.content

    async def recorded() -> bool:
        listed: list[dict[str, Any]] = await proxy.api.messages()
        return len(listed) == 1 and listed[0]["status"] == "sent"

    await eventually(recorded, timeout=15)


@pytest.mark.parametrize(("header", "name"), CONTROL_HEADERS,
                         ids=range(len(CONTROL_HEADERS)))
async def test_hostile_control_header_is_refused_with_a_5xx_naming_it(
        hostile_proxy: Proxy, header: bytes, name: str) -> None:
    proxy = hostile_proxy
    smtp = await session(proxy)
    code, text = await _offer(smtp, _mail(header))
    assert 500 <= code < 600 and name in text, (code, text)
    assert (await smtp.noop()).code == 250  # the session goes on
    code, text = await _offer(smtp, _mail(b"Subject: fine\r\n"))
    assert code == 250, (code, text)
    await smtp.quit()
    assert len(await proxy.api.messages()) == 1
