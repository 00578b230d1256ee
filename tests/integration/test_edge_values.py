"""Values schemathesis found to cause 500s or schema violations; each is a 4xx or fixed now."""

from __future__ import annotations

from tests.conftest import Api, message
from tests.relay import Relay


async def test_huge_key_expiry_is_a_422(api: Api) -> None:
    await api.tenant()
    status, body = await api.call("POST", "/tenant/acme/api-key",
                                  json={"expires_at": 1.4e127})
    assert status == 422, body
    status, _ = await api.call("PUT", "/tenant/acme", json={"api_key_expires_at": 10**30})
    assert status == 422


async def test_float_key_expiry_is_truncated(api: Api) -> None:
    await api.tenant()
    await api.ok("PUT", "/tenant/acme", json={"api_key_expires_at": 4102444800.75})
    info = await api.ok("GET", "/tenant/acme")
    assert info["api_key_expires_at"] == 4102444800


async def test_huge_limit_or_offset_is_a_422(api: Api) -> None:
    await api.tenant()
    status, body = await api.call("GET", "/messages",
                                  params={"tenant_id": "acme", "offset": str(10**22)})
    assert status == 422
    assert body["detail"][0]["loc"] == ["query", "offset"]


async def test_absurd_deferred_ts_rejects_only_that_message(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    body = await api.send(message(1, deferred_ts=1e300), message(2))
    assert body["queued"] == 1
    assert body["rejected"] == [
        {"id": "m1", "reason": "invalid payload: deferred_ts is out of range", "index": 0}]
