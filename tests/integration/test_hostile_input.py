"""Hostile REST bodies (issue 17): deep nesting and lone surrogates get a 4xx with a reason on
every route, never a 500, and the command log still records the call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mailproxy.ingress.http import ROUTES
from tests.conftest import Api, message
from tests.relay import Relay

DEEP = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
BODY_ROUTES = [(m, p) for m, p, _ in ROUTES if m in ("POST", "PUT", "DELETE")]


def _concrete(path: str) -> str:
    return path.replace("{tenant_id}", "acme").replace("{account_id}", "main")


async def _raw(api: Api, method: str, path: str, body: bytes,
               params: dict[str, str] | None = None) -> tuple[int, Any]:
    async with api.client.request(method, path, data=body, params=params,
                                  headers={"X-API-Token": api.token,
                                           "Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
async def test_deep_nesting_is_a_400_with_a_reason_on_every_body_route(
        api: Api, body: bytes) -> None:
    await api.tenant()
    for method, path in BODY_ROUTES:
        status, answer = await _raw(api, method, _concrete(path), body,
                                    params={"tenant_id": "acme"})
        assert status == 400, (method, path, status, answer)
        assert "nest" in answer["detail"], (method, path, answer)


async def test_deep_nesting_is_still_recorded_in_the_command_log(api: Api) -> None:
    await api.tenant()
    status, _ = await _raw(api, "POST", "/commands/add-messages", DEEP)
    assert status == 400
    log = await api.ok("GET", "/command-log", params={"endpoint_filter": "add-messages"})
    [entry] = log["commands"]
    assert entry["response_status"] == 400


async def test_lone_surrogate_rejects_only_that_message_naming_the_field(
        api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    good, bad = message(1), message(2, subject="x\ud800y")
    body = json.dumps({"messages": [good, bad]}).encode()  # ensure_ascii: "\\ud800" escape
    assert b"\\ud800" in body
    status, answer = await _raw(api, "POST", "/commands/add-messages", body)
    assert status == 200, answer
    assert answer["queued"] == 1
    [rejection] = answer["rejected"]
    assert rejection["index"] == 1 and rejection["id"] == "m2"
    assert "subject" in rejection["reason"], rejection
    await relay.wait_for(1)
    log = await api.ok("GET", "/command-log", params={"endpoint_filter": "add-messages"})
    [entry] = log["commands"]
    assert entry["response_status"] == 200
    assert entry["payload"]["messages"][1]["id"] == "m2"


@pytest.mark.parametrize("field", ["id", "tenant_id", "account_id", "from"])
async def test_lone_surrogate_in_an_identifying_field_is_a_rejection(
        api: Api, relay: Relay, field: str) -> None:
    await api.tenant()
    await api.account(relay)
    body = json.dumps({"messages": [message(1, **{field: "m\udfff"})]}).encode()
    status, answer = await _raw(api, "POST", "/commands/add-messages", body)
    assert status == 400, answer
    [rejection] = answer["detail"]["rejected"]
    assert field in rejection["reason"], rejection


async def test_lone_surrogate_on_other_routes_is_a_400_naming_the_field(api: Api) -> None:
    await api.tenant()
    cases = [
        ("POST", "/tenant", {"id": "acme", "name": "A\ud800"}, "name"),
        ("PUT", "/tenant/acme", {"name": "A\ud800"}, "name"),
        ("POST", "/account", {"id": "main", "tenant_id": "acme", "host": "h\ud800"}, "host"),
        ("POST", "/commands/delete-messages", {"ids": ["x\ud800"]}, "ids"),
        ("PUT", "/instance", {"name": "\udc00"}, "name"),
    ]
    for method, path, payload, field in cases:
        status, answer = await _raw(api, method, path, json.dumps(payload).encode(),
                                    params={"tenant_id": "acme"})
        assert status == 400, (path, status, answer)
        assert field in str(answer["detail"]), (path, answer)
    log = await api.ok("GET", "/command-log")
    assert log["total"] >= len(cases) + 1  # every call recorded, the tenant creation too


async def test_a_valid_surrogate_pair_is_kept(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    body = json.dumps({"messages": [message(1, subject="smile \U0001f600")]}).encode()
    assert b"\\ud83d\\ude00" in body
    status, answer = await _raw(api, "POST", "/commands/add-messages", body)
    assert status == 200 and answer["queued"] == 1, answer
    [got] = await api.messages()
    assert got["message"]["subject"] == "smile \U0001f600", got


@pytest.mark.parametrize("number", [b"NaN", b"-Infinity", b"1e400"])
async def test_a_number_json_cannot_hold_is_invalid_json_naming_it(api: Api, number: bytes
                                                                  ) -> None:
    await api.tenant()
    body = b'{"messages": [{"id": "m1", "tenant_id": "acme", "x": ' + number + b"}]}"
    status, answer = await _raw(api, "POST", "/commands/add-messages", body)
    assert status == 422, answer  # as any body that is not JSON (§3.1)
    assert number.lstrip(b"-").decode() in str(answer["detail"]), answer
    assert await api.messages() == []


async def test_numbers_of_any_size_are_stored_exactly(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    extra = {"big": 2**80, "small": -(2**70), "float": 0.1, "exp": 1e300}
    body = json.dumps({"messages": [message(1, **extra)]}).encode()
    status, answer = await _raw(api, "POST", "/commands/add-messages", body)
    assert status == 200 and answer["queued"] == 1, answer
    [got] = await api.messages()
    assert {k: got["message"][k] for k in extra} == extra, got
