"""Bounce settings over HTTP (§3.6, §12.1), on SQLite and PostgreSQL: `PUT /instance` and
`POST /instance/reload-bounce` start and stop the poller of a running process; the IMAP
password is never returned and is stored encrypted, yet the poller logs in with it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, ApiFactory, eventually
from tests.endpoint import EndpointFactory
from tests.imap import Dovecot
from tests.integration.test_bounce_poller import (
    DEAD,
    RETURN_PATH,
    bounce_settings,
    records,
    runner,
    sent,
)
from tests.pg import PgSchema, require_server
from tests.procs import new_encryption_key
from tests.relay import Relay
from tests.unit.test_bounce_parse import corpus


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    return require_server() if request.param == "postgres" else None


@pytest.fixture
async def schema(backend: str | None) -> AsyncIterator[PgSchema | None]:
    if backend is None:
        yield None
        return
    found = PgSchema(backend)
    yield found
    await found.drop()


async def stored_password(schema: PgSchema | None, data_dir: Path) -> Any:
    sql = "SELECT bounce_imap_password FROM instance WHERE id = 1"
    if schema is not None:
        return (await schema.fetch(sql))[0][0]
    with sqlite3.connect(data_dir / "mail_service.db") as con:
        return con.execute(sql).fetchone()[0]


async def polls_after_reload(api: Api, more: int) -> None:
    poller = runner(api).poller
    start = poller.polls
    await api.ok("POST", "/instance/reload-bounce")

    async def done() -> bool:
        return poller.polls >= start + more

    await eventually(done, timeout=15)


async def test_put_instance_and_reload_start_and_stop_the_poller(
    schema: PgSchema | None, make_api: ApiFactory, relay: Relay,
    make_endpoint: EndpointFactory, dovecot: Dovecot, tmp_path: Path,
) -> None:
    extra: dict[str, Any] = {}
    if schema is not None:
        extra = {"db_path": schema.url, "encryption_key": new_encryption_key()}
    api = await make_api(**extra)  # no GMP_BOUNCE_*: the stored settings rule
    endpoint = await make_endpoint()
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.account(relay)
    folder = await dovecot.new_folder()
    pks = await sent(api, relay, 1, 2)
    assert runner(api).poller.polls == 0

    body = await api.ok("PUT", "/instance", json=bounce_settings(dovecot, folder))
    got = await api.ok("GET", "/instance")
    for answer in (body, got):
        assert "bounce_imap_password" not in answer
        assert dovecot.password not in [v for v in answer.values() if isinstance(v, str)]
    assert got["has_bounce_imap_password"] is True and got["bounce_enabled"] is True
    at_rest = await stored_password(schema, tmp_path / "data")
    assert at_rest and dovecot.password not in at_rest  # a ciphertext, not the password

    # Enabled over HTTP: the poller logs in with the decrypted password and reads the DSN.
    await dovecot.append(folder, corpus("dsn_511.eml", pk=pks["m1"], client_id="m1",
                                        rcpt=DEAD))
    await polls_after_reload(api, 1)
    assert runner(api).poller.last_error is None
    assert (await records(api))["m1"]["status"] == "bounced"

    # Disabled over HTTP: no more polls, mail waits in the mailbox, the return path reverts.
    await api.ok("PUT", "/instance", json={"bounce_enabled": False})
    assert (await api.ok("GET", "/instance"))["bounce_enabled"] is False
    assert (await api.ok("POST", "/instance/reload-bounce"))["bounce_enabled"] is False
    polls = runner(api).poller.polls
    await dovecot.append(folder, corpus("dsn_522_headers_only.eml", pk=pks["m2"],
                                        client_id="m2", rcpt=DEAD))
    await asyncio.sleep(2.5)  # more than two poll intervals: what must not happen has not
    assert runner(api).poller.polls == polls
    assert (await records(api))["m2"]["status"] == "sent"
    await sent(api, relay, 3, to="someone@example.org")
    assert relay.messages[-1].mail_from == "sender@acme.test"

    # Enabled again: the waiting DSN is read, and the return path is back.
    await api.ok("PUT", "/instance", json={"bounce_enabled": True})
    await polls_after_reload(api, 1)
    assert (await records(api))["m2"]["status"] == "bounced"
    await sent(api, relay, 4, to="someone@example.org")
    assert relay.messages[-1].mail_from == RETURN_PATH
