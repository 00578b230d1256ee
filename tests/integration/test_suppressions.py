"""Suppression list (§12.3, §12.4) over HTTP, and its effect on REST and SMTP sends."""

from __future__ import annotations

import time
from typing import Any

import aiosmtplib
import pytest

from tests.conftest import Api, ApiFactory, eventually, message
from tests.endpoint import EndpointFactory
from tests.relay import HOST, Relay, free_port

PATH = "/tenant/{}/suppressions"


async def suppressions(api: Api, tenant_id: str = "acme", **params: Any) -> Any:
    return await api.ok("GET", PATH.format(tenant_id), params=params or None)


async def status_of(api: Api, msg_id: str) -> dict[str, Any]:
    found = {m["id"]: m for m in await api.messages(include_history="true")}
    return found.get(msg_id, {})


async def test_add_list_remove_with_the_contract_shape(api: Api) -> None:
    await api.tenant("acme")
    before = int(time.time())
    body = await api.ok("POST", PATH.format("acme"),
                        json={"addresses": ["A@Example.org", "Bob <b@example.org>",
                                            "a@example.org"], "reason": "unsubscribed"})
    assert body == {"ok": True, "added": 2}
    again = await api.ok("POST", PATH.format("acme"), json={"addresses": ["a@EXAMPLE.org"]})
    assert again == {"ok": True, "added": 0}
    listed = await suppressions(api)
    assert listed["ok"] is True and listed["total"] == 2
    first = next(s for s in listed["suppressions"] if s["address"] == "a@example.org")
    assert first == {"address": "a@example.org", "reason": "unsubscribed", "source": "manual",
                     "bounce_type": None, "bounce_code": None, "message_id": None,
                     "created_ts": first["created_ts"]}
    assert before <= first["created_ts"] <= int(time.time())
    one = await suppressions(api, address="B@example.org")
    assert [s["address"] for s in one["suppressions"]] == ["b@example.org"]
    page = await suppressions(api, limit="1", offset="1")
    assert page["total"] == 2 and len(page["suppressions"]) == 1
    removed = await api.ok("DELETE", PATH.format("acme"), json={"addresses": ["A@example.org"]})
    assert removed == {"ok": True, "removed": 1}
    by_query = await api.ok("DELETE", PATH.format("acme"), params={"address": "b@example.org"})
    assert by_query == {"ok": True, "removed": 1}
    assert (await suppressions(api))["total"] == 0


async def test_scope_and_bad_input(api: Api) -> None:
    token = await api.tenant("acme")
    await api.tenant("beta")
    own = api.as_token(token)
    assert (await own.ok("POST", PATH.format("acme"), json={"addresses": ["x@y.org"]}))[
        "added"] == 1
    status, body = await own.call("GET", PATH.format("beta"))
    assert (status, body) == (403, {"detail": "Token not authorized for this tenant"})
    status, _ = await own.call("POST", PATH.format("beta"), json={"addresses": ["x@y.org"]})
    assert status == 403
    status, _ = await own.call("DELETE", PATH.format("beta"), json={"addresses": ["x@y.org"]})
    assert status == 403
    assert (await api.call("GET", PATH.format("nobody")))[0] == 404
    assert (await api.as_token(None).call("GET", PATH.format("acme")))[0] == 401
    status, body = await api.call("POST", PATH.format("acme"), json={"addresses": ["nope"]})
    assert (status, body) == (400, {"detail": "invalid address: nope"})
    status, body = await api.call("POST", PATH.format("acme"), json={"addresses": "x@y.org"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "addresses"]
    assert (await api.call("GET", PATH.format("acme"), params={"limit": "-1"}))[0] == 422
    # Beta's list is untouched by everything above.
    assert (await suppressions(api, "beta"))["total"] == 0


async def test_rest_send_to_suppressed_recipients(
    api: Api, relay: Relay, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.account(relay)
    await api.ok("POST", PATH.format("acme"), json={"addresses": ["dead@example.org"]})
    await api.send(message(1, to=["Dead@example.org"]),
                   message(2, to=["dead@example.org", "live@example.org"]))
    [got] = await relay.wait_for(1)
    assert list(got.rcpt_tos) == ["live@example.org"]
    await eventually(lambda: _final(api, "m1"), timeout=10)
    one = await status_of(api, "m1")
    assert one["status"] == "suppressed" and one["error"] == "suppressed"
    assert one["history"][-1]["event_type"] == "error"
    assert one["history"][-1]["description"] == "suppressed"
    await eventually(lambda: _final(api, "m2"), timeout=10)
    assert (await status_of(api, "m2"))["status"] == "sent"
    items = {i["id"]: i for i in await endpoint.wait_items(2)}
    assert items["m1"]["error"] == "suppressed"
    assert items["m2"]["failed_recipients"] == [
        {"address": "dead@example.org", "code": None, "reason": "suppressed"}]


async def _final(api: Api, msg_id: str) -> bool:
    return (await status_of(api, msg_id)).get("status") in ("sent", "suppressed", "error")


async def test_smtp_rcpt_of_a_suppressed_address_is_refused(
    make_api: ApiFactory, relay: Relay
) -> None:
    port = free_port()
    api = await make_api(smtp_port=port)
    token = await api.tenant("acme")
    await api.account(relay)
    await api.ok("POST", PATH.format("acme"), json={"addresses": ["dead@example.org"]})
    smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.auth_plain("acme/main", token)
    await smtp.mail("sender@acme.test")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await smtp.rcpt("DEAD@example.org")
    assert refused.value.code == 550 and refused.value.message.startswith("5.7.1")
    await smtp.rcpt("live@example.org")
    await smtp.data(b"From: sender@acme.test\r\nTo: live@example.org\r\nSubject: s\r\n\r\nhi\r\n")
    await smtp.quit()
    [got] = await relay.wait_for(1)
    assert list(got.rcpt_tos) == ["live@example.org"]
