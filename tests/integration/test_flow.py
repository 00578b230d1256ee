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
