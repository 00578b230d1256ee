"""GET /openapi.json and /docs: generated from the route table and the pydantic models."""

from __future__ import annotations

import re

from mailproxy.ingress.http import ROUTES
from mailproxy.ingress.openapi import SPECS
from tests.conftest import Api


async def test_every_route_is_described(api: Api) -> None:
    status, spec = await api.as_token(None).call("GET", "/openapi.json")
    assert status == 200
    assert spec["openapi"] == "3.1.0"
    described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert described == {(m, p) for m, p, _h in ROUTES}
    for method, path, handler in ROUTES:
        assert handler in SPECS, f"{method} {path} has no @documented Spec"


async def test_request_and_response_models_come_from_pydantic(api: Api) -> None:
    _, spec = await api.call("GET", "/openapi.json")
    add = spec["paths"]["/commands/add-messages"]["post"]
    body_ref = add["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/AddMessagesBody"
    schemas = spec["components"]["schemas"]
    message = schemas["MessageShape"]
    assert "from" in message["properties"]
    record = schemas["MessageRecord"]
    assert {"pk", "status", "suspended", "error_ts", "message"} <= set(record["required"])
    listing = spec["paths"]["/messages"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"tenant_id", "status", "limit"}
    assert listing["security"] == [{"ApiToken": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', str(spec).replace("'", '"'))
    assert set(refs) <= set(schemas)


async def test_docs_page_and_its_assets_are_served_locally(api: Api) -> None:
    async with api.client.get("/docs") as resp:
        assert resp.status == 200
        page = await resp.text()
    assert "/openapi.json" in page
    assets = re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page)
    assert len(assets) == 2
    assert not re.search(r'(?:src|href)="https?://', page)
    for asset in assets:
        async with api.client.get(asset) as resp:
            assert resp.status == 200, asset
    async with api.client.get("/docs/static/../../pyproject.toml") as resp:
        assert resp.status == 404
    async with api.client.get("/docs/static/nothing.js") as resp:
        assert resp.status == 404


async def test_reports_branch_routes_answer_their_documented_models(api: Api) -> None:
    """Each answer of the routes added with the reports branch validates strictly against the
    response model its Spec names, and the Spec carries the contract's level and parameters."""
    await api.tenant("acme", name="Acme", client_base_url="https://app.acme.test")
    await api.ok("PUT", "/instance", json={"name": "prod", "bounce_imap_password": "pw"})
    answers = {
        ("POST", "/commands/cleanup-messages"): await api.ok(
            "POST", "/commands/cleanup-messages", params={"tenant_id": "acme"}),
        ("GET", "/tenants/sync-status"): await api.ok("GET", "/tenants/sync-status"),
        ("GET", "/instance"): await api.ok("GET", "/instance"),
        ("PUT", "/instance"): await api.ok("PUT", "/instance", json={"name": "prod"}),
        ("POST", "/instance/reload-bounce"): await api.ok("POST", "/instance/reload-bounce"),
        ("GET", "/command-log"): await api.ok("GET", "/command-log", params={"limit": 5}),
        ("GET", "/command-log/export"): await api.ok("GET", "/command-log/export"),
    }
    assert answers[("GET", "/tenants/sync-status")]["tenants"][0]["id"] == "acme"
    assert answers[("GET", "/command-log")]["commands"]
    assert answers[("GET", "/command-log/export")]["commands"]
    handlers = {(m, p): h for m, p, h in ROUTES}
    _, spec = await api.call("GET", "/openapi.json")
    for (method, path), body in answers.items():
        route_spec = SPECS[handlers[(method, path)]]
        assert route_spec.response is not None, path
        route_spec.response.model_validate(body, strict=True)
        level = spec["paths"][path][method.lower()]["x-access-level"]
        assert level == ("tenant" if path.startswith("/commands/") else "admin"), path
    params = {p["name"]: p for p in spec["paths"]["/command-log"]["get"]["parameters"]}
    assert set(params) == {"tenant_id", "since_ts", "until_ts", "endpoint_filter", "limit",
                           "offset"}
    assert not any(p["required"] for p in params.values())
    export = spec["paths"]["/command-log/export"]["get"]["parameters"]
    assert {p["name"] for p in export} == {"tenant_id", "since_ts", "until_ts"}
    cleanup = spec["paths"]["/commands/cleanup-messages"]["post"]
    assert cleanup["requestBody"]["required"] is False
    assert [(p["name"], p["required"]) for p in cleanup["parameters"]] == [("tenant_id", True)]
    item = spec["components"]["schemas"]["SyncStatusItem"]
    assert set(item["required"]) == set(item["properties"])
