"""The MAIL FROM tenant/account check, reused within one SMTP session for a while, ends at
once on a tenant or account change (issue 17): in the same process, and on another instance
sharing the PostgreSQL database, through its notifications.

The reuse window is stretched to 60 s here, so that only an invalidation can explain a
refusal within the test's few seconds."""

from __future__ import annotations

import time

import aiosmtplib
import pytest

from mailproxy import submission
from tests.conftest import ApiFactory
from tests.integration.test_smtp_ingress import session, start_proxy
from tests.pg import PgSchema
from tests.procs import new_encryption_key
from tests.relay import Relay


@pytest.fixture(autouse=True)
def long_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submission, "SENDER_RECHECK_SECONDS", 60.0)


async def _mail_from(smtp: aiosmtplib.SMTP) -> tuple[int, str]:
    reply = await smtp.execute_command(b"MAIL FROM:<sender@acme.test>")
    await smtp.execute_command(b"RSET")
    return reply.code, reply.message


async def _refused_within(smtp: aiosmtplib.SMTP, seconds: float) -> tuple[int, str]:
    deadline = time.monotonic() + seconds
    while True:
        code, text = await _mail_from(smtp)
        if code != 250 or time.monotonic() > deadline:
            return code, text


async def test_deactivating_the_tenant_ends_the_reuse_at_once(make_api: ApiFactory,
                                                             relay: Relay) -> None:
    proxy = await start_proxy(make_api, relay)
    smtp = await session(proxy)
    assert (await _mail_from(smtp))[0] == 250
    await proxy.api.ok("PUT", "/tenant/acme", json={"active": False})
    code, text = await _mail_from(smtp)
    assert code == 550 and "not active" in text, (code, text)
    await proxy.api.ok("PUT", "/tenant/acme", json={"active": True})
    assert (await _mail_from(smtp))[0] == 250


async def test_deleting_the_account_ends_the_reuse_at_once(make_api: ApiFactory,
                                                          relay: Relay) -> None:
    proxy = await start_proxy(make_api, relay)
    smtp = await session(proxy)
    assert (await _mail_from(smtp))[0] == 250
    await proxy.api.ok("DELETE", "/account/main", params={"tenant_id": "acme"})
    code, text = await _mail_from(smtp)
    assert code == 550 and "Unknown account" in text, (code, text)


async def test_a_change_on_another_instance_ends_the_reuse(
        make_api: ApiFactory, relay: Relay, pg_schema: PgSchema) -> None:
    shared = {"db_path": pg_schema.url, "encryption_key": new_encryption_key()}
    proxy = await start_proxy(make_api, relay, **shared)
    other = await make_api(smtp_port=0, **shared)
    smtp = await session(proxy)
    assert (await _mail_from(smtp))[0] == 250
    await other.ok("PUT", "/tenant/acme", json={"active": False})
    code, text = await _refused_within(smtp, 10)
    assert code == 550 and "not active" in text, (code, text)
    await other.ok("DELETE", "/tenant/acme")
    await proxy.api.client.close()  # both apps stop before the schema goes
    await other.client.close()
