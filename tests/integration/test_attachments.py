"""Attachments from the four sources (§10), end to end: REST in, relay sink out.

The file server and the tenant endpoint are real aiohttp servers on 127.0.0.1; reaching
them needs the private-address allow-list (GMP_ATTACHMENT_ALLOW_PRIVATE), which the tests
set to `localhost` and address the servers by that name, so that 127.0.0.1 itself (an
IP literal, or what a redirect names) stays refused.
"""

from __future__ import annotations

import email
import hashlib
import os
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailproxy.attachments.cache import scope_of
from tests.conftest import Api, ApiFactory, eventually, message
from tests.endpoint import closed_port
from tests.files import FileServer, file_server
from tests.relay import Relay

__all__ = ["file_server"]

PDF = b"%PDF-1.4 " + os.urandom(3000)
BIG = os.urandom(300 * 1024)  # above the 100 KB disk threshold


async def record(api: Api, client_id: str) -> dict[str, Any]:
    for item in await api.messages(include_history="true"):
        if item["id"] == client_id:
            return item
    raise AssertionError(f"{client_id} not listed")


async def wait_status(api: Api, client_id: str, *statuses: str, timeout: float = 10
                      ) -> dict[str, Any]:
    async def reached() -> bool:
        return (await record(api, client_id))["status"] in statuses

    await eventually(reached, timeout)
    return await record(api, client_id)


