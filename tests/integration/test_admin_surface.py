"""/instance, /instance/reload-bounce, the command log and its export (§3.6, §3.7)."""

from __future__ import annotations

import base64
import time

from tests.conftest import Api, ApiFactory, FakeClock, message
from tests.relay import Relay


async def test_instance_defaults_update_and_reload(api: Api) -> None:
    body = await api.ok("GET", "/instance")
    assert body["edition"] == "ee"
    assert (body["bounce_enabled"], body["bounce_imap_port"], body["bounce_imap_folder"],
            body["bounce_imap_ssl"], body["bounce_poll_interval"]) == (False, 993, "INBOX",
                                                                     True, 60)
    assert body["has_bounce_imap_password"] is False
    assert await api.ok("POST", "/instance/reload-bounce") == {"ok": True,
                                                               "bounce_enabled": False}
    await api.ok("PUT", "/instance", json={"name": "prod", "bounce_enabled": True})
    status, body = await api.call("POST", "/instance/reload-bounce")
    assert (status, body) == (400, {"detail": "bounce enabled but no IMAP host configured"})
    await api.ok("PUT", "/instance", json={
        "bounce_imap_host": "imap.example.com", "bounce_imap_user": "bounces@example.com",
        "bounce_imap_password": "pw", "bounce_imap_ssl": False,
        "bounce_return_path": "bounces@example.com"})
    body = await api.ok("GET", "/instance")
    assert body["name"] == "prod"
    assert body["bounce_imap_port"] == 143, "143 when ssl is off and no port was given"
    assert body["has_bounce_imap_password"] is True
    assert "bounce_imap_password" not in body
    assert body["created_at"] and body["updated_at"]
    assert await api.ok("POST", "/instance/reload-bounce") == {"ok": True,
                                                               "bounce_enabled": True}
    await api.ok("PUT", "/instance", json={"bounce_imap_password": None})
    assert (await api.ok("GET", "/instance"))["has_bounce_imap_password"] is True
    await api.ok("PUT", "/instance", json={"bounce_imap_password": ""})
    assert (await api.ok("GET", "/instance"))["has_bounce_imap_password"] is False
    status, _ = await api.call("PUT", "/instance", json={"bounce_imap_port": "x"})
    assert status == 422
    status, body = await api.call("PUT", "/instance", json={"bounce_poll_interval": 0})
    assert (status, body) == (400, {"detail": "bounce_poll_interval must be at least 1"})


async def test_bounce_settings_from_the_environment_overwrite_the_stored_ones(
    make_api: ApiFactory,
) -> None:
    api = await make_api(bounce_imap_host="env-imap.example.org", bounce_poll_interval=30)
    body = await api.ok("GET", "/instance")
    assert (body["bounce_imap_host"], body["bounce_poll_interval"]) == (
        "env-imap.example.org", 30)


