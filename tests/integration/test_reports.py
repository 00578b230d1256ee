"""Delivery reports (§8) against a real tenant endpoint on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

from mailproxy.reports import Reporter
from tests.conftest import Api, ApiFactory, FakeClock, message
from tests.endpoint import EndpointFactory, closed_port
from tests.relay import Relay

NOW = 1_767_000_000.0


def reporter(api: Api) -> Reporter:
    return api.parts.reporter  # type: ignore[attr-defined,no-any-return]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def record(api: Api, msg_id: str, tenant_id: str = "acme") -> dict[str, Any]:
    found = await api.messages(tenant_id, include_history="true")
    return next(m for m in found if m["id"] == msg_id)


async def sync_status(api: Api, tenant_id: str = "acme") -> dict[str, Any]:
    body = await api.ok("GET", "/tenants/sync-status")
    return next(t for t in body["tenants"] if t["id"] == tenant_id)


def bad(i: int, tenant_id: str = "acme") -> dict[str, Any]:
    """A message rejected at intake: stored as error with one reportable event, no relay."""
    return message(i, tenant_id=tenant_id, subject="")


async def post_bad(api: Api, *ids: int, tenant_id: str = "acme") -> None:
    status, _ = await api.call("POST", "/commands/add-messages",
                               json={"messages": [bad(i, tenant_id) for i in ids]})
    assert status == 400


# -- shapes, auth, signature, ack ---------------------------------------------------------------

async def test_every_event_kind_is_reported_with_the_contract_shape_and_acknowledged(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    api = await make_api(retry_base_seconds=3600)
    await api.tenant(client_base_url=endpoint.base_url + "/",
                     client_auth={"method": "bearer", "token": "tenant-bearer"})
    await api.account(relay)
    relay.rcpt_replies["gone@example.org"] = "550 5.1.1 user unknown"
    relay.rcpt_replies["later@example.org"] = "451 4.7.1 try later"
    await api.send(
        message(1),
        message(2, to=["rcpt@example.org", "gone@example.org"]),
        message(3, to=["gone@example.org"]),
        message(4, to=["later@example.org"]),
    )
    await post_bad(api, 5)
    items = await endpoint.wait_items(5)
    by_id = {item["id"]: item for item in items}
    common = {"tenant_id": "acme", "account_id": "main"}
    assert {k: by_id["m1"][k] for k in ("tenant_id", "account_id")} == common
    assert set(by_id["m1"]) == {"id", "event_id", "tenant_id", "account_id", "sent_ts"}
    assert by_id["m2"]["failed_recipients"] == [
        {"address": "gone@example.org", "code": 550, "reason": "5.1.1 user unknown"}]
    assert set(by_id["m3"]) == {"id", "event_id", "tenant_id", "account_id", "error_ts",
                                "error", "error_code"}
    assert by_id["m3"]["error_code"] == 550
    assert by_id["m4"]["deferred_reason"].startswith("451")
    assert by_id["m4"]["retry_count"] == 1
    assert by_id["m4"]["next_attempt_ts"] > by_id["m4"]["deferred_ts"]
    assert by_id["m5"] == {"id": "m5", "event_id": by_id["m5"]["event_id"], "tenant_id": "acme",
                           "account_id": "main", "error_ts": by_id["m5"]["error_ts"],
                           "error": "missing subject", "error_code": None}
    call = endpoint.calls[0]
    assert call.path == "/mail-proxy/sync"
    assert call.headers["Authorization"] == "Bearer tenant-bearer"
    assert call.headers["User-Agent"] == "mailproxy/1.0.0"
    assert call.headers["Content-Type"] == "application/json"
    assert "X-Mail-Proxy-Signature" not in call.headers
    ids = [int(item["event_id"]) for item in items]
    assert ids == sorted(ids), "items go out in event order"

    async def all_acked() -> bool:
        records = await api.messages(include_history="true")
        return all(m["reported_ts"] is not None and
                   all(h["reported_ts"] is not None for h in m["history"]) for m in records)

    await wait_until(all_acked)
    m1 = await record(api, "m1")
    assert m1["history"][0]["event_id"] == by_id["m1"]["event_id"]

    async def synced() -> bool:  # recorded just after the acknowledgement, not with it
        return (await sync_status(api))["last_sync_ts"] is not None

    await wait_until(synced)


async def test_signature_is_an_hmac_of_the_exact_body_bytes(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    api = await make_api()
    await api.tenant(client_base_url=endpoint.base_url, client_sync_path="/hooks/mail",
                     webhook_secret="whsec-signing-key",
                     client_auth={"method": "basic", "user": "u1", "password": "p1"})
    await post_bad(api, 1)
    await endpoint.wait_items(1)
    call = endpoint.calls[0]
    assert call.path == "/hooks/mail"
    assert call.headers["Authorization"] == "Basic " + base64.b64encode(b"u1:p1").decode()
    header = call.headers["X-Mail-Proxy-Signature"]
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(b"whsec-signing-key", parts["t"].encode() + b"." + call.body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert abs(int(parts["t"]) - time.time()) < 60


async def test_fallback_url_gets_reports_of_tenants_without_a_base_url(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    api = await make_api(client_sync_url=endpoint.base_url + "/central",
                         client_sync_token="central-token")
    await api.tenant(client_sync_path="/not-appended")
    await post_bad(api, 1)
    await endpoint.wait_items(1)
    assert endpoint.calls[0].path == "/central"
    assert endpoint.calls[0].headers["Authorization"] == "Bearer central-token"


async def test_without_any_target_events_are_marked_reported(make_api: ApiFactory) -> None:
    api = await make_api()
    await api.tenant()
    await post_bad(api, 1)

    async def reported() -> bool:
        return (await record(api, "m1"))["reported_ts"] is not None

    await wait_until(reported)


async def test_more_than_1000_events_go_in_consecutive_posts_in_order(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    api = await make_api()
    # A target that refuses connections, so that the events wait (a tenant without any
    # target has its events reported when they are created).
    await api.tenant(client_base_url=f"http://127.0.0.1:{closed_port()}")
    await post_bad(api, *range(0, 700))
    await post_bad(api, *range(700, 1300))
    await api.ok("PUT", "/tenant/acme", json={"client_base_url": endpoint.base_url})
    await api.ok("POST", "/commands/run-now", params={"tenant_id": "acme"})
    items = await endpoint.wait_items(1300)
    sizes = [len(c.items) for c in endpoint.calls if c.items]
    assert sizes == [1000, 300]
    assert [i["id"] for i in items] == [f"m{i}" for i in range(1300)]


# -- failures, backoff, isolation ---------------------------------------------------------------

async def test_failure_backs_off_without_ack_and_run_now_retries(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    endpoint.status = 500
    api = await make_api()
    await api.tenant(client_base_url=endpoint.base_url)
    await post_bad(api, 1)
    await endpoint.wait_calls(1)

    async def failed() -> bool:
        return (await sync_status(api))["consecutive_failures"] == 1

    await wait_until(failed)
    status = await sync_status(api)
    assert status["last_error"] == "HTTP 500"
    assert status["retry_at"] is not None and status["retry_at"] >= time.time() + 1
    assert status["pending_events"] == 1
    assert (await record(api, "m1"))["reported_ts"] is None
    await asyncio.sleep(1.0)
    assert len(endpoint.calls) == 1, "no call while backing off"

    endpoint.status = 200
    await api.ok("POST", "/commands/run-now", params={"tenant_id": "acme"})
    await endpoint.wait_calls(2)

    async def acked() -> bool:
        return (await record(api, "m1"))["reported_ts"] is not None

    await wait_until(acked)
    status = await sync_status(api)
    assert (status["consecutive_failures"], status["retry_at"], status["last_error"]) == (
        0, None, None)
    assert [[i["id"] for i in c.items] for c in endpoint.calls] == [["m1"], ["m1"]]


async def test_redirects_are_not_followed_and_count_as_failures(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    endpoint.status = 302
    api = await make_api()
    await api.tenant(client_base_url=endpoint.base_url)
    await post_bad(api, 1)

    async def failed() -> bool:
        return (await sync_status(api))["last_error"] == "HTTP 302"

    await wait_until(failed)
    assert [c.path for c in endpoint.calls] == ["/mail-proxy/sync"]


async def test_a_hanging_and_a_refusing_tenant_do_not_delay_a_healthy_one(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    hanging, healthy = await make_endpoint(), await make_endpoint()
    hanging.hang = True
    api = await make_api(report_timeout_seconds=20)
    await api.tenant("slow", client_base_url=hanging.base_url)
    await api.tenant("dead", client_base_url=f"http://127.0.0.1:{closed_port()}")
    await api.tenant("fine", client_base_url=healthy.base_url)
    await post_bad(api, 1, tenant_id="slow")
    await hanging.wait_calls(1)
    await post_bad(api, 2, tenant_id="dead")
    await post_bad(api, 3, tenant_id="fine")
    started = time.monotonic()
    [item] = await healthy.wait_items(1, timeout=5)
    assert item["id"] == "m3"
    assert time.monotonic() - started < 5
    assert not hanging.release.is_set()

    async def dead_failed() -> bool:
        return (await sync_status(api, "dead"))["consecutive_failures"] >= 1

    await wait_until(dead_failed)
    assert (await sync_status(api, "dead"))["last_error"].startswith("connection failed")
    assert (await record(api, "m1", "slow"))["reported_ts"] is None


async def test_timeout_is_a_failure(make_api: ApiFactory, make_endpoint: EndpointFactory) -> None:
    endpoint = await make_endpoint()
    endpoint.hang = True
    api = await make_api(report_timeout_seconds=0.5)
    await api.tenant(client_base_url=endpoint.base_url)
    await post_bad(api, 1)

    async def timed_out() -> bool:
        return (await sync_status(api))["last_error"] == "timeout after 0.5 s"

    await wait_until(timed_out)
    assert (await record(api, "m1"))["reported_ts"] is None


# -- private-address rule -----------------------------------------------------------------------

async def test_a_target_written_by_the_tenant_may_not_reach_loopback(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    api = await make_api()
    key = await api.tenant()
    port = endpoint.base_url.rsplit(":", 1)[1]
    await api.as_token(key).ok("PUT", "/tenant/acme",
                               json={"client_base_url": f"http://localhost:{port}"})
    await post_bad(api, 1)

    async def refused() -> bool:
        return "refused" in ((await sync_status(api))["last_error"] or "")

    await wait_until(refused)
    assert endpoint.calls == []
    await api.as_token(key).ok("PUT", "/tenant/acme", json={"client_base_url": endpoint.base_url})
    await api.ok("POST", "/commands/run-now", params={"tenant_id": "acme"})
    await wait_until(lambda: _failures_at_least(api, 2))
    assert endpoint.calls == []
    # The same URL written by the admin token is trusted.
    await api.ok("PUT", "/tenant/acme", json={"client_base_url": endpoint.base_url})
    await api.ok("POST", "/commands/run-now", params={"tenant_id": "acme"})
    await endpoint.wait_items(1)


async def _failures_at_least(api: Api, n: int) -> bool:
    return int((await sync_status(api))["consecutive_failures"]) >= n


async def test_allow_private_lets_a_tenant_written_target_through(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    endpoint = await make_endpoint()
    api = await make_api(attachment_allow_private="127.0.0.0/8")
    key = await api.tenant()
    port = endpoint.base_url.rsplit(":", 1)[1]
    await api.as_token(key).ok("PUT", "/tenant/acme",
                               json={"client_base_url": f"http://localhost:{port}"})
    await post_bad(api, 1)
    await endpoint.wait_items(1)


# -- heartbeats, do-not-disturb, resync (injected clock) -----------------------------------------

async def test_heartbeats_follow_the_interval_and_respect_do_not_disturb(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    clock = FakeClock(NOW)
    endpoint = await make_endpoint()
    api = await make_api(clock=clock)
    await api.tenant(client_base_url=endpoint.base_url)
    rep = reporter(api)
    await rep.sync_once()
    assert len(endpoint.heartbeats()) == 1, "a tenant never called gets a heartbeat"
    await rep.sync_once()
    clock.advance(299)
    await rep.sync_once()
    assert len(endpoint.calls) == 1
    assert (await sync_status(api))["next_sync_ts"] == int(NOW) + 300

    endpoint.reply = {"ok": True, "next_sync_after": int(clock.now()) + 3600}
    clock.advance(2)
    await rep.sync_once()
    assert len(endpoint.heartbeats()) == 2
    status = await sync_status(api)
    assert status["in_dnd"] is True and status["next_sync_due"] is False
    endpoint.reply = {"ok": True}
    clock.advance(1000)
    await rep.sync_once()
    assert len(endpoint.calls) == 2, "no heartbeat in do-not-disturb"

    await post_bad(api, 1)
    await rep.sync_once()
    assert [i["id"] for i in endpoint.items()] == ["m1"], "events still go out in DND"
    clock.advance(2700)
    await rep.sync_once()
    assert len(endpoint.heartbeats()) == 3, "heartbeats resume after the DND window"


async def test_do_not_disturb_is_clamped_to_a_day_and_run_now_clears_it(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    clock = FakeClock(NOW)
    endpoint = await make_endpoint()
    api = await make_api(clock=clock)
    key = await api.tenant(client_base_url=endpoint.base_url)
    endpoint.reply = {"next_sync_after": int(NOW) + 30 * 86400}
    rep = reporter(api)
    await rep.sync_once()
    endpoint.reply = {}
    clock.advance(86400 - 10)
    await rep.sync_once()
    assert len(endpoint.calls) == 1
    clock.advance(20)
    await rep.sync_once()
    assert len(endpoint.calls) == 2, "DND ends a day after the reply at the latest"

    endpoint.reply = {"next_sync_after": int(clock.now()) + 3600}
    clock.advance(300)
    await rep.sync_once()
    assert len(endpoint.calls) == 3
    assert (await sync_status(api))["in_dnd"] is True
    endpoint.reply = {}
    await api.as_token(key).ok("POST", "/commands/run-now")
    await rep.sync_once()
    assert len(endpoint.calls) == 4, "run-now calls the tenant at once"
    assert (await sync_status(api))["in_dnd"] is False


async def test_queued_in_the_reply_asks_for_another_sync(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    clock = FakeClock(NOW)
    endpoint = await make_endpoint()
    api = await make_api(clock=clock, sync_resync_delay=1)
    await api.tenant(client_base_url=endpoint.base_url)
    endpoint.reply = {"ok": True, "queued": 5}
    rep = reporter(api)
    await rep.sync_once()
    await rep.sync_once()
    assert len(endpoint.calls) == 1
    clock.advance(1.5)
    await rep.sync_once()
    assert len(endpoint.calls) == 2, "queued > 0: another call after the resync delay"
    endpoint.reply = {"ok": True, "queued": 0}
    clock.advance(1.5)
    await rep.sync_once()
    clock.advance(1.5)
    await rep.sync_once()
    assert len(endpoint.calls) == 3


async def test_inactive_tenants_get_reports_but_no_heartbeats(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    clock = FakeClock(NOW)
    endpoint = await make_endpoint()
    api = await make_api(clock=clock)
    await api.tenant(client_base_url=endpoint.base_url, active=False)
    rep = reporter(api)
    clock.advance(1000)
    await rep.sync_once()
    assert endpoint.calls == []
    await api.ok("PUT", "/tenant/acme", json={"active": True})
    await post_bad(api, 1)
    await api.ok("PUT", "/tenant/acme", json={"active": False})
    await rep.sync_once()
    assert [i["id"] for i in endpoint.items()] == ["m1"]


async def test_backoff_grows_and_holds_every_call(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    clock = FakeClock(NOW)
    endpoint = await make_endpoint()
    endpoint.status = 503
    api = await make_api(clock=clock)
    await api.tenant(client_base_url=endpoint.base_url)
    await post_bad(api, 1)
    rep = reporter(api)
    await rep.sync_once()
    first = await sync_status(api)
    assert first["consecutive_failures"] == 1
    assert NOW + 2 <= first["retry_at"] <= NOW + 5
    clock.advance(1)
    await rep.sync_once()
    assert len(endpoint.calls) == 1, "held during the backoff"
    clock.advance(5)
    await rep.sync_once()
    second = await sync_status(api)
    assert second["consecutive_failures"] == 2
    assert clock.now() + 5 <= second["retry_at"] <= clock.now() + 10
    endpoint.status = 200
    clock.advance(10)
    await rep.sync_once()
    assert (await sync_status(api))["consecutive_failures"] == 0
    assert (await record(api, "m1"))["reported_ts"] == int(clock.now())


# -- retention ----------------------------------------------------------------------------------

async def test_retention_purges_only_fully_acknowledged_final_messages(
    make_api: ApiFactory, make_endpoint: EndpointFactory, relay: Relay
) -> None:
    clock = FakeClock(NOW)
    good, failing = await make_endpoint(), await make_endpoint()
    failing.status = 500
    api = await make_api(clock=clock, report_retention_seconds=1000)
    await api.tenant("acme", client_base_url=good.base_url)
    await api.tenant("other", client_base_url=failing.base_url)
    await api.account(relay, tenant_id="acme")
    await post_bad(api, 1)
    await post_bad(api, 2, tenant_id="other")
    await api.send(message(3, deferred_ts=int(NOW) + 10**6))
    rep = reporter(api)
    await rep.sync_once()
    assert (await record(api, "m1"))["reported_ts"] == int(NOW)
    clock.advance(999)
    assert await rep.purge() == 0
    clock.advance(2)
    assert await rep.purge() == 1
    assert [m["id"] for m in await api.messages()] == ["m3"], "scheduled message kept"
    assert [m["id"] for m in await api.messages("other")] == ["m2"], "unreported kept"


async def test_cleanup_messages_purges_the_tenants_reported_messages(
    make_api: ApiFactory, make_endpoint: EndpointFactory
) -> None:
    clock = FakeClock(NOW)
    endpoint = await make_endpoint()
    api = await make_api(clock=clock)
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.tenant("other", client_base_url=endpoint.base_url)
    await post_bad(api, 1)
    await post_bad(api, 2, tenant_id="other")
    await reporter(api).sync_once()
    clock.advance(100)
    body = await api.ok("POST", "/commands/cleanup-messages", params={"tenant_id": "acme"})
    assert body == {"ok": True, "removed": 0}, "default threshold is the retention (7 days)"
    body = await api.ok("POST", "/commands/cleanup-messages", params={"tenant_id": "acme"},
                        json={"older_than_seconds": 50})
    assert body == {"ok": True, "removed": 1}
    assert await api.messages() == []
    assert len(await api.messages("other")) == 1
