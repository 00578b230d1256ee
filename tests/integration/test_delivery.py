"""SmtpPool against a real aiosmtpd relay on loopback.

Every test runs twice: with the relay advertising PIPELINING (MAIL, RCPT and DATA go out in
one write) and without (one command per round trip); the outcomes must be the same.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailproxy import compose, delivery
from mailproxy.delivery import SmtpPool
from mailproxy.errors import PermanentFailure, RecipientFailure, TemporaryFailure
from mailproxy.model import Content
from tests.relay import Relay  # the relay and make_relay fixtures come from tests/conftest.py

MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hello\r\n\r\n"
    b"line one\r\n.line starting with a dot\r\n\r\nlast line\r\n"
)
USER, PASSWORD = "user", "secret"

PoolFactory = Callable[..., SmtpPool]


@pytest.fixture(autouse=True, params=[True, False], ids=["pipelined", "one-by-one"])
def pipelining(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(Relay, "pipelining_default", request.param)
    return bool(request.param)


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    pools: list[SmtpPool] = []

    def factory(**options: Any) -> SmtpPool:
        settings: dict[str, Any] = {
            "pool_size": 2,
            "pool_wait": 2,
            "connect_timeout": 3,
            "send_timeout": 3,
            "tls_verify": False,
            "local_hostname": "client.test",
            **options,
        }
        pool = SmtpPool(**settings)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close()


@pytest.fixture
def pool(make_pool: PoolFactory) -> SmtpPool:
    return make_pool()


async def send(pool: SmtpPool, relay: Relay, **kwargs: Any) -> tuple[RecipientFailure, ...]:
    account = kwargs.pop("account", None) or relay.account()
    sender = kwargs.pop("sender", "a@example.com")
    recipients = kwargs.pop("recipients", ["b@example.org"])
    data = kwargs.pop("data", MESSAGE)
    return await pool.send(account, sender, recipients, data, **kwargs)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- plain delivery and reuse ----------------------------------------------------------------


async def test_plain_send_reaches_relay_byte_for_byte(relay: Relay, pool: SmtpPool) -> None:
    refused = await send(pool, relay, recipients=["b@example.org", "c@example.net"])

    assert refused == ()
    [got] = await relay.wait_for(1)
    assert got.mail_from == "a@example.com"
    assert got.rcpt_tos == ("b@example.org", "c@example.net")
    assert got.content == MESSAGE
    assert got.mail_options == (f"SIZE={len(MESSAGE)}",)
    assert not got.tls and got.login is None


async def test_bare_line_feeds_are_sent_as_crlf(relay: Relay, pool: SmtpPool) -> None:
    await send(pool, relay, data=b"Subject: x\n\nbody\nmore")

    [got] = await relay.wait_for(1)
    assert got.content == b"Subject: x\r\n\r\nbody\r\nmore\r\n"


async def test_dots_at_line_starts_survive_the_transfer(relay: Relay, pool: SmtpPool) -> None:
    data = b".first line\r\n..\r\n.\r\nmiddle\r\n.\r\n.last"
    await send(pool, relay, data=data)

    [got] = await relay.wait_for(1)
    assert got.content == data + b"\r\n"


async def test_a_dot_line_after_many_dots_is_still_stuffed(relay: Relay, pool: SmtpPool) -> None:
    # Dots inside lines are no line starts; the one late in the message is.
    data = b"Subject: x\r\n\r\n" + b"a.b.c.d\r\n" * 40 + b".late\r\n"
    await send(pool, relay, data=data)

    [got] = await relay.wait_for(1)
    assert got.content == data


async def test_composed_message_is_sent_byte_for_byte(relay: Relay, pool: SmtpPool) -> None:
    body = "intro\n.dot line\n" + "x" * 50 + "\n"
    data = compose.build_message(
        Content(from_addr="a@example.com", to=("b@example.org",), subject="s", body=body),
        pk="pk-1", client_id="c-1", date_ts=1767225600,
        attachments=[("r.pdf", "application/pdf", bytes(range(256)) * 40)])
    await send(pool, relay, data=data, crlf=True)

    [got] = await relay.wait_for(1)
    assert got.content == b"".join(data)


async def test_pieces_are_sent_as_one_message(relay: Relay, pool: SmtpPool) -> None:
    # A dot at the start of a piece starts a line only when the piece before ended one.
    pieces = [b"Subject: x\r\n\r\nab", b".not a line start\r\n", b".line start\r\n", b"end\r\n"]
    await send(pool, relay, data=pieces, crlf=True)

    [got] = await relay.wait_for(1)
    assert got.content == b"".join(pieces)


async def test_connection_is_reused_without_extra_round_trips(relay: Relay, pool: SmtpPool) -> None:
    for _ in range(5):
        await send(pool, relay)

    await relay.wait_for(5)
    assert relay.connections == 1
    assert relay.commands["EHLO"] == 1
    assert relay.commands["NOOP"] == 0
    assert relay.commands["RSET"] == 0


async def test_pipelining_is_used_only_when_advertised(
    relay: Relay, pool: SmtpPool, pipelining: bool
) -> None:
    for _ in range(3):
        await send(pool, relay, recipients=["b@example.org", "c@example.net"])

    got = await relay.wait_for(3)
    assert all(m.rcpt_tos == ("b@example.org", "c@example.net") for m in got)
    assert relay.pipelined == (3 if pipelining else 0)
    assert relay.connections == 1


async def test_concurrent_sends_use_at_most_pool_size_connections(
    relay: Relay, make_pool: PoolFactory
) -> None:
    pool = make_pool(pool_size=3)
    await asyncio.gather(*(send(pool, relay) for _ in range(20)))

    await relay.wait_for(20)
    assert 1 <= relay.connections <= 3


async def test_pool_is_never_shared_between_accounts(relay: Relay, pool: SmtpPool) -> None:
    first = relay.account("t1", "a1", user="same")
    second = relay.account("t1", "a2", user="same")
    other_tenant = relay.account("t2", "a1", user="same")
    for account in (first, second, other_tenant, first, second, other_tenant):
        await send(pool, relay, account=account)

    got = await relay.wait_for(6)
    assert relay.connections == 3
    conn_ids = [m.conn_id for m in got]
    assert conn_ids[:3] == conn_ids[3:]
    assert len(set(conn_ids)) == 3


# -- refusals ------------------------------------------------------------------------------


async def test_partial_refusal_returns_failed_recipients(relay: Relay, pool: SmtpPool) -> None:
    relay.rcpt_replies["bad@example.org"] = "550 5.1.1   user\tunknown"

    refused = await send(pool, relay, recipients=["bad@example.org", "ok@example.org"])

    assert refused == (RecipientFailure("bad@example.org", 550, "5.1.1 user unknown"),)
    [got] = await relay.wait_for(1)
    assert got.rcpt_tos == ("ok@example.org",)


async def test_251_forwarded_counts_as_accepted(relay: Relay, pool: SmtpPool) -> None:
    relay.rcpt_replies["moved@example.org"] = "251 2.1.5 user not local; will forward"

    assert await send(pool, relay, recipients=["moved@example.org"]) == ()
    await relay.wait_for(1)


async def test_multi_line_refusal_is_read_whole(relay: Relay, pool: SmtpPool) -> None:
    relay.rcpt_replies["bad@example.org"] = "550-5.1.1 no such user\r\n550 5.1.1 see the docs"

    refused = await send(pool, relay, recipients=["bad@example.org", "ok@example.org"])

    assert refused == (
        RecipientFailure("bad@example.org", 550, "5.1.1 no such user 5.1.1 see the docs"),)
    [got] = await relay.wait_for(1)
    assert got.rcpt_tos == ("ok@example.org",)
    await send(pool, relay)  # the replies stayed in step
    await relay.wait_for(2)
    assert relay.connections == 1


async def test_all_refused_permanently(relay: Relay, pool: SmtpPool) -> None:
    relay.rcpt_replies["x@example.org"] = "550 5.1.1 user unknown"
    relay.rcpt_replies["y@example.org"] = "553 5.1.3 bad address"

    with pytest.raises(PermanentFailure) as info:
        await send(pool, relay, recipients=["x@example.org", "y@example.org"])

    failure = info.value
    assert failure.code == 550
    assert str(failure) == "550 5.1.1 user unknown"
    assert failure.recipients == (
        RecipientFailure("x@example.org", 550, "5.1.1 user unknown"),
        RecipientFailure("y@example.org", 553, "5.1.3 bad address"),
    )
    assert relay.commands["DATA"] == 0
    assert relay.commands["RSET"] == 1
    # the connection is still good
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 1


async def test_all_refused_with_one_4xx_is_temporary(relay: Relay, pool: SmtpPool) -> None:
    relay.rcpt_replies["x@example.org"] = "550 5.1.1 user unknown"
    relay.rcpt_replies["y@example.org"] = "452 4.2.2 mailbox full"

    with pytest.raises(TemporaryFailure) as info:
        await send(pool, relay, recipients=["x@example.org", "y@example.org"])

    assert info.value.code == 452
    assert str(info.value) == "452 4.2.2 mailbox full"
    assert len(info.value.recipients) == 2


async def test_451_at_data_is_temporary_and_connection_survives(
    relay: Relay, pool: SmtpPool
) -> None:
    relay.replies["DATA"] = "451 4.3.0 try again later"

    with pytest.raises(TemporaryFailure) as info:
        await send(pool, relay)

    assert info.value.code == 451
    assert str(info.value) == "451 4.3.0 try again later"
    assert info.value.recipients == ()
    del relay.replies["DATA"]
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 1


async def test_550_at_mail_is_permanent(relay: Relay, pool: SmtpPool) -> None:
    relay.replies["MAIL"] = "550 5.7.1 relaying denied"

    with pytest.raises(PermanentFailure) as info:
        await send(pool, relay)

    assert info.value.code == 550
    assert str(info.value) == "550 5.7.1 relaying denied"
    assert relay.commands["RCPT"] == 0


async def test_421_closes_the_connection_and_is_temporary(relay: Relay, pool: SmtpPool) -> None:
    relay.replies["MAIL"] = "421 4.3.2 shutting down"

    with pytest.raises(TemporaryFailure) as info:
        await send(pool, relay)

    assert info.value.code == 421
    del relay.replies["MAIL"]
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 2


async def test_421_at_rcpt_closes_the_connection_and_is_temporary(
    relay: Relay, pool: SmtpPool
) -> None:
    relay.rcpt_replies["x@example.org"] = "421 4.3.2 shutting down"

    with pytest.raises(TemporaryFailure) as info:
        await send(pool, relay, recipients=["ok@example.org", "x@example.org"])

    assert info.value.code == 421
    assert relay.messages == []
    relay.rcpt_replies.clear()
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 2


@pytest.mark.parametrize(("reply", "kind"), [
    ("452 4.3.1 out of storage", TemporaryFailure),
    ("554 5.6.0 content rejected", PermanentFailure),
])
async def test_refusal_after_the_content_keeps_the_connection(
    relay: Relay, pool: SmtpPool, reply: str, kind: type[Exception]
) -> None:
    relay.replies["DATA"] = reply

    with pytest.raises(kind) as info:
        await send(pool, relay)

    assert str(info.value) == reply
    del relay.replies["DATA"]
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 1


async def test_invalid_address_is_permanent_without_contacting_relay(
    relay: Relay, pool: SmtpPool
) -> None:
    with pytest.raises(PermanentFailure):
        await send(pool, relay, recipients=["evil@example.org\r\nRCPT TO:<x@y>"])
    with pytest.raises(PermanentFailure):
        await send(pool, relay, recipients=["jörg@example.org"])
    with pytest.raises(PermanentFailure):  # would add an ESMTP parameter to RCPT
        await send(pool, relay, recipients=["b@example.org> NOTIFY=NEVER"])
    with pytest.raises(PermanentFailure):
        await send(pool, relay, sender="a@example.com> SIZE=1")
    with pytest.raises(PermanentFailure):
        await send(pool, relay, recipients=['"quoted"x y@example.org'])
    assert relay.connections == 0


async def test_quoted_local_part_and_null_sender_are_sent_as_given(
    relay: Relay, pool: SmtpPool
) -> None:
    await send(pool, relay, sender="", recipients=['"john <doe>"@example.org'])

    [got] = await relay.wait_for(1)
    assert got.mail_from == "<>"
    assert got.rcpt_tos == ('"john <doe>"@example.org',)


# -- timeouts and broken connections -------------------------------------------------------


async def test_stall_at_data_times_out_as_temporary(relay: Relay, make_pool: PoolFactory) -> None:
    pool = make_pool(send_timeout=0.3)
    relay.stalls["DATA"] = 30

    started = time.monotonic()
    with pytest.raises(TemporaryFailure) as info:
        await send(pool, relay)

    assert time.monotonic() - started < 2
    assert info.value.code is None
    assert "timed out" in str(info.value)
    relay.stalls.clear()
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 2


async def test_connect_timeout_is_temporary(relay: Relay, make_pool: PoolFactory) -> None:
    pool = make_pool(connect_timeout=0.3)
    relay.stalls["EHLO"] = 30

    with pytest.raises(TemporaryFailure, match="timed out connecting"):
        await send(pool, relay)


async def test_dropped_connection_after_data_is_temporary_and_next_send_works(
    relay: Relay, pool: SmtpPool
) -> None:
    relay.drop.add("DATA")

    with pytest.raises(TemporaryFailure) as info:
        await send(pool, relay)

    assert info.value.code is None
    relay.drop.clear()
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 2


async def test_connection_refused_is_temporary(pool: SmtpPool, relay: Relay) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    account = relay.account(port=closed_port)

    with pytest.raises(TemporaryFailure) as info:
        await send(pool, relay, account=account)

    assert info.value.code is None


async def test_unknown_host_is_temporary(pool: SmtpPool, relay: Relay) -> None:
    account = relay.account(host="no-such-host.invalid")

    with pytest.raises(TemporaryFailure):
        await send(pool, relay, account=account)


async def test_waiting_for_a_free_connection_is_bounded(
    relay: Relay, make_pool: PoolFactory
) -> None:
    pool = make_pool(pool_size=1, pool_wait=0.2, send_timeout=5)
    relay.stalls["RCPT"] = 1  # mid-transaction: the connection cannot take another one yet

    results = await asyncio.gather(send(pool, relay), send(pool, relay), return_exceptions=True)

    assert results[0] == ()
    assert isinstance(results[1], TemporaryFailure)
    assert "free relay connection" in str(results[1])


async def test_cancelled_send_frees_its_connection(relay: Relay, make_pool: PoolFactory) -> None:
    pool = make_pool(pool_size=1, pool_wait=1)
    relay.stalls["DATA"] = 30
    task = asyncio.create_task(send(pool, relay))
    await wait_until(lambda: relay.commands["DATA"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    relay.stalls.clear()
    await send(pool, relay)
    await relay.wait_for(1)
    assert relay.connections == 2


async def test_close_aborts_sends_in_flight(relay: Relay, pool: SmtpPool) -> None:
    relay.stalls["DATA"] = 30
    task = asyncio.create_task(send(pool, relay))
    await wait_until(lambda: relay.commands["DATA"] == 1)

    await pool.close()

    with pytest.raises(TemporaryFailure):
        await task
    await wait_until(lambda: not relay.live)


async def test_idle_connection_is_checked_with_noop(
    relay: Relay, pool: SmtpPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "NOOP_AFTER_IDLE", 0.05)
    await send(pool, relay)
    await asyncio.sleep(0.1)
    await send(pool, relay)

    await relay.wait_for(2)
    assert relay.commands["NOOP"] == 1
    assert relay.connections == 1


async def test_a_connection_awaiting_a_slow_content_reply_is_not_checked_with_noop(
    relay: Relay, make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay that takes its time over a content (scanning it): a second send that comes for
    the connection meanwhile writes behind it (when pipelining) without a NOOP, which would
    wait behind the reply and, timing out, close the connection under the first send."""
    monkeypatch.setattr(delivery, "NOOP_AFTER_IDLE", 0.05)
    monkeypatch.setattr(delivery, "NOOP_TIMEOUT", 0.2)
    pool = make_pool(pool_size=1)
    await send(pool, relay)
    relay.stalls["DATA"] = 0.6  # the reply to the content
    first = asyncio.create_task(send(pool, relay))
    await wait_until(lambda: relay.commands["DATA"] == 2)
    await asyncio.sleep(0.1)

    second = await send(pool, relay)

    assert await first == () and second == ()
    assert relay.commands["NOOP"] == 0
    assert relay.connections == 1


