"""Pure report rules, redaction and the private-address check."""

from __future__ import annotations

import copy
import ipaddress

import pytest

from mailproxy import audit, sync
from mailproxy.model import ClientAuth, Event, EventType, SyncState, Tenant
from mailproxy.netguard import AddressRefused, AllowList, check_address, is_restricted
from mailproxy.reports import signature

RULES = sync.SyncRules(interval=300, resync_delay=1)


def test_target_prefers_the_tenant_url_then_the_fallback() -> None:
    tenant = Tenant("t", client_base_url="https://app.test/", client_sync_path="hooks")
    assert sync.target_of(tenant, RULES) == sync.Target("https://app.test/hooks", ClientAuth(),
                                                        restricted=False)
    fallback = sync.SyncRules(fallback_url="https://central.test/sync", fallback_user="u",
                              fallback_password="p")
    target = sync.target_of(Tenant("t"), fallback)
    assert target is not None and target.url == "https://central.test/sync"
    assert target.auth == ClientAuth(method="basic", user="u", password="p")
    assert sync.target_of(Tenant("t"), RULES) is None


def test_heartbeat_timing_dnd_and_backoff() -> None:
    tenant = Tenant("t")
    fresh = SyncState("t")
    assert sync.call_due(tenant, fresh, 0, 1000, RULES)
    called = sync.after_success(fresh, 1000, sync.Reply(), RULES)
    assert not sync.call_due(tenant, called, 0, 1299, RULES)
    assert sync.call_due(tenant, called, 0, 1300, RULES)
    assert sync.call_due(tenant, called, 1, 1001, RULES), "events go out at once"
    quiet = sync.after_success(fresh, 1000, sync.parse_reply({"next_sync_after": 5000}, 1000),
                               RULES)
    assert not sync.call_due(tenant, quiet, 0, 4999, RULES)
    assert sync.call_due(tenant, quiet, 0, 5000, RULES)
    failed = sync.after_failure(called, 1000, "HTTP 500", 10)
    assert not sync.call_due(tenant, failed, 5, 1009, RULES)
    assert sync.call_due(tenant, failed, 5, 1010, RULES)
    assert sync.call_due(tenant, failed, 0, 1001, RULES, forced=True)
    assert sync.next_heartbeat_ts(Tenant("t", active=False), fresh, RULES) is None


def test_reply_parsing_clamps_and_ignores_garbage() -> None:
    assert sync.parse_reply({"next_sync_after": 10**12, "queued": 2}, 100) == sync.Reply(
        queued=2, next_sync_after=100 + 86400)
    assert sync.parse_reply({"next_sync_after": 50, "queued": True}, 100) == sync.Reply()
    assert sync.parse_reply(["not", "an", "object"], 100) == sync.Reply()


def test_report_items() -> None:
    base = {"pk": "p", "tenant_id": "t", "account_id": "a", "client_id": "m1"}
    deferred = Event(event_id="7", event_type=EventType.DEFERRED, event_ts=10,
                     description="rate_limit", metadata={"next_attempt_ts": 60}, **base)
    assert sync.report_item(deferred) == {
        "id": "m1", "event_id": "7", "tenant_id": "t", "account_id": "a", "deferred_ts": 10,
        "deferred_reason": "rate_limit", "next_attempt_ts": 60}
    sent = Event(event_id="8", event_type=EventType.SENT, event_ts=11, **base)
    assert set(sync.report_item(sent)) == {"id", "event_id", "tenant_id", "account_id",
                                           "sent_ts"}


def test_redaction_and_export() -> None:
    payload = {"id": "t", "client_auth": {"method": "basic", "user": "u", "password": "p"},
               "messages": [{"raw": "QUJD", "attachments": [
                   {"storage_path": "base64:QUJD", "auth": {"token": "x"}},
                   {"storage_path": "doc=1"}]}],
               "large_file_config": {"storage_options": {"key": "k"}}}
    given = copy.deepcopy(payload)
    redacted = audit.redact(payload)
    assert payload == given  # the request's own payload is left as it came
    assert redacted["client_auth"]["password"] == "***"
    assert redacted["messages"][0]["raw"] == "<omitted 4 bytes>"
    assert redacted["messages"][0]["attachments"][0] == {
        "storage_path": "<omitted 11 bytes>", "auth": {"token": "***"}}
    assert redacted["messages"][0]["attachments"][1] == {"storage_path": "doc=1"}
    assert redacted["large_file_config"] == {"storage_options": "***"}
    exported = audit.strip_secrets(redacted)
    assert exported["client_auth"] == {"method": "basic", "user": "u"}
    assert exported["large_file_config"] == {}
    assert payload == given


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "224.0.0.1", "0.0.0.0", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1",
    "::",
])
def test_non_public_addresses_are_restricted(address: str) -> None:
    assert is_restricted(ipaddress.ip_address(address))
    with pytest.raises(AddressRefused):
        check_address("host", address, AllowList())


def test_public_and_allowed_addresses_pass() -> None:
    check_address("host", "93.184.216.34", AllowList())
    check_address("host", "127.0.0.1", AllowList.parse("127.0.0.0/8"))
    check_address("files.internal", "10.0.0.5", AllowList.parse("files.internal, 192.0.2.0/24"))
    check_address("host", "10.0.0.5", AllowList.parse("*"))
    with pytest.raises(AddressRefused):
        check_address("host", "10.0.0.5", AllowList.parse("127.0.0.0/8"))


def test_signature_vector() -> None:
    # HMAC-SHA256("secret", "1767000010.{}") computed independently with openssl.
    assert signature("secret", 1767000010, b"{}") == (
        "82eaa8e930f647c97e3ec16c257ee4e5ad7325686aadeaeafe2e894ae4bb3020")
