"""Large-file offload to gs:// and az:// (§11), end to end against local emulators on
127.0.0.1 (gcp-storage-emulator, azurite): the relay sink's footer link, the object in the
emulator, the link serving the bytes, the cleanup deleting; and the send-time failures
(unreachable storage, missing driver) that saving a config never checks."""

from __future__ import annotations

import email
import hashlib
import json
import re
import sys
import time
from email import policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.conftest import ApiFactory, message
from tests.emulators import Azurite, Gcs, azurite, gcs
from tests.integration.test_attachments import wait_status
from tests.integration.test_offload import BIG, LINK, attachments, get, tenant_with
from tests.relay import Relay, free_port

__all__ = ["azurite", "gcs"]

DAY = 86400


def plain_body(content: bytes) -> str:
    parsed = email.message_from_bytes(content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def service_account_key() -> dict[str, str]:
    """A freshly made service-account key (the emulator checks no token; we sign with it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "test", "private_key_id": "k1",
            "private_key": pem, "client_email": "offload@test.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:9/token"}


def verify_v4_signature(url: str, key: dict[str, str]) -> None:
    """Check a GCS V4 signed URL as GCS does (the emulator does not): the RSA signature of
    the canonical request with the service account's public key. Raises when forged."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    signature = bytes.fromhex(query.pop("X-Goog-Signature"))
    canonical_query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}"
                               for k, v in sorted(query.items()))
    request = "\n".join(["GET", parts.path, canonical_query, f"host:{parts.netloc}\n",
                         "host", "UNSIGNED-PAYLOAD"])
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["GOOG4-RSA-SHA256", query["X-Goog-Date"], scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    private = serialization.load_pem_private_key(key["private_key"].encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    private.public_key().verify(signature, to_sign.encode(), padding.PKCS1v15(),
                                hashes.SHA256())


async def gcs_names(gcs: Gcs) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{gcs.endpoint_url}/storage/v1/b/{gcs.bucket}/o") as resp:
        assert resp.status == 200
        return [item["name"] for item in (await resp.json()).get("items", [])]


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read()


async def test_gcs_with_a_key_sends_a_v4_signed_url_and_cleanup_deletes(
    make_api: ApiFactory, relay: Relay, gcs: Gcs
) -> None:
    api = await make_api()
    key = service_account_key()
    await tenant_with(api, relay, action="rewrite", storage_url="gs://offload/mail",
                      storage_options={"endpoint_url": gcs.endpoint_url,
                                       "token": json.dumps(key)}, file_ttl_days=30)
    await api.send(message(1, attachments=attachments()))
    [got] = await relay.wait_for(1, timeout=20)
    [url] = re.findall(r"- big report\.pdf \(0\.2 MB\): (\S+) \(expires ", plain_body(got.content))
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.netloc == "storage.googleapis.com"
    assert re.fullmatch(r"/offload/mail/[0-9a-f]{32}/big%20report\.pdf", parts.path)
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Credential"].startswith(key["client_email"] + "/")
    assert query["X-Goog-Expires"] == "604800"  # V4 signed URLs: 7 days at most
    verify_v4_signature(url, key)
    with pytest.raises(InvalidSignature):
        verify_v4_signature(url.replace("X-Goog-Expires=604800", "X-Goog-Expires=604799"), key)
    [name] = await gcs_names(gcs)
    assert name.startswith("mail/") and name.endswith("/big report.pdf")
    # The emulator serves the signed path as GCS would (it does not check signatures).
    assert await fetch(f"{gcs.endpoint_url}{parts.path}?{parts.query}") == (200, BIG)
    removed = await api.parts.offloader.cleanup(  # type: ignore[attr-defined]
        now=time.time() + 31 * DAY)
    assert removed == 1 and await gcs_names(gcs) == []


async def test_gcs_without_a_key_links_to_our_download_route(
    make_api: ApiFactory, relay: Relay, gcs: Gcs
) -> None:
    api = await make_api()
    base = str(api.client.make_url("")).rstrip("/")
    await tenant_with(api, relay, action="rewrite", storage_url="gs://offload/ambient",
                      storage_options={"endpoint_url": gcs.endpoint_url},
                      public_base_url=base)
    await api.send(message(1, attachments=attachments()))
    [got] = await relay.wait_for(1, timeout=20)
    [url] = LINK.findall(plain_body(got.content))
    status, data, headers = await get(api, url)  # streamed from the emulator
    assert status == 200 and data == BIG and headers["Content-Type"] == "application/pdf"
    assert [n for n in await gcs_names(gcs) if n.startswith("ambient/")]
    removed = await api.parts.offloader.cleanup(  # type: ignore[attr-defined]
        now=time.time() + 31 * DAY)
    assert removed == 1 and await gcs_names(gcs) == []


async def test_azure_with_an_account_key_sends_a_sas_url_and_cleanup_deletes(
    make_api: ApiFactory, relay: Relay, azurite: Azurite
) -> None:
    with azurite.service() as service:
        service.create_container("offload")
        container = service.get_container_client("offload")
        api = await make_api()
        await tenant_with(api, relay, action="rewrite", storage_url="az://offload/mail",
                          storage_options={"connection_string": azurite.connection_string},
                          file_ttl_days=2)
        await api.send(message(1, attachments=attachments()))
        [got] = await relay.wait_for(1, timeout=20)
        [url] = re.findall(r"- big report\.pdf \(0\.2 MB\): (\S+) \(expires ",
                           plain_body(got.content))
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert url.startswith(azurite.blob_endpoint + "/offload/mail/")
        assert query["sp"] == "r" and "sig" in query  # read-only SAS
        expiry = time.mktime(time.strptime(query["se"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert 2 * DAY - 600 < expiry - time.time() <= 2 * DAY  # file_ttl_days, no S3 cap
        [blob] = [b.name for b in container.list_blobs()]
        assert blob.startswith("mail/") and blob.endswith("/big report.pdf")
        assert await fetch(url) == (200, BIG)  # azurite checks the SAS signature
        forged = url.replace("sp=r", "sp=rw")
        assert (await fetch(forged))[0] == 403
        removed = await api.parts.offloader.cleanup(  # type: ignore[attr-defined]
            now=time.time() + 3 * DAY)
        assert removed == 1 and list(container.list_blobs()) == []


async def test_azure_without_a_key_links_to_our_download_route(
    make_api: ApiFactory, relay: Relay, azurite: Azurite
) -> None:
    with azurite.service() as service:
        service.create_container("shared")
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(
            "devstoreaccount1", "shared", account_key=azurite.connection_string.split(
                "AccountKey=")[1].split(";")[0],
            permission=ContainerSasPermissions(read=True, write=True, delete=True,
                                               create=True),
            expiry=time.time() + DAY)
        api = await make_api()
        base = str(api.client.make_url("")).rstrip("/")
        await tenant_with(api, relay, action="rewrite", storage_url="az://shared",
                          storage_options={"account_url": azurite.blob_endpoint,
                                           "sas_token": sas},
                          public_base_url=base)
        await api.send(message(1, attachments=attachments()))
        [got] = await relay.wait_for(1, timeout=20)
        [url] = LINK.findall(plain_body(got.content))
        status, data, _ = await get(api, url)
        assert status == 200 and data == BIG
        assert len(list(service.get_container_client("shared").list_blobs())) == 1


@pytest.mark.parametrize(("url", "options", "named"), [
    ("az://offload/x", {"account_url": "http://127.0.0.1:{port}/devstoreaccount1",
                        "account_name": "devstoreaccount1", "account_key": "a2V5"},
     "Azure Blob Storage (az://)"),
    ("gs://offload/x", {"endpoint_url": "http://127.0.0.1:{port}", "token": "{key}"},
     "Google Cloud Storage (gs://)"),
])
async def test_unreachable_storage_is_a_temporary_failure_naming_the_backend(
    make_api: ApiFactory, relay: Relay, url: str, options: dict[str, Any], named: str
) -> None:
    port = free_port()  # nothing listens there: connection refused
    key = json.dumps(service_account_key())
    filled = {k: v.format(port=port, key=key) if k != "token" else key
              for k, v in options.items()}
    api = await make_api()
    await tenant_with(api, relay, action="rewrite", storage_url=url, storage_options=filled)
    await api.send(message(1, attachments=attachments()))
    deferred = await wait_status(api, "m1", "deferred", timeout=30)
    reason = deferred["history"][-1]["description"]
    assert reason.startswith(f"attachment 'big report.pdf': upload failed: {named}"), reason


@pytest.mark.parametrize(("url", "driver", "reason"), [
    ("gs://offload/x", "gcloud.aio.storage", "Google Cloud Storage (gs://) needs "
     "gcloud-aio-storage (pip install 'mailproxy[gcs]')"),
    ("az://offload/x", "azure.storage.blob.aio", "Azure Blob Storage (az://) needs "
     "azure-storage-blob and aiohttp (pip install 'mailproxy[azure]')"),
])
async def test_a_missing_driver_is_accepted_at_save_and_fails_temporarily_at_send(
    make_api: ApiFactory, relay: Relay, monkeypatch: pytest.MonkeyPatch, url: str,
    driver: str, reason: str
) -> None:
    # As if the extra were not installed: importing the driver raises ImportError.
    monkeypatch.setitem(sys.modules, driver, None)
    api = await make_api()
    base = str(api.client.make_url("")).rstrip("/")
    await tenant_with(api, relay, action="rewrite", storage_url=url, public_base_url=base,
                      storage_options={"connection_string": "AccountName=a;AccountKey=a2V5"})
    await api.send(message(1, attachments=attachments()))
    deferred = await wait_status(api, "m1", "deferred", timeout=30)
    assert deferred["history"][-1]["description"] == (
        f"attachment 'big report.pdf': upload failed: {reason}")