async def test_dead_idle_connection_is_replaced(
    relay: Relay, pool: SmtpPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "NOOP_AFTER_IDLE", 0.05)
    await send(pool, relay)
    relay.stalls["NOOP"] = 30
    monkeypatch.setattr(delivery, "NOOP_TIMEOUT", 0.2)
    await asyncio.sleep(0.1)

    await send(pool, relay)

    await relay.wait_for(2)
    assert relay.connections == 2


async def test_connection_closed_by_relay_while_idle_is_retried_once(
    relay: Relay, pool: SmtpPool
) -> None:
    await send(pool, relay)
    relay.kick()  # the relay hangs up; the client has not noticed yet

    await send(pool, relay)

    await relay.wait_for(2)
    assert relay.connections == 2


async def test_idle_connections_close_after_ttl(relay: Relay, pool: SmtpPool) -> None:
    await send(pool, relay, account=relay.account(ttl=1))
    assert len(relay.live) == 1

    await wait_until(lambda: not relay.live, timeout=3)


async def test_ttl_zero_keeps_no_idle_connection(relay: Relay, pool: SmtpPool) -> None:
    account = relay.account(ttl=0)
    await send(pool, relay, account=account)
    await send(pool, relay, account=account)

    await relay.wait_for(2)
    assert relay.connections == 2