async def test_command_log_records_redacts_filters_and_exports(
    make_api: ApiFactory, relay: Relay
) -> None:
    clock = FakeClock(time.time())
    api = await make_api(clock=clock)
    key = await api.tenant(client_auth={"method": "bearer", "token": "tok"},
                           webhook_secret="whs")
    await api.account(relay, password="pw")
    raw = base64.b64encode(b"Subject: hi\r\n\r\nbody\r\n").decode()
    inline = "base64:" + base64.b64encode(b"attached bytes").decode()
    await api.send(message(1, attachments=[{"filename": "a.txt", "storage_path": inline,
                                            "auth": {"method": "basic", "user": "u",
                                                     "password": "attpw"}}]),
                   message(2, subject=None, body=None, raw=raw))
    await api.ok("POST", "/commands/run-now")
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme", "batch_code": "b"})
    status, _ = await api.as_token(key).call("GET", "/tenants")
    assert status == 403
    status, _ = await api.as_token(key).call("DELETE", "/tenant/acme")
    assert status == 403
    status, _ = await api.as_token("bad").call("DELETE", "/tenant/acme")
    assert status == 401

    body = await api.ok("GET", "/command-log")
    endpoints = [c["endpoint"] for c in body["commands"]]
    assert endpoints == ["DELETE /tenant/acme", "POST /commands/suspend",
                         "POST /commands/add-messages", "POST /account", "POST /tenant"]
    assert body["total"] == 5
    by_endpoint = {c["endpoint"]: c for c in body["commands"]}
    assert by_endpoint["DELETE /tenant/acme"]["response_status"] == 403
    assert by_endpoint["DELETE /tenant/acme"]["tenant_id"] == "acme"
    assert by_endpoint["POST /commands/suspend"]["payload"] == {"tenant_id": "acme",
                                                               "batch_code": "b"}
    tenant_payload = by_endpoint["POST /tenant"]["payload"]
    assert tenant_payload["client_auth"] == {"method": "bearer", "token": "***"}
    assert tenant_payload["webhook_secret"] == "***"
    assert by_endpoint["POST /account"]["payload"]["password"] == "***"
    sent = by_endpoint["POST /commands/add-messages"]
    assert sent["tenant_id"] == "acme"
    first, second = sent["payload"]["messages"]
    assert first["attachments"][0]["storage_path"] == f"<omitted {len(inline)} bytes>"
    assert first["attachments"][0]["auth"] == {"method": "basic", "user": "u",
                                               "password": "***"}
    assert second["raw"] == f"<omitted {len(raw)} bytes>"

    page = await api.ok("GET", "/command-log", params={"limit": 2, "offset": 1,
                                                       "endpoint_filter": "post /"})
    assert page["total"] == 4
    assert [c["endpoint"] for c in page["commands"]] == ["POST /commands/add-messages",
                                                         "POST /account"]
    assert (await api.ok("GET", "/command-log", params={"tenant_id": "nobody"}))["total"] == 0
    later = await api.ok("GET", "/command-log", params={"since_ts": int(clock.now()) + 1})
    assert later["total"] == 0

    export = await api.ok("GET", "/command-log/export")
    assert [c["endpoint"] for c in export["commands"]] == [
        "POST /tenant", "POST /account", "POST /commands/add-messages",
        "POST /commands/suspend"]
    exported_tenant = export["commands"][0]["payload"]
    assert "webhook_secret" not in exported_tenant
    assert exported_tenant["client_auth"] == {"method": "bearer"}
    assert "password" not in export["commands"][1]["payload"]
    assert set(export["commands"][0]) == {"endpoint", "tenant_id", "payload", "command_ts"}


async def test_command_log_retention(make_api: ApiFactory) -> None:
    clock = FakeClock(time.time())
    api = await make_api(clock=clock, command_log_retention_days=2)
    await api.tenant()
    clock.advance(86400)
    await api.tenant("later")
    clock.advance(86400 + 10)
    await api.parts.reporter.purge()  # type: ignore[attr-defined]
    body = await api.ok("GET", "/command-log")
    assert [c["tenant_id"] for c in body["commands"]] == ["later"]


async def test_sync_status_shape(api: Api) -> None:
    await api.tenant(name="Acme", client_base_url="http://127.0.0.1:9")
    body = await api.ok("GET", "/tenants/sync-status")
    assert body["ok"] is True and body["sync_interval_seconds"] == 300
    [item] = body["tenants"]
    assert set(item) == {"id", "name", "active", "client_base_url", "last_sync_ts",
                         "next_sync_due", "next_sync_ts", "in_dnd", "pending_events",
                         "consecutive_failures", "retry_at", "last_error"}
    assert (item["id"], item["name"], item["active"]) == ("acme", "Acme", True)


async def test_a_rejected_command_with_an_unhashable_tenant_id_is_still_logged(
    api: Api,
) -> None:
    """Regression (schemathesis): a list as a message's tenant_id made the command-log
    middleware raise TypeError, so that request vanished from the audit log."""
    status, _ = await api.call("POST", "/commands/add-messages",
                               json={"messages": [message(tenant_id=["acme"])]})
    assert status == 422
    log = await api.ok("GET", "/command-log",
                       params={"endpoint_filter": "POST /commands/add-messages"})
    assert [(c["response_status"], c["tenant_id"]) for c in log["commands"]] == [(422, None)]
