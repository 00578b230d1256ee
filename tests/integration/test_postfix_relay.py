"""SmtpPool against a real Postfix relay (which advertises PIPELINING), started privately.

Postfix listens on 127.0.0.1 and relays to an aiosmtpd sink on loopback (tests/postfix.py).
Its restrictions are set to refuse chosen senders and recipients at each step, so that
every reply class is Postfix's own: with the default smtpd_delay_reject, sender refusals
arrive at RCPT; a too large SIZE is refused at MAIL; smtpd_data_restrictions answer DATA;
smtpd_end_of_data_restrictions answer the content. Every test runs twice: with Postfix's
CHUNKING on (MAIL, RCPT, BDAT and the content in one write) and off (smtpd_discard_ehlo_keywords;
MAIL, RCPT and DATA in one write, the content after the 354). Skipped when Postfix is not
installed, failed under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from mailproxy.delivery import SmtpPool
from mailproxy.errors import DeliveryError, PermanentFailure, RecipientFailure, TemporaryFailure
from mailproxy.model import Account
from tests import postfix
from tests.relay import Relay

MESSAGE = (b"From: a@example.com\r\nTo: b@example.org\r\nSubject: via postfix\r\n\r\n"
           b"first\r\n.a line with a dot\r\nlast\r\n")


def _inline(entries: dict[str, str]) -> str:
    return "inline:{ " + ", ".join(f"{{ {k} = {v} }}" for k, v in entries.items()) + " }"


RESTRICTIONS = {
    "smtpd_sender_restrictions": "check_sender_access " + _inline({
        "refused@example.com": "553 5.7.1 sender refused",
        "later@example.com": "451 4.7.1 sender later"}),
    "smtpd_recipient_restrictions": "check_recipient_access " + _inline({
        "unknown@example.org": "550 5.1.1 no such user",
        "full@example.org": "452 4.2.2 mailbox full"}) + ", permit_mynetworks, reject",
    "smtpd_data_restrictions": "check_sender_access " + _inline({
        "nodata@example.com": "554 5.7.1 no data for you",
        "datalater@example.com": "451 4.3.0 data later"}),
    "smtpd_end_of_data_restrictions": "check_sender_access " + _inline({
        "eodrefused@example.com": "554 5.7.1 refused after the content",
        "eodlater@example.com": "451 4.3.0 later after the content"}),
    "message_size_limit": "100000",
}


@pytest.fixture(scope="module")
def sink() -> Iterator[Relay]:
    with Relay() as relay:
        yield relay


@pytest.fixture(scope="module", params=["chunking", "no-chunking"])
def relay_postfix(request: pytest.FixtureRequest, sink: Relay
                  ) -> Iterator[postfix.PrivatePostfix]:
    settings = dict(RESTRICTIONS)
    if request.param == "no-chunking":
        settings["smtpd_discard_ehlo_keywords"] = "chunking"
    try:
        if not postfix.available():
            raise RuntimeError("postfix is not installed (apt-get install postfix)")
        started = postfix.PrivatePostfix(sink.port, settings).start()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postfix is required under CI=true: {exc}")
        pytest.skip(f"Postfix not available: {exc}")
    yield started
    started.stop()


@pytest.fixture
async def pool() -> AsyncIterator[SmtpPool]:
    smtp = SmtpPool(pool_size=1, connect_timeout=10, send_timeout=10, local_hostname="client.test")
    yield smtp
    await smtp.close()


@pytest.fixture
def account(relay_postfix: postfix.PrivatePostfix, sink: Relay) -> Account:
    sink.reset()
    return Account("t1", "a1", "127.0.0.1", relay_postfix.port, use_tls=False)


async def test_postfix_offers_pipelining_and_relays_byte_for_byte(
    pool: SmtpPool, account: Account, sink: Relay, relay_postfix: postfix.PrivatePostfix
) -> None:
    refused = await pool.send(account, "a@example.com", ["b@example.org", "c@example.org"],
                              MESSAGE)

    assert refused == ()
    [got] = await sink.wait_for(1, timeout=30)
    assert got.rcpt_tos == ("b@example.org", "c@example.org")
    assert got.content.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])
    assert b"\r\nSubject: via postfix\r\n" in got.content
    [conn] = next(iter(pool._pools.values())).idle  # the pooled connection
    assert conn.pipelining
    assert conn.chunking == ("smtpd_discard_ehlo_keywords" not in relay_postfix.extra_main)


async def test_composed_pieces_go_out_whole_with_and_without_chunking(
    pool: SmtpPool, account: Account, sink: Relay
) -> None:
    # Composed mail is sent as its pieces (no joined copy); a dot that starts a line at a
    # piece boundary is stuffed for DATA and sent as is with BDAT.
    pieces = [b"From: a@example.com\r\nSubject: pieces\r\n\r\nfirst\r\n", b".dot line\r\n",
              (b"x" * 70 + b"\r\n") * 70, b"last\r\n"]
    assert await pool.send(account, "a@example.com", ["b@example.org"], pieces,
                           crlf=True) == ()
    [got] = await sink.wait_for(1, timeout=30)
    assert got.content.endswith(b"".join(pieces).split(b"\r\n\r\n", 1)[1])


async def test_partial_refusal(pool: SmtpPool, account: Account, sink: Relay) -> None:
    refused = await pool.send(account, "a@example.com",
                              ["unknown@example.org", "ok@example.org"], MESSAGE)

    assert refused == (RecipientFailure(
        "unknown@example.org", 550,
        "5.1.1 <unknown@example.org>: Recipient address rejected: no such user"),)
    [got] = await sink.wait_for(1, timeout=30)
    assert got.rcpt_tos == ("ok@example.org",)


CASES = [
    # sender, recipients, failure kind, reply
    ("a@example.com", ["unknown@example.org"], PermanentFailure, "550 5.1.1 no such user"),
    ("a@example.com", ["unknown@example.org", "full@example.org"], TemporaryFailure,
     "452 4.2.2 mailbox full"),
    ("refused@example.com", ["b@example.org"], PermanentFailure, "553 5.7.1 sender refused"),
    ("later@example.com", ["b@example.org"], TemporaryFailure, "451 4.7.1 sender later"),
    ("nodata@example.com", ["b@example.org"], PermanentFailure, "554 5.7.1 no data for you"),
    ("datalater@example.com", ["b@example.org"], TemporaryFailure, "451 4.3.0 data later"),
    ("eodrefused@example.com", ["b@example.org"], PermanentFailure,
     "554 5.7.1 refused after the content"),
    ("eodlater@example.com", ["b@example.org"], TemporaryFailure,
     "451 4.3.0 later after the content"),
]


@pytest.mark.parametrize(("sender", "recipients", "kind", "reply"), CASES)
async def test_postfix_reply_classes(
    pool: SmtpPool, account: Account, sink: Relay, sender: str, recipients: list[str],
    kind: type[DeliveryError], reply: str,
) -> None:
    with pytest.raises(kind) as info:
        await pool.send(account, sender, recipients, MESSAGE)

    assert info.value.code == int(reply[:3])
    text = str(info.value)  # Postfix puts the address and the rule in front of our text
    assert text.startswith(reply[:10]) and text.endswith(reply[10:]), text
    # the connection is back in step: the next message on it goes through
    assert await pool.send(account, "a@example.com", ["b@example.org"], MESSAGE) == ()
    await sink.wait_for(1, timeout=30)
    assert len(sink.messages) == 1


async def test_size_over_the_limit_is_refused_at_mail(pool: SmtpPool, account: Account) -> None:
    big = MESSAGE + b"x" * 200_000 + b"\r\n"

    with pytest.raises(PermanentFailure) as info:
        await pool.send(account, "a@example.com", ["b@example.org"], big)

    assert info.value.code == 552


async def test_one_connection_carries_every_transaction(
    pool: SmtpPool, account: Account, sink: Relay, relay_postfix: postfix.PrivatePostfix
) -> None:
    for _ in range(5):
        await pool.send(account, "reuse@example.com", ["b@example.org"], MESSAGE)
    with pytest.raises(PermanentFailure):
        await pool.send(account, "reuse@example.com", ["unknown@example.org"], MESSAGE)
    await pool.close()

    await sink.wait_for(5, timeout=30)
    deadline = time.monotonic() + 10
    data = "data" if "smtpd_discard_ehlo_keywords" in relay_postfix.extra_main else "bdat"
    pattern = re.compile(rf"disconnect from \S+ ehlo=1 mail=6 rcpt=5/6 {data}=5/6 rset=1 quit=1")
    while not pattern.search(relay_postfix.log_text()):
        assert time.monotonic() < deadline, relay_postfix.log_text()[-1500:]
        time.sleep(0.1)


async def test_messages_sent_at_once_on_one_connection_each_get_their_own_outcome(
    pool: SmtpPool, account: Account, sink: Relay
) -> None:
    """Six messages at once through one connection: without CHUNKING each one's commands
    go out behind the content before it. Postfix keeps the transaction open after refusing
    a content (the next MAIL meets 503 "nested MAIL command"); the messages around the
    refused ones are delivered all the same, each exactly once, and the refused ones get
    Postfix's own replies."""
    senders = ["one@example.com", "eodrefused@example.com", "two@example.com",
               "eodlater@example.com", "three@example.com", "four@example.com"]

    results = await asyncio.gather(
        *(pool.send(account, sender, ["b@example.org"], MESSAGE) for sender in senders),
        return_exceptions=True)

    outcomes = dict(zip(senders, results, strict=True))
    refused, later = outcomes.pop("eodrefused@example.com"), outcomes.pop("eodlater@example.com")
    assert isinstance(refused, PermanentFailure) and refused.code == 554
    assert isinstance(later, TemporaryFailure) and later.code == 451
    assert list(outcomes.values()) == [(), (), (), ()]
    got = await sink.wait_for(4, timeout=30)
    await asyncio.sleep(0.5)  # a duplicate would have arrived by now
    assert sorted(m.mail_from for m in sink.messages) == sorted(outcomes)
    assert len(got) == 4
