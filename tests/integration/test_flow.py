"""The core flow over real HTTP into a real relay."""

from __future__ import annotations

import email
from email import policy

from tests.conftest import Api, message
from tests.relay import Relay


async def test_message_posted_is_delivered_to_the_relay(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    body = await api.send(message(1, cc="Carol <carol@example.org>", bcc=["hidden@example.org"]))
    assert body == {"ok": True, "queued": 1, "rejected": []}
    [got] = await relay.wait_for(1)
    assert got.mail_from == "sender@acme.test"
    assert sorted(got.rcpt_tos) == ["carol@example.org", "hidden@example.org", "rcpt@example.org"]
    parsed = email.message_from_bytes(got.content, policy=policy.default)
    assert parsed["Subject"] == "Hello 1"
    assert parsed["Bcc"] is None
    assert "hidden@example.org" not in got.content.decode()
    [record] = await api.messages()
    assert parsed["X-Mail-Proxy-ID"] == record["pk"]
    assert parsed["X-Genro-Mail-ID"] == "m1"


async def test_a_composed_message_with_8bit_bytes_is_declared_8bitmime(
    api: Api, relay: Relay
) -> None:
    # The Message-ID is used as given (§4.2), UTF-8 included: composed mail is not always 7-bit.
    await api.tenant()
    await api.account(relay)
    await api.send(message(1, message_id="<zoë@acme.test>"), message(2))
    got = {m.content.split(b"Subject: ", 1)[1][:7]: m for m in await relay.wait_for(2)}
    assert "BODY=8BITMIME" in got[b"Hello 1"].mail_options
    assert "<zo\u00eb@acme.test>".encode() in got[b"Hello 1"].content
    assert "BODY=8BITMIME" not in got[b"Hello 2"].mail_options
