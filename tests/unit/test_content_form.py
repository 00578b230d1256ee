"""The stored form of Content (store/rows.py): what intake decided, without the texts the
payload already holds."""

from __future__ import annotations

import json

from mailproxy.model import Attachment, Content
from mailproxy.store import rows


def test_texts_equal_to_the_payload_are_read_back_from_it() -> None:
    payload = {"from": "a@acme.test", "to": ["r@example.org"], "subject": "Hello",
               "body": "long body " * 100, "attachments": [
                   {"filename": "a.txt", "storage_path": "base64:YQ==", "auth": {"x": 1}}]}
    content = Content(from_addr="a@acme.test", to=("r@example.org",), subject="Hello",
                      body="long body " * 100,
                      attachments=(Attachment("a.txt", "base64:YQ==", "base64"),))
    text = rows.content_text(content, payload)
    assert json.loads(text) == {"v": 1, "from": "a@acme.test", "to": ["r@example.org"],
                                "attachments": ["base64"]}
    assert rows.content_from_row(text, payload, None) == content


def test_values_intake_changed_are_stored() -> None:
    payload = {"from": "Ann <ann@ACME.test>", "to": "r@Example.org", "subject": None,
               "html_body": "", "headers": {"X-A": 1, "Bcc": "b@example.org"},
               "attachments": [{"filename": "b.pdf", "storage_path": "docs/b.pdf"}]}
    content = Content(
        from_addr="Ann <ann@acme.test>", to=("r@example.org",), cc=("c@example.org",),
        bcc=("b@example.org",), reply_to="re@acme.test", return_path="rp@acme.test",
        subject="Changed", body="", html_body=None, body_is_html=True,
        headers=(("X-A", "1"),), message_id="<id@acme.test>",
        attachments=(Attachment("b.pdf", "other/path", "endpoint", "application/pdf"),))
    text = rows.content_text(content, payload)
    stored = json.loads(text)
    assert stored["subject"] == "Changed" and stored["message_id"] == "<id@acme.test>"
    assert "body" not in stored and "html_body" not in stored  # "" and None, as in payload
    assert stored["attachments"][0]["storage_path"] == "other/path"
    assert rows.content_from_row(text, payload, None) == content