def parts(content: bytes) -> list[EmailMessage]:
    parsed = email.message_from_bytes(content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return list(parsed.iter_attachments())  # type: ignore[arg-type]


async def setup(make_api: ApiFactory, relay: Relay, files: FileServer, **settings: Any) -> Api:
    settings.setdefault("attachment_allow_private", "localhost")
    settings.setdefault("attachment_timeout_seconds", 2)
    api = await make_api(**settings)
    await api.tenant(client_base_url=f"http://127.0.0.1:{files.port}",
                     client_attachment_path="/tenant/attachments",
                     client_auth={"method": "bearer", "token": files.endpoint_token})
    await api.account(relay)
    return api


async def test_http_url_and_endpoint_attachments_reach_the_sink(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["report.pdf"] = PDF
    files.files["scan.bin"] = BIG
    files.files["note"] = "Grüße".encode()
    api = await setup(make_api, relay, files)
    await api.send(message(1, attachments=[
        {"filename": "report.pdf", "storage_path": files.url("/files/report.pdf")},
        {"filename": "scan.bin", "storage_path": "scan.bin", "fetch_mode": "endpoint"},
        {"filename": "Grüße übersicht.txt", "storage_path": "note", "mime_type": "text/plain"},
    ]))
    [got] = await relay.wait_for(1, timeout=10)
    got_parts = parts(got.content)
    assert [p.get_filename() for p in got_parts] == ["report.pdf", "scan.bin",
                                                     "Grüße übersicht.txt"]
    assert [p.get_content_type() for p in got_parts] == [
        "application/pdf", "application/octet-stream", "text/plain"]
    assert got_parts[0].get_payload(decode=True) == PDF
    assert got_parts[1].get_payload(decode=True) == BIG
    assert got_parts[2].get_payload(decode=True) == "Grüße".encode()
    assert b"filename*=utf-8''Gr%C3%BC%C3%9Fe" in got.content  # RFC 2231
    # Tenant credentials went to the tenant endpoint only, never to the http_url.
    sent_auth = {path: h.get("Authorization") for path, h in files.requests}
    assert sent_auth["/files/report.pdf"] is None
    assert sent_auth["/tenant/attachments"] == f"Bearer {files.endpoint_token}"


async def test_attachment_auth_is_sent_and_tenant_auth_is_not(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["secret.txt"] = b"top secret"
    api = await setup(make_api, relay, files)
    await api.send(
        message(1, attachments=[{"filename": "secret.txt",
                                 "storage_path": files.url("/private/secret.txt"),
                                 "auth": {"method": "basic", "user": "user",
                                          "password": "pass"}}]),
        message(2, attachments=[{"filename": "secret.txt",
                                 "storage_path": files.url("/private/secret.txt")}]),
    )
    [got] = await relay.wait_for(1, timeout=10)
    assert parts(got.content)[0].get_payload(decode=True) == b"top secret"
    failed = await wait_status(api, "m2", "error")
    assert failed["error"] == "attachment 'secret.txt': HTTP 401"


async def test_filesystem_sandbox(
    make_api: ApiFactory, relay: Relay, file_server: FileServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "inside.txt").write_bytes(b"inside")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside")
    (root / "escape.txt").symlink_to(outside)
    api = await setup(make_api, relay, file_server, attachment_roots=str(root))

    def att(path: str) -> list[dict[str, str]]:
        return [{"filename": "f.txt", "storage_path": path, "fetch_mode": "filesystem"}]

    await api.send(
        message(1, attachments=att(str(root / "sub" / "inside.txt"))),
        message(2, attachments=att("sub/inside.txt")),
        message(3, attachments=att(str(outside))),
        message(4, attachments=att(str(root / "escape.txt"))),
        message(5, attachments=att(str(root / "sub" / ".." / "sub" / "inside.txt"))),
        message(6, attachments=att(str(root / "missing.txt"))),
    )
    received = await relay.wait_for(2, timeout=10)
    assert all(parts(r.content)[0].get_payload(decode=True) == b"inside" for r in received)
    reasons = {i: (await wait_status(api, f"m{i}", "error"))["error"] for i in range(3, 7)}
    assert reasons == {
        3: "attachment 'f.txt': refused: path is outside the allowed roots",
        4: "attachment 'f.txt': refused: path is outside the allowed roots",
        5: "attachment 'f.txt': refused: path contains '..'",
        6: "attachment 'f.txt': file not found",
    }


async def test_private_addresses_are_refused_without_the_allow_list(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["a.txt"] = b"a"
    api = await setup(make_api, relay, files, attachment_allow_private="")
    await api.send(
        message(1, attachments=[{"filename": "a.txt",
                                 "storage_path": files.url("/files/a.txt", "127.0.0.1")}]),
        message(2, attachments=[{"filename": "a.txt",
                                 "storage_path": files.url("/files/a.txt")}]),
    )
    one = await wait_status(api, "m1", "error")
    two = await wait_status(api, "m2", "error")
    assert one["error"] == ("attachment 'a.txt': 127.0.0.1 resolves to a non-public address "
                            "(127.0.0.1), refused")
    assert "non-public address" in two["error"]
    assert files.hits["a.txt"] == 0


async def test_redirects_are_rechecked_and_bounded(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["a.txt"] = b"a"
    api = await setup(make_api, relay, files)
    files.redirect_to = files.url("/files/a.txt", "127.0.0.1")
    await api.send(
        message(1, attachments=[{"filename": "a.txt",
                                 "storage_path": files.url("/redirect/1")}]),
        message(2, attachments=[{"filename": "a.txt",
                                 "storage_path": files.url("/redirect/5")}]),
    )
    one = await wait_status(api, "m1", "error")
    assert "127.0.0.1 resolves to a non-public address" in one["error"]
    two = await wait_status(api, "m2", "error")
    assert two["error"] == "attachment 'a.txt': more than 3 redirects"
    assert files.hits["a.txt"] == 0
    # A redirect that stays on an allowed host is followed.
    files.redirect_to = files.url("/files/a.txt")
    await api.send(message(3, attachments=[{"filename": "a.txt",
                                            "storage_path": files.url("/redirect/2")}]))
    [got] = await relay.wait_for(1, timeout=10)
    assert parts(got.content)[0].get_payload(decode=True) == b"a"


async def test_temporary_failures_are_retried_and_permanent_ones_fail(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["a.txt"] = b"eventually"
    api = await setup(make_api, relay, files, attachment_timeout_seconds=0.5)
    files.fail_status = 503
    await api.send(
        message(1, attachments=[{"filename": "a.txt", "storage_path": files.url("/files/a.txt")}]),
        message(2, attachments=[{"filename": "gone.txt",
                                 "storage_path": files.url("/status/404")}]),
        message(3, attachments=[{"filename": "slow.txt", "storage_path": files.url("/slow")}]),
        message(4, attachments=[{"filename": "e.txt", "storage_path": files.url("/status/500")}]),
        message(5, attachments=[{"filename": "r.txt",
                                 "storage_path": f"http://localhost:{closed_port()}/x"}]),
    )
    broken = await wait_status(api, "m4", "deferred")
    assert broken["history"][-1]["description"] == "attachment 'e.txt': HTTP 500"
    refused = await wait_status(api, "m5", "deferred")
    assert refused["history"][-1]["description"].startswith(
        "attachment 'r.txt': connection failed")
    first = await wait_status(api, "m1", "deferred")
    assert first["history"][-1]["description"] == "attachment 'a.txt': HTTP 503"
    slow = await wait_status(api, "m3", "deferred")
    assert slow["history"][-1]["description"] == "attachment 'slow.txt': timeout after 0.5 s"
    gone = await wait_status(api, "m2", "error")
    assert gone["error"] == "attachment 'gone.txt': HTTP 404"
    files.fail_status = None
    sent = await wait_status(api, "m1", "sent", timeout=15)
    assert sent["retry_count"] >= 1  # retried on the schedule until the source recovered
    [got] = [r for r in await relay.wait_for(1, timeout=10)]
    assert parts(got.content)[0].get_payload(decode=True) == b"eventually"


async def test_mail_to_suppressed_addresses_alone_fetches_nothing(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["a.pdf"] = PDF
    api = await setup(make_api, relay, files)
    await api.ok("POST", "/tenant/acme/suppressions", json={"addresses": ["dead@example.org"]})
    attachment = {"filename": "a.pdf", "storage_path": files.url("/files/a.pdf")}
    gone = {"filename": "gone.pdf", "storage_path": files.url("/status/404")}
    await api.send(message(1, to=["Dead@example.org"], attachments=[attachment, gone]),
                   message(2, to=["dead@example.org", "live@example.org"],
                           attachments=[attachment]))
    # All recipients suppressed: suppressed, not failed on the missing file, nothing fetched.
    one = await wait_status(api, "m1", "suppressed", "error")
    assert (one["status"], one["error"]) == ("suppressed", "suppressed")
    [got] = await relay.wait_for(1, timeout=10)
    assert list(got.rcpt_tos) == ["live@example.org"]
    assert parts(got.content)[0].get_payload(decode=True) == PDF
    assert files.hits["a.pdf"] == 1  # once, for the message that still had a recipient
    assert files.requests and all(path != "/status/404" for path, _ in files.requests)


async def test_size_cap_and_checksum_mismatch_are_permanent(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["big"] = BIG
    files.files["a.txt"] = b"content"
    api = await setup(make_api, relay, files, attachment_max_mb=0.1)
    wrong = "0" * 32
    await api.send(
        message(1, attachments=[{"filename": "big.bin", "storage_path": files.url("/files/big")}]),
        message(2, attachments=[{"filename": "a.txt", "storage_path": files.url("/files/a.txt"),
                                 "content_md5": wrong}]),
        message(3, attachments=[{"filename": f"a_{{MD5:{wrong}}}.txt",
                                 "storage_path": files.url("/files/a.txt")}]),
    )
    big = await wait_status(api, "m1", "error")
    assert big["error"] == f"attachment 'big.bin': larger than {int(0.1 * 2**20)} bytes"
    assert (await wait_status(api, "m2", "error"))["error"] == (
        "attachment 'a.txt': attachment checksum mismatch")
    assert "attachment checksum mismatch" in (await wait_status(api, "m3", "error"))["error"]


async def test_cache_hits_skip_the_source_and_the_disk_tier_survives_a_restart(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["small"] = PDF
    files.files["big"] = BIG
    small_md5 = hashlib.md5(PDF).hexdigest()
    big_md5 = hashlib.md5(BIG).hexdigest()
    api = await setup(make_api, relay, files)

    def batch(start: int) -> list[dict[str, Any]]:
        return [message(i, attachments=[
            {"filename": "s.pdf", "storage_path": files.url("/files/small"),
             "content_md5": small_md5},
            {"filename": f"scan_{{MD5:{big_md5}}}.bin", "storage_path": files.url("/files/big")},
        ]) for i in range(start, start + 3)]

    await api.send(batch(1)[0])
    await relay.wait_for(1, timeout=10)
    await api.send(*batch(2))
    received = await relay.wait_for(4, timeout=10)
    assert files.hits == {"small": 1, "big": 1}
    for got in received:
        names = [p.get_filename() for p in parts(got.content)]
        assert names == ["s.pdf", "scan.bin"]
        assert parts(got.content)[1].get_payload(decode=True) == BIG
    parts_of = api.parts  # type: ignore[attr-defined]
    scoped = parts_of.settings.data_dir / "cache" / scope_of("acme")
    assert (scoped / big_md5[:2] / big_md5).read_bytes() == BIG
    await api.client.close()  # stops the app: the memory tier is gone, the disk tier stays

    again = await make_api(attachment_allow_private="localhost")
    await again.send(message(9, attachments=[
        {"filename": f"scan_{{MD5:{big_md5}}}.bin", "storage_path": files.url("/files/big")}]))
    got = (await relay.wait_for(5, timeout=10))[-1]
    assert parts(got.content)[0].get_payload(decode=True) == BIG
    assert files.hits["big"] == 1


async def test_a_slow_source_does_not_hold_back_other_accounts(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    api = await setup(make_api, relay, files, attachment_timeout_seconds=3,
                      send_concurrency=2)
    await api.account(relay, account_id="other")
    slow = [message(i, attachments=[{"filename": "s.txt", "storage_path": files.url("/slow")}])
            for i in range(1, 5)]
    await api.send(*slow)
    await eventually(lambda: _hits(files, "/slow", 2), 5)
    await api.send(message(9, account_id="other"))
    [got] = await relay.wait_for(1, timeout=2)
    assert b"Hello 9" in got.content


async def _hits(files: FileServer, path: str, n: int) -> bool:
    return sum(1 for p, _h in files.requests if p == path) >= n


async def test_endpoint_urls_written_by_a_tenant_token_are_restricted(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    files = file_server
    files.files["doc"] = b"doc"
    api = await make_api(attachment_allow_private="localhost")
    token = await api.tenant(client_auth={"method": "bearer", "token": files.endpoint_token})
    await api.account(relay)
    await api.as_token(token).ok("PUT", "/tenant/acme", json={
        "client_base_url": f"http://127.0.0.1:{files.port}",
        "client_attachment_path": "/tenant/attachments"})
    explicit = f"[{files.url('/tenant/attachments')}]doc"
    await api.send(
        message(1, attachments=[{"filename": "d.txt", "storage_path": "doc"}]),
        message(2, attachments=[{"filename": "d.txt", "storage_path": explicit,
                                 "fetch_mode": "endpoint"}]),
    )
    one = await wait_status(api, "m1", "error")
    assert "127.0.0.1 resolves to a non-public address" in one["error"]
    # The explicit form reaches an allowed host, but another origin gets no tenant token.
    two = await wait_status(api, "m2", "error")
    assert two["error"] == "attachment 'd.txt': HTTP 403"
    assert files.hits["doc"] == 0


async def test_the_cache_never_serves_one_tenant_another_tenants_file(
    make_api: ApiFactory, relay: Relay, file_server: FileServer
) -> None:
    """A client-supplied MD5 is no proof of access: tenant B naming the MD5 of a file
    tenant A sent gets nothing from A's fetch, neither small (memory) nor large (disk)."""
    files = file_server
    files.files["small"] = PDF
    files.files["big"] = BIG
    small_md5, big_md5 = hashlib.md5(PDF).hexdigest(), hashlib.md5(BIG).hexdigest()
    api = await setup(make_api, relay, files)
    await api.tenant("other")
    await api.account(relay, tenant_id="other", account_id="b")

    def att(md5: str, path: str) -> list[dict[str, Any]]:
        return [{"filename": "f.bin", "storage_path": files.url(path), "content_md5": md5}]

    await api.send(message(1, attachments=att(small_md5, "/files/small")),
                   message(2, attachments=att(big_md5, "/files/big")))
    await relay.wait_for(2, timeout=10)
    assert (files.hits["small"], files.hits["big"]) == (1, 1)
    await api.send(message(3, tenant_id="other", account_id="b",
                           attachments=att(small_md5, "/files/none")),
                   message(4, tenant_id="other", account_id="b",
                           attachments=att(big_md5, "/files/none")))

    async def failed() -> bool:
        listed = await api.messages(tenant_id="other", include_history="true")
        return [m["status"] for m in listed] == ["error", "error"]

    await eventually(failed, 10)
    for item in await api.messages(tenant_id="other", include_history="true"):
        assert item["error"] == "attachment 'f.bin': HTTP 404"
    # Tenant A's own repeat still comes from the cache.
    await api.send(message(5, attachments=att(small_md5, "/files/small")),
                   message(6, attachments=att(big_md5, "/files/big")))
    received = await relay.wait_for(4, timeout=10)
    assert (files.hits["small"], files.hits["big"]) == (1, 1)
    assert len(received) == 4
    assert all(b"Hello 3" not in r.content and b"Hello 4" not in r.content for r in received)
