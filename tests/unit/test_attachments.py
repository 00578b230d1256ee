"""Pure parts of the attachment room: names, MIME types, the sandbox, the cache tiers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailproxy.attachments.cache import Cache, CacheLimits, Spool, scope_of
from mailproxy.attachments.fetch import endpoint_request
from mailproxy.attachments.names import cache_key, mime_type, sent_name
from mailproxy.attachments.sources import classify_status, parse_roots, sandboxed
from mailproxy.model import Attachment, ClientAuth, Tenant

MD5 = "9e107d9d372bb6826bd81d3542a419d6"


@pytest.mark.parametrize(("given", "sent"), [
    (f"report_{{MD5:{MD5}}}.pdf", "report.pdf"),
    (f"a__{{MD5:{MD5}}}_b.txt", "a_b.txt"),
    (f"a.{{MD5:{MD5}}}.pdf", "a.pdf"),
    (f"{{MD5:{MD5}}}.pdf", "attachment.pdf"),
    (f"scan-{{MD5:{MD5}}}", "scan"),
    ("plain.txt", "plain.txt"),
])
def test_marker_is_stripped_and_separators_tidied(given: str, sent: str) -> None:
    assert sent_name(given) == sent


def test_cache_key_prefers_content_md5_then_the_marker() -> None:
    assert cache_key(MD5.upper(), "x.pdf") == MD5
    assert cache_key(None, f"x_{{MD5:{MD5.upper()}}}.pdf") == MD5
    assert cache_key(None, "x.pdf") is None


def test_mime_type_from_field_then_name_then_octet_stream() -> None:
    assert mime_type("image/png", "a.pdf") == "image/png"
    assert mime_type(None, "a.pdf") == "application/pdf"
    assert mime_type("", "noext") == "application/octet-stream"


def test_sandbox(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("x")
    (tmp_path / "out").write_text("y")
    (root / "link").symlink_to(tmp_path / "out")
    (root / "inner").symlink_to(root / "d" / "f")
    roots = parse_roots(f" {root} ,{tmp_path / 'other'}")
    assert sandboxed("d/f", roots) == root / "d" / "f"
    assert sandboxed(str(root / "inner"), roots) == root / "d" / "f"
    for bad, reason in [(str(tmp_path / "out"), "outside"), (str(root / "link"), "outside"),
                        ("d/../d/f", "'..'"), ("/etc/passwd", "outside")]:
        with pytest.raises(ValueError, match=reason):
            sandboxed(bad, roots)
    with pytest.raises(ValueError, match="GMP_ATTACHMENT_ROOTS"):
        sandboxed("d/f", ())


def test_retryable_statuses() -> None:
    assert [s for s in (400, 401, 404, 408, 410, 429, 500, 503) if classify_status(s)] == [
        408, 429, 500, 503]


def test_endpoint_credentials_follow_the_tenant_origin_only() -> None:
    creds = ClientAuth("bearer", token="t")
    tenant = Tenant(id="t", client_base_url="https://app.test/", client_auth=creds)

    def req(path: str) -> tuple[str, object, bool]:
        r = endpoint_request(tenant, Attachment("f", path, "endpoint"), None)
        return r.url, r.auth, r.restricted

    assert req("doc=1") == ("https://app.test/mail-proxy/attachments", creds, False)
    assert req("[https://app.test/x]id=2") == ("https://app.test/x", creds, True)
    assert req("[https://evil.test/x]id=2") == ("https://evil.test/x", None, True)


def test_spool_moves_to_disk_past_the_threshold(tmp_path: Path) -> None:
    small = Spool(tmp_path, 10)
    small.write(b"12345")
    assert small.finish() == (b"12345", None)
    big = Spool(tmp_path, 10)
    for _ in range(4):
        big.write(b"abcd")
    data, path = big.finish()
    assert data is None and path is not None and path.read_bytes() == b"abcd" * 4


def _put(cache: Cache, data: bytes) -> str:
    import hashlib

    md5 = hashlib.md5(data).hexdigest()
    cache.put("acme", md5, data, None)
    return md5


def test_memory_tier_lru_and_ttl(tmp_path: Path) -> None:
    now = [1000.0]
    cache = Cache(tmp_path, CacheLimits(memory_bytes=10, memory_ttl=5, disk_threshold=100),
                  clock=lambda: now[0])
    a, b = _put(cache, b"aaaa"), _put(cache, b"bbbb")
    assert cache.get("acme", a) is not None  # a is now the most recent
    c = _put(cache, b"cccc")  # over 10 bytes: b (least recent) goes
    assert cache.get("acme", b) is None
    assert cache.get("acme", a) is not None and cache.get("acme", c) is not None
    now[0] += 6
    assert cache.get("acme", a) is None
    assert not list(tmp_path.iterdir())  # small items never touch the disk


def test_disk_tier_budget_ttl_and_restart(tmp_path: Path) -> None:
    now = [1000.0]
    limits = CacheLimits(disk_bytes=250, disk_ttl=60, disk_threshold=100)
    cache = Cache(tmp_path, limits, clock=lambda: now[0])
    one, two = _put(cache, os.urandom(120)), _put(cache, os.urandom(120))
    three = _put(cache, os.urandom(120))  # over 250 bytes: the oldest goes
    assert cache.get("acme", one) is None
    hit = cache.get("acme", two)
    assert hit is not None and hit.path is not None and hit.size == 120
    reborn = Cache(tmp_path, limits, clock=lambda: now[0] + 1)
    reborn.load()
    assert reborn.get("acme", two) is not None and reborn.get("acme", three) is not None
    later = Cache(tmp_path, limits, clock=lambda: now[0] + 3600)
    later.load()
    assert later.get("acme", two) is None
    assert not (tmp_path / scope_of("acme") / two[:2] / two).exists()


def test_entries_are_scoped_by_tenant_on_both_tiers_and_across_a_restart(tmp_path: Path
                                                                         ) -> None:
    limits = CacheLimits(disk_threshold=100)
    cache = Cache(tmp_path, limits)
    small, big = _put(cache, b"small"), _put(cache, os.urandom(200))
    assert cache.get("other", small) is None and cache.get("other", big) is None
    assert cache.get("acme", small) is not None and cache.get("acme", big) is not None
    stale = tmp_path / big[:2] / big  # the unscoped layout of an older version
    stale.parent.mkdir()
    stale.write_bytes(b"x" * 200)
    reborn = Cache(tmp_path, limits)
    reborn.load()
    assert reborn.get("other", big) is None
    hit = reborn.get("acme", big)
    assert hit is not None and hit.path == tmp_path / scope_of("acme") / big[:2] / big
    assert not stale.exists()
