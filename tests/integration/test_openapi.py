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
