"""OpenAPI 3.1 generated from the route table: each handler carries its Spec (via @documented),
and the request/response schemas come from the pydantic models the handlers validate with."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mailproxy import __version__
from mailproxy.ingress.schemas import ErrorResponse

Level = Literal["public", "auth", "tenant", "admin", "metrics", "signed"]
F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter: name, JSON type, required, allowed values."""

    name: str
    type: Literal["string", "integer", "boolean"] = "string"
    required: bool = False
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True, slots=True)
class Spec:
    summary: str
    level: Level
    body: type[BaseModel] | None = None
    body_required: bool = True
    response: type[BaseModel] | None = None
    query: tuple[Param, ...] = ()
    media_type: str = "application/json"  # of the 200 response, when not a model
    extra_responses: tuple[int, ...] = ()


SPECS: dict[Callable[..., Any], Spec] = {}


def documented(spec: Spec) -> Callable[[F], F]:
    """Attach a Spec to a handler; the OpenAPI builder finds it through the route table."""

    def attach(handler: F) -> F:
        SPECS[handler] = spec
        return handler

    return attach


def tenant_query(required: bool = True) -> Param:
    return Param("tenant_id", required=required)


def _models(routes: Iterable[tuple[str, str, Callable[..., Any]]]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [ErrorResponse]
    for _method, _path, handler in routes:
        spec = SPECS.get(handler)
        if spec is None:
            continue
        for model in (spec.body, spec.response):
            if model is not None and model not in found:
                found.append(model)
    return found


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    keyed, top = models_json_schema(
        [(m, "validation") for m in models], ref_template=REF,
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    for (model, _mode), ref in keyed.items():
        name = ref["$ref"].rsplit("/", 1)[-1]
        schemas.setdefault(name, {"title": model.__name__})
    return schemas


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _parameters(path: str, spec: Spec | None) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(path)
    ]
    for q in spec.query if spec else ():
        schema: dict[str, Any] = {"type": q.type}
        if q.enum:
            schema["enum"] = list(q.enum)
        if q.minimum is not None:
            schema["minimum"] = q.minimum
        if q.maximum is not None:
            schema["maximum"] = q.maximum
        params.append({"name": q.name, "in": "query", "required": q.required, "schema": schema})
    return params


def _security(level: Level) -> list[dict[str, list[str]]]:
    if level in ("public", "signed"):
        return []
    if level == "metrics":
        return [{}, {"MetricsBearer": []}, {"ApiToken": []}]
    return [{"ApiToken": []}]


def _ok_response(spec: Spec | None) -> dict[str, Any]:
    if spec is None:
        return {"description": "Success", "content": {"application/json": {"schema": {}}}}
    if spec.response is not None:
        schema: dict[str, Any] = _ref(spec.response)
    elif spec.media_type == "application/json":
        schema = {"type": "object"}
    else:
        schema = {"type": "string"}
    return {"description": "Success", "content": {spec.media_type: {"schema": schema}}}


def _operation(method: str, path: str, handler: Callable[..., Any]) -> dict[str, Any]:
    spec = SPECS.get(handler)
    error = {"description": "Error (§1)",
             "content": {"application/json": {"schema": _ref(ErrorResponse)}}}
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{handler.__name__}",
        "summary": spec.summary if spec else handler.__name__.replace("_", " "),
        "tags": [_tag(path)],
        "parameters": _parameters(path, spec),
        "responses": {"200": _ok_response(spec), "default": error},
        "security": _security(spec.level if spec else "auth"),
    }
    if spec is not None:
        op["x-access-level"] = spec.level
        for status in spec.extra_responses:
            op["responses"][str(status)] = error
    if spec is not None and spec.body is not None:
        op["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": _ref(spec.body)}},
        }
    return op


def _tag(path: str) -> str:
    first = path.strip("/").split("/", 1)[0]
    return first.split("{", 1)[0] or "root"


def build_openapi(routes: Iterable[tuple[str, str, Callable[..., Any]]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every route of the table."""
    table = list(routes)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler in table:
        openapi_path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", path)
        paths.setdefault(openapi_path, {})[method.lower()] = _operation(method, path, handler)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailproxy",
            "version": __version__,
            "description": "Async email dispatch proxy: durable queue, SMTP delivery, "
                           "rate limits, delivery reports.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(_models(table)),
            "securitySchemes": {
                "ApiToken": {"type": "apiKey", "in": "header", "name": "X-API-Token"},
                "MetricsBearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
