"""Why a message waits is visible where users look: the record, the log, the times.

Relay host names that must not resolve use the `.invalid` TLD (RFC 2606). This machine's
resolver sends such queries to its (off-loopback) name server rather than answering them
itself, so these tests inject the SmtpPool's resolver port with one that answers NXDOMAIN
for `.invalid` names locally; the relays themselves are real aiosmtpd servers on 127.0.0.1,
whose IP literal needs no lookup.
"""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest

from mailproxy.delivery import SmtpPool
from mailproxy.errors import TemporaryFailure, UnknownHost
from mailproxy.model import Account
from tests.conftest import Api, ApiFactory, FakeClock, eventually, message
from tests.relay import Relay

UNKNOWN = "smtp.example.invalid"
DELIVERY_LOG = "mailproxy.delivery.outcome"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def no_dns(host: str, port: int) -> object:
    """NXDOMAIN for .invalid names, answered here; nothing else is looked up in these tests."""
    if host.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    raise AssertionError(f"unexpected DNS lookup of {host}")


async def _one(api: Api, **params: object) -> dict[str, object]:
    [record] = await api.messages(include_history="true", **params)
    return record


async def _retried(api: Api, count: int = 1) -> dict[str, object]:
    """The only message, once it has had `count` failed attempts."""
    async def reached() -> bool:
        return (await _one(api))["retry_count"] == count
    await eventually(reached, timeout=20)
    return await _one(api)


async def _status(api: Api, status: str) -> dict[str, object]:
    async def reached() -> bool:
        return (await _one(api))["status"] == status
    await eventually(reached, timeout=20)
    return await _one(api)


async def test_a_deferred_message_shows_the_reason_and_the_log_says_it_once(
        api: Api, relay: Relay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DELIVERY_LOG)
    relay.replies["DATA"] = "451 4.3.0 try again later"
    await api.tenant()
    await api.account(relay)
    await api.send(message(1))

    await _retried(api)
    record = await _one(api, status="deferred")
    assert record["error"] is None  # the contract keeps `error` for final errors (§5.2)
    assert record["last_error"] == "451 4.3.0 try again later"
    assert record["deferred_ts_iso"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(record["deferred_ts"])))  # type: ignore[arg-type]
    assert ISO.match(str(record["created_at_iso"]))
    assert str(record["created_at_iso"]).replace("T", " ")[:19] == record["created_at"]
    found = [r for r in caplog.records if r.name == DELIVERY_LOG and r.levelno == logging.INFO
             and r.message_id == "m1"]  # type: ignore[attr-defined]
    assert [r.getMessage() for r in found] == [  # one line: who, why, what next
        f"deferred acme/main m1: 451 4.3.0 try again later; "
        f"next try {record['deferred_ts_iso']} (retry 1)"]


async def test_a_failed_message_shows_its_error_as_last_error(
        api: Api, relay: Relay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DELIVERY_LOG)
    relay.replies["DATA"] = "550 5.7.1 refused by policy"
    await api.tenant()
    await api.account(relay)
    await api.send(message(2))
    record = await _status(api, "error")
    assert record["error"] == record["last_error"] == "550 5.7.1 refused by policy"
    assert ISO.match(str(record["error_ts_iso"]))
    assert [r.getMessage() for r in caplog.records if r.name == DELIVERY_LOG] == [
        "error acme/main m2: 550 5.7.1 refused by policy; no further try"]


async def test_a_sent_message_has_no_last_error(api: Api, relay: Relay) -> None:
    relay.replies["DATA"] = "451 4.3.0 try again later"
    await api.tenant()
    await api.account(relay)
    await api.send(message(3))

    await _retried(api)
    relay.replies.clear()
    await api.ok("POST", "/commands/run-now", params={"tenant_id": "acme"})
    await api.send(message(3))  # replaced while deferred: tried again at once
    record = await _status(api, "sent")
    assert record["last_error"] is None and record["error"] is None
    assert ISO.match(str(record["sent_ts_iso"]))
    assert all(ISO.match(str(e["event_ts_iso"])) for e in record["history"])  # type: ignore[union-attr]


async def test_an_unknown_relay_host_fails_after_the_grace_not_after_hours(
        make_api: ApiFactory) -> None:
    clock = FakeClock()
    api = await make_api(clock=clock, resolver=no_dns)
    await api.tenant()
    await api.ok("POST", "/account", json={"id": "main", "tenant_id": "acme",
                                           "host": UNKNOWN, "port": 587})
    await api.send(message(4))

    record = await _retried(api)
    assert f"relay host {UNKNOWN} does not exist" in str(record["last_error"])
    # Deferred to the end of the 60 s grace, not to the first backoff step:
    assert int(record["deferred_ts"]) - clock.now() <= 61  # type: ignore[arg-type]

    clock.advance(61)
    await api.ok("POST", "/commands/run-now", params={"tenant_id": "acme"})
    record = await _status(api, "error")
    assert record["retry_count"] == 1
    assert f"relay host {UNKNOWN} does not exist" in str(record["error"])
    assert "fix the host of account acme/main" in str(record["error"])
    # A message sent after the grace fails at its first attempt.
    await api.send(message(5))

    async def failed() -> bool:
        found = await api.messages(status="error")
        return {m["id"] for m in found} == {"m4", "m5"}
    await eventually(failed, timeout=20)
    [m5] = [m for m in await api.messages() if m["id"] == "m5"]
    assert m5["retry_count"] == 0


async def test_no_grace_means_the_first_nxdomain_is_final(make_api: ApiFactory) -> None:
    api = await make_api(resolver=no_dns, smtp_unknown_host_grace_seconds=0)
    await api.tenant()
    await api.ok("POST", "/account", json={"id": "main", "tenant_id": "acme",
                                           "host": UNKNOWN, "port": 587})
    await api.send(message(6))
    record = await _status(api, "error")
    assert record["retry_count"] == 0
    assert [e["event_type"] for e in record["history"]] == ["error"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("errno", "kind"), [
    (socket.EAI_NONAME, "UnknownHost"), (socket.EAI_NODATA, "UnknownHost"),
    (socket.EAI_AGAIN, "TemporaryFailure")])
async def test_only_a_name_that_does_not_exist_is_an_unknown_host(errno: int, kind: str) -> None:
    """A DNS outage (EAI_AGAIN: SERVFAIL, timeout) stays an ordinary temporary failure."""

    async def resolver(host: str, port: int) -> object:
        raise socket.gaierror(errno, "resolver says no")

    pool = SmtpPool(resolver=resolver, connect_timeout=5)
    account = Account(tenant_id="acme", id="main", host=UNKNOWN, port=587)
    with pytest.raises(TemporaryFailure) as failed:
        await pool.send(account, "a@acme.test", ["r@example.org"], b"Subject: x\r\n\r\nx\r\n")
    await pool.close()
    assert type(failed.value).__name__ == kind
    if kind == "UnknownHost":
        assert str(failed.value) == f"relay host {UNKNOWN} does not exist (DNS: resolver says no)"
    assert isinstance(failed.value, UnknownHost) == (kind == "UnknownHost")
