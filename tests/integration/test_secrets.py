"""Secrets are write-only: no GET response, log line or command-log row ever carries one."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import Api, ApiFactory, message
from tests.endpoint import EndpointFactory
from tests.relay import Relay

ACCOUNT_PASSWORD = "acct-pass-secret-1"
IMAP_PASSWORD = "imap-pass-secret-2"
SUBMISSION_PASSWORD = "submission-secret-3"
CLIENT_TOKEN = "client-token-secret-4"
CLIENT_PASSWORD = "client-pass-secret-5"
WEBHOOK_SECRET = "webhook-secret-6"
BOUNCE_PASSWORD = "bounce-pass-secret-7"
ATTACHMENT_TOKEN = "attachment-token-secret-8"
STORAGE_KEY = "storage-secret-9"


async def everything_readable(api: Api, tenant_key: str) -> str:
    """Every GET response, with the admin token and with the tenant token, as one text."""
    texts = []
    admin_gets = [
        ("/status", None), ("/tenants", None), ("/tenants/sync-status", None),
        ("/tenant/acme", None), ("/accounts", {"tenant_id": "acme"}),
        ("/messages", {"tenant_id": "acme", "include_history": "true"}),
        ("/instance", None), ("/command-log", None), ("/command-log/export", None),
    ]
    for path, params in admin_gets:
        texts.append(json.dumps(await api.ok("GET", path, params=params)))
    tenant = api.as_token(tenant_key)
    for path, params in [("/tenant/acme", None), ("/accounts", {"tenant_id": "acme"}),
                         ("/messages", {"tenant_id": "acme", "include_history": "true"})]:
        texts.append(json.dumps(await tenant.ok("GET", path, params=params)))
    return "\n".join(texts)


async def test_no_secret_is_ever_returned_logged_or_kept_in_the_command_log(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = await make_endpoint()
    endpoint.status = 500  # a failing report call: the reporter logs its warning path too
    api = await make_api()
    first_key = await api.tenant(
        client_base_url=endpoint.base_url, webhook_secret=WEBHOOK_SECRET,
        client_auth={"method": "basic", "user": "u", "password": CLIENT_PASSWORD,
                     "token": CLIENT_TOKEN},
        large_file_config={"enabled": True, "storage_options": {"key": STORAGE_KEY}},
    )
    rotated = await api.ok("POST", "/tenant/acme/api-key")
    tenant_key = str(rotated["api_key"])
    await api.account(relay, password=ACCOUNT_PASSWORD, imap_password=IMAP_PASSWORD,
                      submission_password=SUBMISSION_PASSWORD)
    await api.ok("PUT", "/instance", json={"bounce_imap_password": BOUNCE_PASSWORD,
                                           "bounce_imap_host": "imap.example.org"})
    await api.as_token(tenant_key).ok("PUT", "/tenant/acme", json={
        "client_auth": {"method": "bearer", "token": CLIENT_TOKEN}})
    attachment = {"filename": "a.txt", "storage_path": "base64:" +
                  base64.b64encode(b"attached").decode(),
                  "auth": {"method": "bearer", "token": ATTACHMENT_TOKEN}}
    await api.send(message(1, attachments=[attachment]))
    await relay.wait_for(1)
    await endpoint.wait_calls(1)

    readable = await everything_readable(api, tenant_key)
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    secrets = [ACCOUNT_PASSWORD, IMAP_PASSWORD, SUBMISSION_PASSWORD, CLIENT_TOKEN,
               CLIENT_PASSWORD, WEBHOOK_SECRET, BOUNCE_PASSWORD, ATTACHMENT_TOKEN,
               STORAGE_KEY, first_key, tenant_key]
    for secret in secrets:
        assert secret not in readable, secret
        assert secret not in logged, secret

    info = await api.ok("GET", "/tenant/acme")
    assert info["has_client_secret"] is True and info["has_webhook_secret"] is True
    assert info["client_auth"] == {"method": "bearer", "user": None}
    [account] = (await api.ok("GET", "/accounts", params={"tenant_id": "acme"}))["accounts"]
    assert (account["has_password"], account["has_imap_password"],
            account["has_submission_password"]) == (True, True, True)
    instance = await api.ok("GET", "/instance")
    assert instance["has_bounce_imap_password"] is True
    log = await api.ok("GET", "/command-log", params={"endpoint_filter": "POST /account"})
    assert log["commands"][0]["payload"]["password"] == "***"
    [record] = await api.messages()
    assert record["message"]["attachments"][0]["auth"]["token"] == "***"


async def test_secrets_are_encrypted_in_the_database_file(
    make_api: ApiFactory, relay: Relay, tmp_path: Path
) -> None:
    api = await make_api()
    await api.tenant(webhook_secret=WEBHOOK_SECRET,
                     client_auth={"method": "bearer", "token": CLIENT_TOKEN})
    await api.account(relay, password=ACCOUNT_PASSWORD, imap_password=IMAP_PASSWORD)
    await api.ok("PUT", "/instance", json={"bounce_imap_password": BOUNCE_PASSWORD})
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})  # stays queued
    await api.send(message(1, attachments=[{
        "filename": "a.txt", "storage_path": "base64:" + base64.b64encode(b"x").decode(),
        "auth": {"method": "bearer", "token": ATTACHMENT_TOKEN}}]))
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("mail_service.db*"))
    for secret in (WEBHOOK_SECRET, CLIENT_TOKEN, ACCOUNT_PASSWORD, IMAP_PASSWORD,
                   BOUNCE_PASSWORD, SUBMISSION_PASSWORD, ATTACHMENT_TOKEN):
        assert secret.encode() not in raw


async def test_generated_admin_token_is_rotated_by_put_instance(
    make_api: ApiFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await make_api(api_token=None)
    path = tmp_path / "data" / "api_token"
    old = path.read_text().strip()
    admin = api.as_token(old)
    await admin.ok("PUT", "/instance", json={"api_token": "brand-new-admin-token-0123456789"})
    assert path.read_text().strip() == "brand-new-admin-token-0123456789"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    status, _ = await admin.call("GET", "/instance")
    assert status == 401, "the old token stops working at once"
    new = api.as_token("brand-new-admin-token-0123456789")
    body = await new.ok("GET", "/command-log", params={"endpoint_filter": "/instance"})
    assert body["commands"][0]["payload"] == {"api_token": "***"}
    assert "brand-new-admin-token-0123456789" not in caplog.text
    assert old not in caplog.text


async def test_admin_token_from_the_environment_cannot_be_changed(api: Api) -> None:
    status, body = await api.call("PUT", "/instance", json={"api_token": "x" * 40})
    assert (status, body) == (400, {"detail": "admin token is managed by GMP_API_TOKEN"})
