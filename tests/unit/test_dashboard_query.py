"""The dashboard's query box parser and its session signing (pure parts)."""

from __future__ import annotations

import pytest

from mailproxy.dashboard import session
from mailproxy.dashboard.port import Cursor, Filter
from mailproxy.dashboard.query import QueryError, parse


def test_keys_and_free_text() -> None:
    flt = parse('status:Deferred to:bob@x.org from:"Acme Billing" tenant:acme account:main '
                'batch:spring priority:high after:2026-01-02 before:2026-01-03T10:30 '
                'invoice 42')
    assert flt == Filter(tenant_id="acme", to="bob@x.org", sender="Acme Billing",
                         account_id="main", status="deferred", batch_code="spring",
                         priority=1, before=1767436200.0, after=1767312000.0,
                         text="invoice 42")
    assert parse("") == Filter()
    assert parse("priority:0 after:1767000000") == Filter(priority=0, after=1767000000.0)


@pytest.mark.parametrize(("text", "reason"), [
    ("status:lost", "status: must be one of"),
    ("priority:9", "priority: must be 0-3"),
    ("after:yesterday", "after: use YYYY-MM-DD"),
    ("colour:red", "unknown key 'colour'"),
    ("to:", "to: needs a value"),
    ('subject:"open', "unbalanced quotes"),
])
def test_bad_terms_say_why(text: str, reason: str) -> None:
    with pytest.raises(QueryError, match=reason):
        parse(text)


def test_cursor_round_trip_and_garbage() -> None:
    cursor = Cursor(1767000000.123456, 42)
    assert Cursor.decode(cursor.encode()) == cursor
    assert Cursor.decode("nonsense") is None
    assert Cursor.decode(None) is None


def test_sessions_are_signed_expire_and_bind_csrf() -> None:
    cookie = session.issue("admin-token", "acme", "ab" * 32, now=1000)
    found = session.read("admin-token", cookie, now=1001)
    assert found is not None and found.tenant_id == "acme" and found.key_print == "ab" * 8
    assert "admin-token" not in cookie
    assert session.read("other-admin-token", cookie, now=1001) is None
    assert session.read("admin-token", cookie, now=1000 + session.LIFETIME) is None
    body, _, sig = cookie.partition(".")
    assert session.read("admin-token", body + "x." + sig, now=1001) is None
    token = session.csrf_token("admin-token", found.sid)
    assert session.csrf_ok("admin-token", found.sid, token)
    assert not session.csrf_ok("admin-token", "another-sid", token)
    assert not session.csrf_ok("admin-token", found.sid, None)
