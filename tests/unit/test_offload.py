"""Pure parts of large-file offload: the save rules, signed links, footers."""

from __future__ import annotations

import pytest

from mailproxy.model import Content
from mailproxy.offload import footer, links
from mailproxy.offload.config import parse, save_problem
from mailproxy.offload.service import safe_name, with_footer
from mailproxy.offload.storage import s3_client_options

SECRET = b"s" * 32
FID = "0123456789abcdef0123456789abcdef"


def test_save_rules() -> None:
    assert save_problem({"action": "rewrite", "storage_url": "s3://b/p"}) is None
    assert save_problem({"action": "warn"}) is None
    assert "public_base_url" in str(save_problem({"action": "rewrite",
                                                  "storage_url": "file:///srv/x"}))
    assert save_problem({"action": "rewrite", "storage_url": "file:///srv/x",
                         "public_base_url": "https://mail.test"}) is None
    # gs:// and az:// are accepted on their shape alone: no driver or storage is consulted.
    for url in ("gs://b/p", "az://c", "az://c/deep/prefix"):
        assert save_problem({"action": "rewrite", "storage_url": url}) is None, url
    for url, words in [("ftp://x", "s3://, gs://, az://"), ("s3:///nobucket", "bucket"),
                       ("gs:///x", "needs a bucket"), ("az:///x", "needs a container"),
                       ("file://relative/x", "absolute")]:
        assert words in str(save_problem({"storage_url": url})), url


def test_cloud_credentials_are_read_from_storage_options() -> None:
    from mailproxy.offload.azure import AzureStorage, connection_fields
    from mailproxy.offload.gcs import GcsStorage

    key = {"client_email": "a@b.iam", "private_key": "PEM", "type": "service_account"}
    assert GcsStorage("gs://b", {"token": key}).can_sign
    assert GcsStorage("gs://b", {"token": '{"client_email": "a@b", "private_key": "P"}'}).can_sign
    assert not GcsStorage("gs://b", {}).can_sign  # ambient: our /download links
    assert connection_fields("AccountName=a;AccountKey=k==;BlobEndpoint=http://h/a;") == {
        "AccountName": "a", "AccountKey": "k==", "BlobEndpoint": "http://h/a"}
    signing = AzureStorage("az://c/p", {"connection_string": "AccountName=a;AccountKey=k=="})
    assert signing.can_sign and (signing.bucket, signing.prefix) == ("c", "p")
    assert not AzureStorage("az://c", {"account_name": "a", "sas_token": "sv=1"}).can_sign


def test_parse_defaults() -> None:
    assert parse(None) is None and parse({"enabled": False, "action": "reject"}) is None
    cfg = parse({"enabled": True})
    assert cfg is not None and (cfg.action, cfg.threshold, cfg.file_ttl_days) == (
        "warn", 10 * 2**20, 30)


def test_signed_links() -> None:
    url = links.link("https://mail.test/", SECRET, FID, 2_000_000_000, "a b.pdf")
    token = url.split("/")[4]
    assert url == f"https://mail.test/download/{token}/a%20b.pdf"
    assert links.verify(SECRET, token, "a b.pdf", 1_999_999_999) == FID
    with pytest.raises(links.ExpiredLink):
        links.verify(SECRET, token, "a b.pdf", 2_000_000_001)
    with pytest.raises(links.BadLink, match="signature"):
        links.verify(SECRET, token, "other.pdf", 0)
    forged = token.replace("-2000000000-", "-2000000999-")
    with pytest.raises(links.BadLink, match="signature"):
        links.verify(SECRET, forged, "a b.pdf", 0)
    with pytest.raises(links.BadLink, match="signature"):
        links.verify(b"x" * 32, token, "a b.pdf", 0)
    with pytest.raises(links.BadLink, match="malformed"):
        links.verify(SECRET, "nonsense", "a b.pdf", 0)


def test_contract_signature_formula() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET, f"{FID}:5:r.pdf".encode(), hashlib.sha256).hexdigest()
    assert links.signature(SECRET, FID, 5, "r.pdf") == expected


LINK = footer.Link("a<b>.pdf", 3 * 2**20 // 2, "https://x.test/d?a=1&b=2", 1_800_000_000)


def test_footers() -> None:
    assert footer.plain("Hi", [LINK]) == (
        "Hi\n\nLarge attachments available for download:\n"
        "- a<b>.pdf (1.5 MB): https://x.test/d?a=1&b=2 (expires 2027-01-15)\n")
    html = footer.html_body("<html><BODY>x</Body></html>", [LINK])
    assert html.startswith("<html><BODY>x<p>Large attachments")
    assert html.endswith("</ul></Body></html>")
    assert '<a href="https://x.test/d?a=1&amp;b=2">a&lt;b&gt;.pdf</a>' in html
    assert footer.html_body("<p>x</p>", [LINK]).startswith("<p>x</p><p>Large")


def test_which_bodies_get_the_footer() -> None:
    both = Content("a@x.test", ("b@x.test",), body="t", html_body="<p>h</p>")
    body, html = with_footer(both, [LINK])
    assert body is not None and "Large attachments" in body and "<ul>" in str(html)
    only_html = Content("a@x.test", ("b@x.test",), body="<p>h</p>", body_is_html=True)
    body, html = with_footer(only_html, [LINK])
    assert "<ul>" in str(body) and html is None
    html_alone = Content("a@x.test", ("b@x.test",), body="", html_body="<p>h</p>")
    assert with_footer(html_alone, [LINK])[0] is None


def test_object_names_and_s3_options() -> None:
    assert safe_name("../etc/passwd") == ".._etc_passwd"
    assert safe_name("..") == "file"
    assert s3_client_options({"key": "k", "secret": "s", "endpoint_url": "http://e",
                              "ignored": 1}) == {
        "region_name": "us-east-1", "aws_access_key_id": "k", "aws_secret_access_key": "s",
        "endpoint_url": "http://e"}
