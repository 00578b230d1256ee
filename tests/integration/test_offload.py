"""Large-file offload (§11), end to end: tenant config over REST, the relay sink, the signed
download route, moto's S3 on 127.0.0.1 and file:// storage, the cleanup task."""

from __future__ import annotations

import base64
import email
import os
import re
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib
import pytest

from mailproxy.offload import links
from tests.conftest import Api, ApiFactory, FakeClock, message
from tests.integration.test_attachments import parts, wait_status
from tests.relay import HOST, Relay, free_port
from tests.s3 import S3, s3

__all__ = ["s3"]

BIG = os.urandom(200 * 1024)
SMALL = b"small attachment"
LINK = re.compile(r"(http://\S+/download/[0-9a-f]{32}-\d+-[0-9a-f]{64}/\S+)")


def b64(data: bytes) -> str:
    return "base64:" + base64.b64encode(data).decode()


def attachments() -> list[dict[str, Any]]:
    return [{"filename": "small.txt", "storage_path": b64(SMALL)},
            {"filename": "big report.pdf", "storage_path": b64(BIG)}]


def bodies(content: bytes) -> tuple[str, str]:
    parsed = email.message_from_bytes(content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert plain is not None and html is not None
    return (str(plain.get_content()).replace("\r\n", "\n"),
            str(html.get_content()).replace("\r\n", "\n"))


async def tenant_with(api: Api, relay: Relay, **config: Any) -> None:
    await api.tenant(large_file_config={"enabled": True, "max_size_mb": 0.1, **config})
    await api.account(relay)


async def get(api: Api, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with api.client.get(urlsplit(url).path) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_config_shape_is_checked_and_storage_options_stay_secret(
    api: Api, tmp_path: Path
) -> None:
    bad = [
        ({"enabled": True, "action": "rewrite", "storage_url": f"file://{tmp_path}"},
         "public_base_url"),
        ({"enabled": True, "action": "rewrite", "storage_url": "ftp://host/x"},
         "must start with s3://, gs://, az:// or file://"),
        ({"enabled": True, "action": "rewrite", "storage_url": "gs:///x"}, "needs a bucket"),
        ({"enabled": True, "action": "rewrite", "storage_url": "az://"}, "needs a container"),
        ({"enabled": True, "action": "rewrite"}, "storage_url is required"),
        ({"enabled": True, "action": "explode"}, "literal_error"),
        ({"enabled": "yes"}, "bool_type"),
    ]
    for config, expected in bad:
        status, body = await api.call("POST", "/tenant",
                                      json={"id": "x", "large_file_config": config})
        assert status == 422 and expected in str(body), (config, body)
    config = {"enabled": True, "max_size_mb": 5.0, "action": "rewrite",
              "storage_url": "s3://bucket/prefix", "storage_options": {"secret": "S3-SECRET-9"},
              "file_ttl_days": 2}
    await api.tenant(large_file_config=config)
    shown = await api.ok("GET", "/tenant/acme")
    assert shown["large_file_config"] == {k: v for k, v in config.items()
                                          if k != "storage_options"}
    # A re-sent GET body (no storage_options) keeps the stored credentials.
    await api.ok("PUT", "/tenant/acme", json={"large_file_config": shown["large_file_config"]})
    tenant = await api.parts.store.get_tenant("acme")  # type: ignore[attr-defined]
    assert tenant.large_file_config["storage_options"] == {"secret": "S3-SECRET-9"}
    db = Path(api.parts.settings.db_path)  # type: ignore[attr-defined]
    assert b"S3-SECRET-9" not in db.read_bytes() + Path(f"{db}-wal").read_bytes()


async def test_rewrite_to_file_storage_links_in_both_bodies_and_serves_downloads(
    make_api: ApiFactory, relay: Relay, tmp_path: Path
) -> None:
    clock = FakeClock()
    api = await make_api(clock=clock)
    base = str(api.client.make_url("")).rstrip("/")
    storage = tmp_path / "offload"
    await tenant_with(api, relay, action="rewrite", storage_url=f"file://{storage}",
                      public_base_url=base, file_ttl_days=1, lifespan_after_download_days=0)
    await api.send(message(1, body="Hello", html_body="<html><body><p>Hi</p></body></html>",
                           attachments=attachments()))
    [got] = await relay.wait_for(1, timeout=10)
    assert [p.get_filename() for p in parts(got.content)] == ["small.txt"]
    plain, html = bodies(got.content)
    [url] = LINK.findall(plain)
    assert plain.startswith("Hello\n\nLarge attachments available for download:\n")
    assert f"- big report.pdf (0.2 MB): {url} (expires " in plain
    assert f'<a href="{url}">big report.pdf</a>' in html
    assert html.index("<ul>") < html.index("</body>")
    assert len(list(storage.glob("*/*"))) == 1

    tampered = re.sub(r"-([0-9a-f])([0-9a-f]{63})/", lambda m: "-" + (
        "0" if m.group(1) != "0" else "1") + m.group(2) + "/", url)
    # A forged link answers exactly like an unknown file (§11): 404, same body.
    status, data, _ = await get(api, tampered)
    assert (status, data) == (404, b'{"detail": "Not Found"}')
    assert (await get(api, url.replace("report.pdf", "other.pdf")))[0] == 404
    secret = api.parts.offloader._secret  # type: ignore[attr-defined]
    unknown = links.link(base, secret, "0" * 32, int(clock.now()) + 60, "x.pdf")
    assert (await get(api, unknown))[:2] == (404, b'{"detail": "Not Found"}')
    status, data, headers = await get(api, url)
    assert status == 200 and data == BIG
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"] == "attachment; filename*=utf-8''big%20report.pdf"
    clock.advance(2 * 86400)
    assert (await get(api, url))[0] == 410
    # lifespan_after_download_days=0: due right after the first download.
    removed = await api.parts.offloader.cleanup()  # type: ignore[attr-defined]
    assert removed == 1 and not list(storage.glob("*/*"))


async def test_reject_and_warn(make_api: ApiFactory, relay: Relay) -> None:
    api = await make_api()
    await tenant_with(api, relay, action="reject")
    await api.send(message(1, attachments=attachments()))
    failed = await wait_status(api, "m1", "error")
    assert failed["error"] == "Attachment 'big report.pdf' (0.2 MB) exceeds limit (0.1 MB)"
    await api.ok("PUT", "/tenant/acme", json={"large_file_config": {
        "enabled": True, "max_size_mb": 0.1, "action": "warn"}})
    api.parts.worker._preparer._cache.clear()  # type: ignore[attr-defined]
    await api.send(message(2, attachments=attachments()))
    [got] = await relay.wait_for(1, timeout=10)
    assert [p.get_payload(decode=True) for p in parts(got.content)] == [SMALL, BIG]


async def test_rewrite_to_s3_uses_presigned_links_and_cleanup_deletes(
    make_api: ApiFactory, relay: Relay, s3: S3
) -> None:
    client = s3.client()
    client.create_bucket(Bucket="offload")
    api = await make_api()
    await tenant_with(api, relay, action="rewrite", storage_url="s3://offload/mail",
                      storage_options=s3.options(), file_ttl_days=30)
    await api.send(message(1, attachments=attachments()))
    [got] = await relay.wait_for(1, timeout=20)
    parsed = email.message_from_bytes(got.content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    [url] = re.findall(r": (http://127\.0\.0\.1:\d+/offload/mail/\S+) \(expires", text)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=604800" in url  # S3: 7 days at most
    [key] = [o["Key"] for o in client.list_objects_v2(Bucket="offload")["Contents"]]
    assert key.startswith("mail/") and key.endswith("/big report.pdf")
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == BIG
    removed = await api.parts.offloader.cleanup(  # type: ignore[attr-defined]
        now=time.time() + 31 * 86400)
    assert removed == 1
    assert client.list_objects_v2(Bucket="offload").get("KeyCount") == 0


async def test_upload_failure_is_temporary(make_api: ApiFactory, relay: Relay) -> None:
    api = await make_api()
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    await tenant_with(api, relay, action="rewrite", storage_url="s3://offload/x",
                      storage_options={"endpoint_url": endpoint, "key": "k", "secret": "s"})
    await api.send(message(1, attachments=attachments()))
    deferred = await wait_status(api, "m1", "deferred", timeout=20)
    assert deferred["history"][-1]["description"].startswith(
        "attachment 'big report.pdf': upload failed")


@pytest.mark.parametrize("action", ["rewrite", "reject"])
async def test_smtp_submitted_message_follows_the_rule(
    make_api: ApiFactory, relay: Relay, tmp_path: Path, action: str
) -> None:
    port = free_port()
    api = await make_api(smtp_port=port)
    base = str(api.client.make_url("")).rstrip("/")
    token = await api.tenant(large_file_config={
        "enabled": True, "max_size_mb": 0.1, "action": action,
        "storage_url": f"file://{tmp_path / 'offload'}", "public_base_url": base})
    await api.account(relay)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "s@acme.test", "r@example.org", "Scan"
    mail["X-Mail-Proxy-ID"] = "smtp-1"
    mail.set_content("See attached")
    mail.add_attachment(BIG, maintype="application", subtype="pdf", filename="scan.pdf")
    mail.add_attachment(SMALL, maintype="text", subtype="plain", filename="small.txt")
    async with aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False) as smtp:
        await smtp.login("acme/main", token)
        await smtp.send_message(mail)
    if action == "reject":
        failed = await wait_status(api, "smtp-1", "error")
        assert failed["error"] == "Attachment 'scan.pdf' (0.2 MB) exceeds limit (0.1 MB)"
        return
    [got] = await relay.wait_for(1, timeout=10)
    parsed = email.message_from_bytes(got.content, policy=policy.default)
    leaves = [p for p in parsed.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in leaves] == ["text/plain", "text/plain", "text/plain"]
    assert leaves[2].get_payload(decode=True) == SMALL
    [url] = LINK.findall(str(leaves[1].get_content()))
    status, data, _headers = await get(api, url)
    assert status == 200 and data == BIG


async def test_download_secret_is_generated_once_or_taken_from_the_setting(
    make_api: ApiFactory, relay: Relay, tmp_path: Path
) -> None:
    api = await make_api()
    base = str(api.client.make_url("")).rstrip("/")
    await tenant_with(api, relay, action="rewrite", storage_url=f"file://{tmp_path / 'o'}",
                      public_base_url=base)
    await api.send(message(1, attachments=attachments()))
    [got] = await relay.wait_for(1, timeout=10)
    [url] = LINK.findall(got.content.decode())
    token = url.split("/")[-2]
    db = Path(api.parts.settings.db_path)  # type: ignore[attr-defined]
    await api.client.close()
    # Restarted: the stored secret still signs the same links (it is kept encrypted).
    again = await make_api()
    status, data, _ = await get(again, url)
    assert status == 200 and data == BIG
    secret = again.parts.offloader._secret  # type: ignore[attr-defined]
    assert secret.hex().encode() not in db.read_bytes() + Path(f"{db}-wal").read_bytes()
    await again.client.close()
    fixed = await make_api(download_secret="operator-chosen-secret")
    file_id, expires, sig = token.split("-")
    assert sig != links.signature(b"operator-chosen-secret", file_id, int(expires),
                                  "big report.pdf")
    assert (await get(fixed, url))[0] == 404  # a new secret: old links are no longer valid