async def test_ttl_zero_never_opens_more_connections_than_the_pool(
    relay: Relay, make_pool: PoolFactory
) -> None:
    """A connection that will not be kept stays with its send until the reply to its content:
    the next send waits for the slot instead of opening a second connection meanwhile."""
    pool = make_pool(pool_size=1)
    account = relay.account(ttl=0)
    relay.stalls["DATA"] = 0.3
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(relay.live))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(send(pool, relay, account=account) for _ in range(3)))
    finally:
        watcher.cancel()
    assert most == 1 and relay.connections == 3


async def test_a_send_that_times_out_mid_envelope_closes_its_connection(
    relay: Relay, make_pool: PoolFactory
) -> None:
    pool = make_pool(pool_size=1, send_timeout=0.3)
    relay.stalls["RCPT"] = 30

    with pytest.raises(TemporaryFailure, match="timed out"):
        await send(pool, relay)

    await wait_until(lambda: not relay.live)  # closed, not left open for the relay to drop


async def test_a_send_written_behind_a_slow_content_has_its_own_send_timeout(
    relay: Relay, make_pool: PoolFactory
) -> None:
    """Two sends at once over one connection to a relay that takes 0.5 s over each content,
    with a 0.8 s send timeout: the second one's time starts when the relay gets to it, not
    when it was written behind the first (it would time out after its content was taken)."""
    pool = make_pool(pool_size=1, send_timeout=0.8)
    await send(pool, relay)
    relay.stalls["DATA"] = 0.5

    assert await asyncio.gather(send(pool, relay), send(pool, relay)) == [(), ()]
    await relay.wait_for(3)
    assert relay.connections == 1


