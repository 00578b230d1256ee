"""Tenants, accounts and tenant API keys over HTTP."""

from __future__ import annotations

from tests.conftest import Api, ApiFactory, FakeClock
from tests.relay import Relay


async def test_tenant_create_returns_a_working_key_once(api: Api) -> None:
    key = await api.tenant("acme", name="Acme")
    assert len(key) >= 40
    again = await api.ok("POST", "/tenant", json={"id": "acme", "name": "Acme 2"})
    assert again == {"ok": True}
    info = await api.as_token(key).ok("GET", "/tenant/acme")
    assert info["name"] == "Acme 2" and info["has_api_key"] is True
    assert "api_key" not in info
    expected_keys = {
        "id", "name", "client_base_url", "client_sync_path", "client_attachment_path",
        "client_auth", "rate_limits", "large_file_config", "active", "api_key_expires_at",
        "has_client_secret", "has_webhook_secret", "has_api_key", "suspended_batches",
        "created_at", "updated_at",
        "api_key_expires_at_iso", "created_at_iso", "updated_at_iso",  # additive (§1)
    }
    assert set(info) == expected_keys
    assert info["created_at_iso"] == info["created_at"].replace(" ", "T") + "Z"
    assert info["client_sync_path"] == "/mail-proxy/sync"


async def test_post_tenant_is_a_full_replace_but_keeps_secrets(api: Api) -> None:
    await api.tenant("acme", name="Acme", client_base_url="http://app.test",
                     webhook_secret="s1", rate_limits={"minute": 5})
    await api.ok("POST", "/tenant", json={"id": "acme"})
    info = await api.ok("GET", "/tenant/acme")
    assert info["name"] is None and info["client_base_url"] is None
    assert info["rate_limits"] is None
    assert info["has_webhook_secret"] is True
    await api.ok("POST", "/tenant", json={"id": "acme", "webhook_secret": ""})
    assert (await api.ok("GET", "/tenant/acme"))["has_webhook_secret"] is False


async def test_put_tenant_is_partial_and_guards_admin_fields(api: Api) -> None:
    key = await api.tenant("acme", name="Acme", client_base_url="http://app.test")
    tenant = api.as_token(key)
    await tenant.ok("PUT", "/tenant/acme", json={"name": "New", "id": "ignored"})
    info = await api.ok("GET", "/tenant/acme")
    assert (info["name"], info["client_base_url"]) == ("New", "http://app.test")
    for field, value in (("active", True), ("rate_limits", None),
                         ("large_file_config", None), ("api_key_expires_at", None)):
        status, body = await tenant.call("PUT", "/tenant/acme", json={field: value})
        assert (status, body) == (403, {"detail": "Admin token required"}), field
    await api.ok("PUT", "/tenant/acme", json={"client_base_url": None})
    assert (await api.ok("GET", "/tenant/acme"))["client_base_url"] is None
    status, body = await api.call("PUT", "/tenant/ghost", json={"name": "x"})
    assert (status, body) == (404, {"detail": "tenant not found"})


async def test_tenant_id_must_match_the_pattern(api: Api) -> None:
    status, body = await api.call("POST", "/tenant", json={"id": "bad id!"})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "id"]


async def test_key_rotation_expiry_and_revocation(make_api: ApiFactory) -> None:
    clock = FakeClock()
    api = await make_api(clock=clock)
    first = await api.tenant("acme")
    body = await api.ok("POST", "/tenant/acme/api-key",
                        json={"expires_at": int(clock.now()) + 60})
    second = body["api_key"]
    assert body["expires_at"] == int(clock.now()) + 60
    status, _ = await api.as_token(first).call("GET", "/tenant/acme")
    assert status == 401
    await api.as_token(second).ok("GET", "/tenant/acme")
    clock.advance(61)
    status, _ = await api.as_token(second).call("GET", "/tenant/acme")
    assert status == 401
    third = (await api.ok("POST", "/tenant/acme/api-key"))["api_key"]
    await api.as_token(third).ok("GET", "/tenant/acme")
    await api.ok("DELETE", "/tenant/acme/api-key")
    status, _ = await api.as_token(third).call("GET", "/tenant/acme")
    assert status == 401
    assert (await api.ok("GET", "/tenant/acme"))["has_api_key"] is False


async def test_inactive_tenant_refuses_new_messages(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay)
    await api.ok("PUT", "/tenant/acme", json={"active": False})
    status, body = await api.call("POST", "/commands/add-messages", json={"messages": [
        {"id": "m1", "tenant_id": "acme", "account_id": "main", "from": "a@acme.test",
         "to": "b@example.org", "subject": "s"}]})
    assert status == 400
    assert body["detail"]["rejected"] == [{"id": "m1", "reason": "tenant inactive", "index": 0}]


async def test_account_upsert_keeps_password_and_lists_info(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay, user="u", password="pw", limit_per_minute=10)
    await api.account(relay, user="u", limit_per_minute=20)  # no password: keeps it
    [info] = (await api.ok("GET", "/accounts", params={"tenant_id": "acme"}))["accounts"]
    assert info["has_password"] is True and info["limit_per_minute"] == 20
    assert "password" not in info
    await api.account(relay, password="")
    [info] = (await api.ok("GET", "/accounts", params={"tenant_id": "acme"}))["accounts"]
    assert info["has_password"] is False
    status, body = await api.call("POST", "/account", json={
        "id": "a/b", "tenant_id": "acme", "host": "h", "port": 25})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "id"]


async def test_delete_tenant_removes_everything(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay)
    await api.ok("DELETE", "/tenant/acme")
    status, body = await api.call("GET", "/tenant/acme")
    assert (status, body) == (404, {"detail": "tenant not found"})
    status, _ = await api.call("DELETE", "/tenant/acme")
    assert status == 404
    await api.tenant("acme")
    assert (await api.ok("GET", "/accounts", params={"tenant_id": "acme"}))["accounts"] == []
