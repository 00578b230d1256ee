"""Queue behaviour seen from outside: REST in, relay out, statuses and history back."""

from __future__ import annotations

import asyncio
import base64
import email
from email import policy
from typing import Any

from tests.conftest import Api, ApiFactory, FakeClock, eventually, message
from tests.relay import Relay


async def _status(api: Api, client_id: str, tenant: str = "acme") -> dict[str, Any]:
    for record in await api.messages(tenant, include_history="true"):
        if record["id"] == client_id:
            return record
    raise AssertionError(f"{client_id} not listed")


async def _wait_status(
    api: Api, client_id: str, status: str, timeout: float = 5.0
) -> dict[str, Any]:
    async def reached() -> bool:
        return (await _status(api, client_id))["status"] == status

    await eventually(reached, timeout)
    return await _status(api, client_id)


async def test_sent_message_has_sent_status_and_event(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    await api.send(message(1))
    record = await _wait_status(api, "m1", "sent")
    assert record["sent_ts"] is not None and record["error"] is None
    assert [h["event_type"] for h in record["history"]] == ["sent"]
    assert record["message"]["subject"] == "Hello 1"


async def test_temporary_failure_is_retried_then_delivered(make_api: ApiFactory,
                                                           relay: Relay) -> None:
    clock = FakeClock()
    api = await make_api(clock=clock)
    await api.tenant()
    await api.account(relay)
    relay.replies["DATA"] = "451 4.3.0 try again later"
    await api.send(message(1))
    record = await _wait_status(api, "m1", "deferred")
    assert record["retry_count"] == 1
    assert record["error"] is None
    [event] = record["history"]
    assert event["event_type"] == "deferred"
    assert event["description"] == "451 4.3.0 try again later"
    # full jitter: the first nominal delay is base (1 s in tests), so the retry is due in 1 s
    assert 1 <= record["deferred_ts"] - int(clock.now()) <= 1
    relay.replies.clear()
    clock.advance(2)
    api.parts.worker.wake()  # type: ignore[attr-defined]
    record = await _wait_status(api, "m1", "sent")
    assert [h["event_type"] for h in record["history"]] == ["deferred", "sent"]
    assert record["retry_count"] == 1


async def test_retries_exhausted_become_error(make_api: ApiFactory, relay: Relay) -> None:
    clock = FakeClock()
    api = await make_api(clock=clock, retry_max=2)
    await api.tenant()
    await api.account(relay)
    relay.replies["DATA"] = "452 4.2.2 mailbox full"
    await api.send(message(1))
    for expected in (1, 2):
        record = await _wait_status(api, "m1", "deferred")
        assert record["retry_count"] == expected
        clock.advance(10_000)
        api.parts.worker.wake()  # type: ignore[attr-defined]
        if expected == 1:
            await eventually(lambda: _retry_count_is(api, 2))
    record = await _wait_status(api, "m1", "error")
    assert record["error"] == "Max retries (2) exceeded: 452 4.2.2 mailbox full"
    assert [h["event_type"] for h in record["history"]] == ["deferred", "deferred", "error"]


async def _retry_count_is(api: Api, n: int) -> bool:
    return (await _status(api, "m1"))["retry_count"] == n


async def test_permanent_failure_is_not_retried(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    relay.replies["MAIL"] = "550 5.7.1 relaying denied"
    await api.send(message(1))
    record = await _wait_status(api, "m1", "error")
    assert record["error"] == "550 5.7.1 relaying denied"
    assert record["history"][0]["metadata"]["error_code"] == 550
    assert relay.accepted == 0


async def test_partial_refusal_is_sent_with_failed_recipients(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    relay.rcpt_replies["bad@example.org"] = "550 5.1.1 user unknown"
    await api.send(message(1, to=["good@example.org", "bad@example.org"]))
    record = await _wait_status(api, "m1", "sent")
    [got] = await relay.wait_for(1)
    assert list(got.rcpt_tos) == ["good@example.org"]
    failed = record["history"][0]["metadata"]["failed_recipients"]
    assert failed == [{"address": "bad@example.org", "code": 550,
                       "reason": "5.1.1 user unknown"}]


async def test_priorities_are_sent_immediate_first_then_fifo(make_api: ApiFactory,
                                                             relay: Relay) -> None:
    api = await make_api(send_concurrency_per_account=1)
    await api.tenant()
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    await api.account(relay)
    await api.send(message("low1", priority="low"), message("med1"), message("low2", priority=3),
                   message("imm", priority="immediate"), message("high", priority=1),
                   message("med2", priority="2"))
    await api.ok("POST", "/commands/activate", params={"tenant_id": "acme"})
    received = await relay.wait_for(6)
    order = [email.message_from_bytes(r.content)["X-Genro-Mail-ID"] for r in received]
    assert order == ["mimm", "mhigh", "mmed1", "mmed2", "mlow1", "mlow2"]


async def test_scheduled_message_waits_for_its_time(make_api: ApiFactory, relay: Relay) -> None:
    clock = FakeClock()
    api = await make_api(clock=clock)
    await api.tenant()
    await api.account(relay)
    await api.send(message(1, deferred_ts=int(clock.now()) + 3600))
    await asyncio.sleep(0.3)
    record = await _status(api, "m1")
    assert record["status"] == "scheduled" and relay.accepted == 0
    clock.advance(3601)
    assert (await _status(api, "m1"))["status"] in ("pending", "sending", "sent")
    api.parts.worker.wake()  # type: ignore[attr-defined]
    await _wait_status(api, "m1", "sent")


async def test_rate_limit_defers_to_when_the_window_frees(make_api: ApiFactory,
                                                          relay: Relay) -> None:
    clock = FakeClock(1_800_000_000)
    api = await make_api(clock=clock)
    await api.tenant()
    await api.account(relay, limit_per_minute=2)
    await api.send(*(message(i) for i in range(1, 5)))
    await relay.wait_for(2)
    await asyncio.sleep(0.3)
    assert relay.accepted == 2
    records = {r["id"]: r for r in await api.messages(include_history="true")}
    deferred = [r for r in records.values() if r["status"] == "deferred"]
    assert len(deferred) == 1
    assert deferred[0]["deferred_ts"] == 1_800_000_000 + 60
    assert deferred[0]["history"][0]["description"] == "rate_limit"
    assert deferred[0]["retry_count"] == 0
    clock.advance(61)
    api.parts.worker.wake()  # type: ignore[attr-defined]
    await relay.wait_for(4)
    times = sorted(r.time for r in relay.messages)
    assert len(times) == 4


async def test_rate_limit_reject_fails_the_excess(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay, limit_per_hour=1, limit_behavior="reject")
    await api.send(message(1), message(2))
    await relay.wait_for(1)
    await eventually(lambda: _any_error(api))
    records = {r["id"]: r for r in await api.messages(include_history="true")}
    errors = [r for r in records.values() if r["status"] == "error"]
    assert [r["error"] for r in errors] == ["rate_limit_exceeded"]
    assert errors[0]["history"][0]["metadata"]["error_code"] == 429


async def _any_error(api: Api) -> bool:
    return any(r["status"] == "error" for r in await api.messages())


async def test_suspended_batch_is_held_then_released(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    body = await api.ok("POST", "/commands/suspend",
                        params={"tenant_id": "acme", "batch_code": "promo"})
    assert body["suspended_batches"] == ["promo"]
    await api.send(message(1, batch_code="promo"), message(2))
    await relay.wait_for(1)
    await asyncio.sleep(0.2)
    assert relay.accepted == 1
    held = await _status(api, "m1")
    assert held["suspended"] is True and held["status"] == "pending"
    body = await api.ok("POST", "/commands/activate",
                        params={"tenant_id": "acme", "batch_code": "promo"})
    assert body["suspended_batches"] == []
    await relay.wait_for(2)


async def test_upsert_replaces_a_pending_message(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    await api.account(relay)
    await api.send(message(1, subject="first"))
    body = await api.send(message(1, subject="second"))
    assert body["queued"] == 1
    await api.ok("POST", "/commands/activate", params={"tenant_id": "acme"})
    [got] = await relay.wait_for(1)
    assert email.message_from_bytes(got.content)["Subject"] == "second"
    await _wait_status(api, "m1", "sent")
    again = await api.send(message(1))
    assert again == {"ok": True, "queued": 0,
                     "rejected": [{"id": "m1", "reason": "already sent", "index": 0}]}


async def test_invalid_messages_are_rejected_and_reported(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    body = await api.send(
        message(1),
        message(2, to=["not-an-address"]),
        message(3, account_id="nope"),
        message(4, subject=""),
        {"tenant_id": "acme"},
        message(6, headers={"X-Bad": "a\r\nBcc: x@evil.test"}),
        message(7, tenant_id="ghost"),
    )
    assert body["queued"] == 1
    assert body["rejected"] == [
        {"id": "m2", "reason": "invalid address in to: not-an-address", "index": 1},
        {"id": "m3", "reason": "account not found for tenant", "index": 2},
        {"id": "m4", "reason": "missing subject", "index": 3},
        {"id": None, "reason": "missing id", "index": 4},
        {"id": "m6", "reason": "invalid header: X-Bad", "index": 5},
        {"id": "m7", "reason": "tenant not found", "index": 6},
    ]
    stored = {r["id"]: r for r in await api.messages()}
    assert stored["m2"]["status"] == "error"
    assert stored["m2"]["error"] == "invalid address in to: not-an-address"
    assert "m7" not in stored
    # a valid re-post replaces a message rejected at intake
    again = await api.send(message(2))
    assert again["queued"] == 1


async def test_all_rejected_is_400(api: Api) -> None:
    await api.tenant()
    status, body = await api.call("POST", "/commands/add-messages",
                                  json={"messages": [message(1, tenant_id="ghost")]})
    assert status == 400
    assert body["detail"]["error"] == "no message queued"
    assert body["detail"]["rejected"][0]["reason"] == "tenant not found"


async def test_shape_errors_are_422_and_store_nothing(api: Api) -> None:
    await api.tenant()
    cases = [
        ({"messages": [message(1, priority=True)]}, ["body", "messages", 0, "priority"]),
        ({"messages": [message(1, id=42)]}, ["body", "messages", 0, "id"]),
        ({"messages": [message(1, attachments=[{"filename": "a", "storage_path": "b",
                                                  "extra": 1}])]},
         ["body", "messages", 0, "attachments", 0, "extra"]),
        ({"messages": ["not an object"]}, ["body", "messages", 0]),
    ]
    for payload, loc in cases:
        status, body = await api.call("POST", "/commands/add-messages", json=payload)
        assert status == 422, body
        assert body["detail"][0]["loc"][: len(loc)] == loc
    status, body = await api.call("POST", "/commands/add-messages", data=b"{not json")
    assert status == 422
    status, body = await api.call("POST", "/commands/add-messages",
                                  json={"messages": [message(i) for i in range(1001)]})
    assert (status, body) == (400, {"detail": "messages must be a list of at most 1000 items"})
    status, body = await api.call("POST", "/commands/add-messages",
                                  json={"default_priority": 7, "messages": []})
    assert (status, body) == (400, {"detail": "invalid default_priority"})
    assert await api.messages() == []


async def test_raw_message_is_sent_byte_for_byte(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    raw = (b"From: a@acme.test\r\nTo: b@example.org\r\nBcc: secret@example.org\r\n"
           b"Subject: raw\r\n\r\n.leading dot\r\nbody \xc3\xa9\r\n")
    await api.send({"id": "r1", "tenant_id": "acme", "account_id": "main",
                    "from": "a@acme.test", "to": ["b@example.org"],
                    "raw": base64.b64encode(raw).decode()})
    [got] = await relay.wait_for(1)
    assert got.content.endswith(b"Subject: raw\r\n\r\n.leading dot\r\nbody \xc3\xa9\r\n")
    assert b"Bcc" not in got.content
    parsed = email.message_from_bytes(got.content, policy=policy.default)
    assert parsed["X-Genro-Mail-ID"] == "r1"
    [record] = await api.messages()
    assert record["message"]["raw_size"] == len(raw) and "raw" not in record["message"]


async def test_delete_messages_reports_not_found(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    await api.account(relay)
    await api.send(message(1), message(2))
    body = await api.ok("POST", "/commands/delete-messages", params={"tenant_id": "acme"},
                        json={"ids": ["m1", "zz"]})
    assert body == {"ok": True, "removed": 1, "not_found": ["zz"], "unauthorized": []}
    assert [r["id"] for r in await api.messages()] == ["m2"]


async def test_deleting_an_account_fails_its_open_messages(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    await api.account(relay)
    await api.send(message(1))
    await api.ok("DELETE", "/account/main", params={"tenant_id": "acme"})
    record = await _status(api, "m1")
    assert (record["status"], record["error"]) == ("error", "account deleted")
    status, body = await api.call("DELETE", "/account/main", params={"tenant_id": "acme"})
    assert (status, body) == (404, {"detail": "account not found or not owned by tenant"})


async def test_tenant_token_is_scoped(api: Api, relay: Relay) -> None:
    acme = await api.tenant("acme")
    other = await api.tenant("other")
    await api.account(relay)
    await api.account(relay, tenant_id="other", account_id="o")
    mine = api.as_token(acme)
    body = await mine.send(message(1), message(2, tenant_id="other", account_id="o"))
    assert body["rejected"] == [{"id": "m2", "reason": "tenant not authorized", "index": 1}]
    status, body = await mine.call("GET", "/messages", params={"tenant_id": "other"})
    assert (status, body) == (403, {"detail": "Token not authorized for this tenant"})
    status, _ = await mine.call("GET", "/messages", params={"tenant_id": "ghost"})
    assert status == 403
    status, _ = await api.call("GET", "/messages", params={"tenant_id": "ghost"})
    assert status == 404
    status, body = await api.as_token(other).call("GET", "/tenants")
    assert (status, body) == (403, {"detail": "Admin token required"})
    status, body = await api.as_token("wrong").call("GET", "/messages",
                                                    params={"tenant_id": "acme"})
    assert (status, body) == (401, {"detail": "Invalid or missing API token"})
    status, body = await api.as_token(None).call("GET", "/status")
    assert status == 401
    status, body = await mine.call("GET", "/messages")
    assert status == 422
    assert body["detail"] == [{"loc": ["query", "tenant_id"], "msg": "Field required",
                               "type": "missing"}]


async def test_secrets_are_never_returned(api: Api, relay: Relay) -> None:
    await api.tenant("acme", client_auth={"method": "bearer", "token": "tok-SECRET-1"},
                     webhook_secret="hook-SECRET-2")
    await api.account(relay, user="u", password="pw-SECRET-3")
    tenant = await api.ok("GET", "/tenant/acme")
    accounts = await api.ok("GET", "/accounts", params={"tenant_id": "acme"})
    text = repr(tenant) + repr(accounts) + repr(await api.ok("GET", "/tenants"))
    for secret in ("tok-SECRET-1", "hook-SECRET-2", "pw-SECRET-3"):
        assert secret not in text
    assert tenant["has_client_secret"] and tenant["has_webhook_secret"]
    assert accounts["accounts"][0]["has_password"] is True
    db = (api.parts.settings.db_path)  # type: ignore[attr-defined]
    with open(db, "rb") as fh:
        content = fh.read()
    for secret in (b"tok-SECRET-1", b"hook-SECRET-2", b"pw-SECRET-3"):
        assert secret not in content


async def test_unknown_route_and_method(api: Api) -> None:
    status, body = await api.call("GET", "/nope")
    assert (status, body) == (404, {"detail": "Not Found"})
    status, body = await api.call("PATCH", "/tenants")
    assert (status, body) == (405, {"detail": "Method Not Allowed"})


async def test_health_and_status(api: Api) -> None:
    status, body = await api.as_token(None).call("GET", "/health")
    assert (status, body) == (200, {"status": "ok"})
    body = await api.ok("GET", "/status")
    assert body["ok"] is True and body["active"] is True and body["pending_messages"] == 0
    assert len(body["instance_id"]) == 12


async def test_a_tenant_sees_only_its_own_pending_count(api: Api, relay: Relay) -> None:
    acme = await api.tenant()
    await api.tenant("beta")
    for tenant_id in ("acme", "beta"):
        await api.ok("POST", "/commands/suspend", params={"tenant_id": tenant_id})
        await api.account(relay, tenant_id)
    await api.send(message(1), message(2), message(3, tenant_id="beta"))
    assert (await api.ok("GET", "/status"))["pending_messages"] == 3  # the admin: all
    assert (await api.as_token(acme).ok("GET", "/status"))["pending_messages"] == 2


async def test_base64_attachment_is_delivered_and_filesystem_needs_roots(
    api: Api, relay: Relay
) -> None:
    await api.tenant()
    await api.account(relay)
    data = base64.b64encode(b"%PDF-1.4 fake").decode()
    body = await api.send(
        message(1, attachments=[{"filename": "report.pdf", "storage_path": f"base64:{data}"}]),
        message(2, attachments=[{"filename": "a.txt", "storage_path": "/etc/hostname"}]),
    )
    assert body["rejected"] == [{"id": "m2", "index": 1, "reason":
                                 "invalid attachment: fetch_mode filesystem is not available "
                                 "on this instance (GMP_ATTACHMENT_ROOTS is not set)"}]
    [got] = await relay.wait_for(1)
    parsed = email.message_from_bytes(got.content, policy=policy.default)
    [part] = list(parsed.iter_attachments())
    assert part.get_filename() == "report.pdf"
    assert part.get_content() == b"%PDF-1.4 fake"