async def test_a_send_cancelled_behind_another_leaves_that_one_its_reply(
    relay: Relay, make_pool: PoolFactory, pipelining: bool
) -> None:
    """The send ahead has its whole content out; cancelling the one written behind it must
    not close the connection before the relay has answered that content."""
    pool = make_pool(pool_size=1)
    await send(pool, relay)
    relay.stalls["DATA"] = 0.4
    first = asyncio.create_task(send(pool, relay))
    await wait_until(lambda: relay.commands["DATA"] == 2)  # its content is in
    second = asyncio.create_task(send(pool, relay))
    await asyncio.sleep(0.05)

    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second

    assert await first == ()
    await relay.wait_for(2)
    if pipelining:  # the cancelled send's commands went out: closed, as out of step
        await wait_until(lambda: not relay.live)


async def test_sweeping_waits_for_a_connection_owed_a_content_reply(
    relay: Relay, make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle sweep runs a ttl after the last use; a connection still waiting for the reply
    to a content (here longer than the ttl) is looked at again later, not in a busy loop."""
    pool = make_pool(pool_size=1, send_timeout=5)
    account = relay.account(ttl=1)
    sweeps = 0
    sweep = pool._sweep

    def counted(p: Any) -> None:
        nonlocal sweeps
        sweeps += 1
        sweep(p)

    monkeypatch.setattr(pool, "_sweep", counted)
    await send(pool, relay, account=account)
    await asyncio.sleep(1.1)  # swept: closed
    relay.stalls["DATA"] = 1.5

    assert await send(pool, relay, account=account) == ()

    assert sweeps <= 3
    await wait_until(lambda: not relay.live, timeout=3)  # and closed a ttl after its last use


async def test_discard_closes_the_accounts_connections(relay: Relay, pool: SmtpPool) -> None:
    await send(pool, relay)
    pool.discard("t1", "a1")
    await wait_until(lambda: not relay.live)

    await send(pool, relay)
    assert relay.connections == 2


async def test_changed_account_settings_get_new_connections(
    make_relay: Callable[..., Relay], pool: SmtpPool
) -> None:
    relay = make_relay(auth=(USER, PASSWORD), auth_require_tls=False)
    await send(pool, relay, account=relay.account(user=USER, password=PASSWORD))
    with pytest.raises(PermanentFailure):
        await send(pool, relay, account=relay.account(user=USER, password="changed"))

    await relay.wait_for(1)
    assert relay.connections == 2


async def test_close_quits_idle_connections(relay: Relay, pool: SmtpPool) -> None:
    await send(pool, relay)
    await pool.close()

    assert relay.commands["QUIT"] == 1
    with pytest.raises(TemporaryFailure):
        await send(pool, relay)


# -- TLS and authentication ----------------------------------------------------------------


async def test_login_over_starttls(make_relay: Callable[..., Relay], pool: SmtpPool) -> None:
    relay = make_relay(starttls=True, auth=(USER, PASSWORD))
    account = relay.account(use_tls=None, user=USER, password=PASSWORD)

    await send(pool, relay, account=account)
    await send(pool, relay, account=account)

    got = await relay.wait_for(2)
    assert all(m.tls and m.login == USER for m in got)
    assert relay.connections == 1
    assert relay.commands["EHLO"] == 2  # before and after STARTTLS


async def test_use_tls_true_with_starttls(make_relay: Callable[..., Relay], pool: SmtpPool) -> None:
    relay = make_relay(starttls=True)

    await send(pool, relay, account=relay.account(use_tls=True))

    [got] = await relay.wait_for(1)
    assert got.tls


async def test_credentials_without_starttls_are_refused(
    make_relay: Callable[..., Relay], pool: SmtpPool
) -> None:
    relay = make_relay(auth=(USER, PASSWORD), auth_require_tls=False)
    account = relay.account(use_tls=None, user=USER, password=PASSWORD)

    with pytest.raises(PermanentFailure) as info:
        await send(pool, relay, account=account)

    assert str(info.value) == "relay does not offer STARTTLS"
    assert relay.logins == []


async def test_use_tls_none_without_credentials_falls_back_to_plain(
    relay: Relay, pool: SmtpPool
) -> None:
    await send(pool, relay, account=relay.account(use_tls=None))

    [got] = await relay.wait_for(1)
    assert not got.tls


async def test_use_tls_true_requires_starttls(relay: Relay, pool: SmtpPool) -> None:
    with pytest.raises(PermanentFailure, match="relay does not offer STARTTLS"):
        await send(pool, relay, account=relay.account(use_tls=True))


async def test_use_tls_false_never_upgrades_and_may_log_in_plain(
    make_relay: Callable[..., Relay], pool: SmtpPool
) -> None:
    relay = make_relay(starttls=True, auth=(USER, PASSWORD), auth_require_tls=False)
    account = relay.account(use_tls=False, user=USER, password=PASSWORD)

    await send(pool, relay, account=account)

    [got] = await relay.wait_for(1)
    assert not got.tls
    assert got.login == USER
    assert relay.commands["EHLO"] == 1


async def test_bad_password_is_permanent_535(
    make_relay: Callable[..., Relay], pool: SmtpPool
) -> None:
    relay = make_relay(starttls=True, auth=(USER, PASSWORD))
    account = relay.account(use_tls=None, user=USER, password="wrong")

    with pytest.raises(PermanentFailure) as info:
        await send(pool, relay, account=account)

    assert info.value.code == 535
    assert str(info.value).startswith("535 5.7.8")
    assert relay.messages == []


async def test_untrusted_certificate_is_permanent(
    make_relay: Callable[..., Relay], make_pool: PoolFactory
) -> None:
    relay = make_relay(starttls=True)
    pool = make_pool(tls_verify=True)

    with pytest.raises(PermanentFailure, match="certificate"):
        await send(pool, relay, account=relay.account(use_tls=True))


def _port_465_free() -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio servers do
        try:
            sock.bind(("127.0.0.1", 465))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not _port_465_free(), reason="needs 127.0.0.1:465")
async def test_implicit_tls_on_port_465(make_relay: Callable[..., Relay], pool: SmtpPool) -> None:
    relay = make_relay(port=465, implicit_tls=True, auth=(USER, PASSWORD))

    await send(pool, relay, account=relay.account(use_tls=None, user=USER, password=PASSWORD))

    [got] = await relay.wait_for(1)
    assert got.tls and got.login == USER


# -- extensions ----------------------------------------------------------------------------


async def test_smtputf8_not_advertised_is_permanent(relay: Relay, pool: SmtpPool) -> None:
    relay.smtputf8 = False

    with pytest.raises(PermanentFailure) as info:
        await send(pool, relay, recipients=["jörg@example.org"], smtputf8=True)

    assert str(info.value) == "relay does not support SMTPUTF8"
    assert relay.commands["MAIL"] == 0


async def test_smtputf8_is_used_when_advertised(relay: Relay, pool: SmtpPool) -> None:
    await send(
        pool, relay, sender="zoë@example.com", recipients=["jörg@example.org"], smtputf8=True
    )

    [got] = await relay.wait_for(1)
    assert got.mail_from == "zoë@example.com"
    assert got.rcpt_tos == ("jörg@example.org",)
    assert "SMTPUTF8" in got.mail_options


async def test_8bitmime(relay: Relay, pool: SmtpPool) -> None:
    body = "Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\nciao è\r\n".encode()
    await send(pool, relay, data=body, eightbit=True)

    [got] = await relay.wait_for(1)
    assert "BODY=8BITMIME" in got.mail_options
    assert got.content == body

    relay.eightbit = False
    pool.discard("t1", "a1")
    with pytest.raises(PermanentFailure, match="relay does not support 8BITMIME"):
        await send(pool, relay, data=body, eightbit=True)
