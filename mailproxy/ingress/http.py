"""REST API: one explicit route table, validation at the edge, domain error -> HTTP status."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from mailproxy import __version__, jsonsafe, resources
from mailproxy.bounces.model import SuppressionView
from mailproxy.bounces.service import BounceService
from mailproxy.errors import (
    Forbidden,
    InvalidRequest,
    MailProxyError,
    NotFound,
    StoreError,
    Unauthorized,
)
from mailproxy.ingress import bodies
from mailproxy.ingress.openapi import Param, Spec, build_openapi, documented, tenant_query
from mailproxy.ingress.schemas import (
    AccountShape,
    AccountsResponse,
    AddMessagesBody,
    AddMessagesResponse,
    ApiKeyResponse,
    ApiKeyShape,
    CleanupResponse,
    CleanupShape,
    CommandExportResponse,
    CommandLogResponse,
    DeleteMessagesResponse,
    HealthResponse,
    IdsShape,
    InstanceResponse,
    InstanceShape,
    MessageShape,
    MessagesResponse,
    OkResponse,
    ReloadBounceResponse,
    StatusResponse,
    SuspensionResponse,
    SyncStatusResponse,
    TenantBody,
    TenantCreatedResponse,
    TenantInfo,
    TenantShape,
    TenantsResponse,
)
from mailproxy.ingress.suppression_schemas import (
    SuppressionsAddedResponse,
    SuppressionsRemovedResponse,
    SuppressionsResponse,
    SuppressionsShape,
)
from mailproxy.model import Account, HistoryEntry, InstanceConfig, MessageView, Status, Tenant
from mailproxy.offload.http import download
from mailproxy.service import Caller, MailService, SyncView
from mailproxy.timefmt import iso, iso_of_text
from mailproxy.tokens import same

log = logging.getLogger("mailproxy.http")

SERVICE = web.AppKey("service", MailService)
BOUNCES = web.AppKey("bounces", BounceService)


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """What GET /status tells of this process besides the queue."""

    instance_id: str  # the lease owner id, made at each start
    worker_active: Callable[[], bool]


STATUS_INFO = web.AppKey("status_info", StatusInfo)
CALLER = web.RequestKey("caller", Caller)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

M = TypeVar("M", bound=BaseModel)
_MESSAGES = TypeAdapter(list[MessageShape])
_STATUS_NAMES = {s.value for s in Status}
_SUSPENSION_QUERY = (tenant_query(), Param("batch_code"))
_MAX_INT64 = 2**63 - 1
ALL_TENANTS_PAGE, MAX_ALL_TENANTS_PAGE = 1000, 10000  # GET /messages without tenant_id
_COMMAND_RANGE = (tenant_query(required=False),
                  Param("since_ts", "integer", minimum=0, maximum=_MAX_INT64),
                  Param("until_ts", "integer", minimum=0, maximum=_MAX_INT64))


class MetricsExporter(Protocol):
    """What GET /metrics needs (mailproxy.metrics.Metrics)."""

    token: str | None

    async def render(self) -> tuple[bytes, str]: ...


METRICS = web.AppKey("metrics", MetricsExporter)


class Unprocessable(Exception):
    """422 with a list of {loc, msg, type} items."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("unprocessable")
        self.detail = detail


def _json(data: Any, status: int = 200) -> web.Response:
    text = jsonsafe.dumps(data)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate echoed back (a rejected id): escape it
        body = json.dumps(data, separators=(",", ":")).encode("ascii")
    return web.Response(body=body, status=status, content_type="application/json",
                        charset="utf-8")


def _error(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    response = _json({"detail": detail}, status)
    if headers:
        response.headers.update(headers)
    return response


_STATUS_OF: dict[type[Exception], int] = {
    Unauthorized: 401, Forbidden: 403, NotFound: 404, InvalidRequest: 400,
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error; no traceback ever reaches a client."""
    try:
        return await handler(request)
    except Unprocessable as exc:
        return _error(422, exc.detail)
    except StoreError as exc:
        log.error("storage failure on %s %s: %s", request.method, request.path, exc)
        return _error(503, "storage unavailable, nothing was changed; retry later")
    except MailProxyError as exc:
        return _error(_STATUS_OF.get(type(exc), 400), str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "Request body too large")
    except web.HTTPMethodNotAllowed as exc:
        return _error(405, "Method Not Allowed", {"Allow": ",".join(sorted(exc.allowed_methods))})
    except web.HTTPNotFound:
        return _error(404, "Not Found")
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("unexpected failure on %s %s", request.method, request.path)
        return _error(500, "Internal server error")


# -- request helpers ---------------------------------------------------------------------------

async def _caller(request: web.Request) -> Caller:
    """The authenticated caller; then the body guard, so that every authenticated route
    answers a too-deep body with 400 (after 401, as §1 orders), read or not."""
    caller = await request.app[SERVICE].authenticate(request.headers.get("X-API-Token"))
    request[CALLER] = caller
    unstorable = bodies.unstorable_param(request)
    if unstorable is not None:
        raise Unprocessable([{"loc": list(unstorable), "type": "string_unstorable",
                              "msg": "text holds a NUL or a lone surrogate"}])
    parsed = await bodies.parsed(request)
    if isinstance(parsed.value, jsonsafe.TooDeep):
        raise InvalidRequest(str(parsed.value))
    return caller


async def _body(request: web.Request, *, optional: bool = False, items: str | None = None
                ) -> Any:
    """The JSON body. Under the key `items` (add-messages' messages) unstorable text is
    left to the caller, which rejects those items alone."""
    parsed = await bodies.parsed(request)
    body = parsed.value
    if body is bodies.EMPTY:
        if optional:
            return {}
        raise Unprocessable([{"loc": ["body"], "msg": "Field required", "type": "missing"}])
    if isinstance(body, jsonsafe.TooDeep):
        raise InvalidRequest(str(body))
    if isinstance(body, ValueError):
        raise Unprocessable(
            [{"loc": ["body"], "msg": f"JSON decode error: {body}", "type": "json_invalid"}])
    if jsonsafe.may_hold_unstorable(parsed.raw):
        checked = body
        if items is not None and isinstance(body, dict):
            checked = {k: v for k, v in body.items() if k != items}
        path = jsonsafe.unstorable_path(checked)
        if path is not None:
            raise InvalidRequest(bodies.unstorable_reason(path))
    return body


async def _object(request: web.Request, *, optional: bool = False, items: str | None = None
                  ) -> dict[str, Any]:
    body = await _body(request, optional=optional, items=items)
    if not isinstance(body, dict):
        raise Unprocessable([{"loc": ["body"], "msg": "Input should be an object",
                              "type": "dict_type"}])
    return body


def _shape(model: type[M], data: Any, prefix: tuple[Any, ...] = ("body",)) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(_pydantic_detail(exc, prefix)) from None


def _pydantic_detail(exc: ValidationError, prefix: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _query_str(request: web.Request, name: str, *, required: bool = False) -> str | None:
    value = request.query.get(name)
    if required and not value:
        raise Unprocessable([{"loc": ["query", name], "msg": "Field required",
                              "type": "missing"}])
    return value or None


def _query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise Unprocessable([{"loc": ["query", name], "msg": "Input should be a valid boolean",
                          "type": "bool_parsing"}])


def _query_int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= _MAX_INT64:
        raise Unprocessable([{"loc": ["query", name],
                              "msg": "Input should be a non-negative integer",
                              "type": "int_parsing"}])
    return number


# -- views -------------------------------------------------------------------------------------

@documented(Spec("Liveness and database check", "public", response=HealthResponse,
                 extra_responses=(503,)))
async def health(request: web.Request) -> web.Response:
    if not await request.app[SERVICE].healthy():
        return _json({"status": "error", "detail": "database unavailable"}, 503)
    return _json({"status": "ok"})


@documented(Spec("Dispatcher state", "auth", response=StatusResponse))
async def status(request: web.Request) -> web.Response:
    caller = await _caller(request)
    info = request.app[STATUS_INFO]
    pending = await request.app[SERVICE].open_messages(caller)
    return _json({"ok": True, "active": info.worker_active(), "version": __version__,
                  "instance_id": info.instance_id, "pending_messages": pending})


@documented(Spec("Enqueue up to 1000 messages (§4)", "auth", body=AddMessagesBody,
                response=AddMessagesResponse))
async def add_messages(request: web.Request) -> web.Response:
    caller = await _caller(request)
    body = await _object(request, items="messages")
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) > 1000:
        raise InvalidRequest("messages must be a list of at most 1000 items")
    for index, item in enumerate(messages):
        if not isinstance(item, dict):
            raise Unprocessable([{"loc": ["body", "messages", index],
                                  "msg": "Input should be an object", "type": "dict_type"}])
    try:
        _MESSAGES.validate_python(messages)
    except ValidationError as exc:
        raise Unprocessable(_pydantic_detail(exc, ("body", "messages"))) from None
    refused = None
    if jsonsafe.may_hold_unstorable((await bodies.parsed(request)).raw):
        refused = bodies.unstorable_items(messages)
    result = await request.app[SERVICE].submit(caller, messages, body.get("default_priority"),
                                               refused=refused)
    rejected = [{"id": r.id, "reason": r.reason, "index": r.index} for r in result.rejected]
    if result.failed:
        return _error(400, {"error": "no message queued", "rejected": rejected})
    return _json({"ok": True, "queued": result.queued, "rejected": rejected})


@documented(Spec("Wake the dispatcher and the report loop", "auth", response=OkResponse,
                query=(tenant_query(required=False),)))
async def run_now(request: web.Request) -> web.Response:
    caller = await _caller(request)
    tenant_id = _query_str(request, "tenant_id")
    await request.app[SERVICE].run_now(caller, tenant_id)
    return _json({"ok": True})


async def _suspension(request: web.Request, suspend: bool) -> web.Response:
    caller = await _caller(request)
    tenant_id = _query_str(request, "tenant_id", required=True)
    assert tenant_id is not None
    batch = _query_str(request, "batch_code")
    service = request.app[SERVICE]
    action = service.suspend if suspend else service.activate
    batches, pending = await action(caller, tenant_id, batch)
    return _json({"ok": True, "tenant_id": tenant_id, "batch_code": batch,
                  "suspended_batches": batches, "pending_messages": pending})


@documented(Spec("Hold a tenant's messages (all or one batch)", "tenant",
                response=SuspensionResponse, query=_SUSPENSION_QUERY))
async def suspend(request: web.Request) -> web.Response:
    return await _suspension(request, True)


@documented(Spec("Release held messages", "tenant", response=SuspensionResponse,
                query=_SUSPENSION_QUERY))
async def activate(request: web.Request) -> web.Response:
    return await _suspension(request, False)


@documented(Spec("Delete messages by client id", "tenant", body=IdsShape,
                response=DeleteMessagesResponse, query=(tenant_query(),)))
async def delete_messages(request: web.Request) -> web.Response:
    caller = await _caller(request)
    tenant_id = _query_str(request, "tenant_id", required=True)
    assert tenant_id is not None
    shape = _shape(IdsShape, await _object(request))
    removed, missing = await request.app[SERVICE].delete_messages(caller, tenant_id, shape.ids)
    return _json({"ok": True, "removed": removed, "not_found": missing, "unauthorized": []})


@documented(Spec("Purge reported old messages", "tenant", body=CleanupShape,
                body_required=False, response=CleanupResponse, query=(tenant_query(),)))
async def cleanup_messages(request: web.Request) -> web.Response:
    caller = await _caller(request)
    tenant_id = _query_str(request, "tenant_id", required=True)
    assert tenant_id is not None
    shape = _shape(CleanupShape, await _object(request, optional=True))
    removed = await request.app[SERVICE].cleanup(caller, tenant_id, shape.older_than_seconds)
    return _json({"ok": True, "removed": removed})


@documented(Spec("List messages (§5); an admin without tenant_id lists every tenant",
                 "tenant", response=MessagesResponse, query=(
    tenant_query(required=False), Param("active_only", "boolean"),
    Param("include_history", "boolean"), Param("status", enum=tuple(sorted(_STATUS_NAMES))),
    Param("limit", "integer", minimum=0, maximum=_MAX_INT64),
    Param("offset", "integer", minimum=0, maximum=_MAX_INT64),
    Param("cursor", "integer", minimum=0, maximum=_MAX_INT64))))
async def list_messages(request: web.Request) -> web.Response:
    caller = await _caller(request)
    if caller.admin and not request.query.get("tenant_id"):
        return await _list_every_tenant(request, caller)
    tenant_id = _query_str(request, "tenant_id", required=True)
    assert tenant_id is not None
    active_only = _query_bool(request, "active_only")
    history = _query_bool(request, "include_history")
    status_name = _status_query(request)
    limit = _query_int(request, "limit", 10000)
    offset = _query_int(request, "offset", 0)
    views = await request.app[SERVICE].list_messages(
        caller, tenant_id, active_only=active_only, status=status_name,
        include_history=history, limit=limit, offset=offset,
    )
    return _json({"ok": True, "messages": [message_info(v) for v in views]})


async def _list_every_tenant(request: web.Request, caller: Caller) -> web.Response:
    """Admin listing across tenants: pages of `limit` (default 1000, at most 10000) by
    `cursor`; `offset` would cost more the deeper the page, so it needs a tenant_id."""
    if request.query.get("offset"):
        raise Unprocessable([{"loc": ["query", "offset"], "type": "value_error",
                              "msg": "offset needs tenant_id; without it, page with cursor "
                                     "(the next_cursor of the previous page)"}])
    limit = min(_query_int(request, "limit", ALL_TENANTS_PAGE), MAX_ALL_TENANTS_PAGE)
    cursor = request.query.get("cursor")
    views, next_cursor = await request.app[SERVICE].list_all_messages(
        caller, active_only=_query_bool(request, "active_only"), status=_status_query(request),
        include_history=_query_bool(request, "include_history"), limit=limit,
        cursor=_query_int(request, "cursor", 0) if cursor else None)
    return _json({"ok": True, "messages": [message_info(v) for v in views],
                  "next_cursor": None if next_cursor is None else str(next_cursor)})


def _status_query(request: web.Request) -> str | None:
    status_name = _query_str(request, "status")
    if status_name is not None and status_name not in _STATUS_NAMES:
        raise Unprocessable([{"loc": ["query", "status"],
                              "msg": f"Input should be one of {sorted(_STATUS_NAMES)}",
                              "type": "enum"}])
    return status_name


@documented(Spec("Create or update an SMTP account (§6)", "tenant", body=AccountShape,
                response=OkResponse))
async def post_account(request: web.Request) -> web.Response:
    caller = await _caller(request)
    shape = _shape(AccountShape, await _object(request))
    await request.app[SERVICE].put_account(caller, shape.command())
    return _json({"ok": True})


@documented(Spec("List accounts", "tenant", response=AccountsResponse,
                query=(tenant_query(),)))
async def list_accounts(request: web.Request) -> web.Response:
    caller = await _caller(request)
    tenant_id = _query_str(request, "tenant_id", required=True)
    assert tenant_id is not None
    accounts = await request.app[SERVICE].list_accounts(caller, tenant_id)
    return _json({"ok": True, "accounts": [account_info(a) for a in accounts]})


@documented(Spec("Delete an account", "tenant", response=OkResponse, query=(tenant_query(),)))
async def delete_account(request: web.Request) -> web.Response:
    caller = await _caller(request)
    tenant_id = _query_str(request, "tenant_id", required=True)
    assert tenant_id is not None
    await request.app[SERVICE].delete_account(caller, tenant_id, request.match_info["account_id"])
    return _json({"ok": True})


@documented(Spec("Create or replace a tenant (§7)", "admin", body=TenantBody,
                response=TenantCreatedResponse))
async def post_tenant(request: web.Request) -> web.Response:
    caller = await _caller(request)
    body = await _object(request)
    shape = _shape(TenantShape, body)
    if shape.id is None:
        raise Unprocessable([{"loc": ["body", "id"], "msg": "Field required",
                              "type": "missing"}])
    request.app[SERVICE].require_admin(caller)
    key = await request.app[SERVICE].put_tenant(caller, shape.replacement(shape.id))
    return _json({"ok": True} if key is None else {"ok": True, "api_key": key})


@documented(Spec("List tenants", "admin", response=TenantsResponse,
                query=(Param("active_only", "boolean"),)))
async def list_tenants(request: web.Request) -> web.Response:
    caller = await _caller(request)
    tenants = await request.app[SERVICE].list_tenants(caller, _query_bool(request, "active_only"))
    return _json({"ok": True, "tenants": [tenant_info(t) for t in tenants]})


@documented(Spec("Read one tenant", "tenant", response=TenantInfo))
async def get_tenant(request: web.Request) -> web.Response:
    caller = await _caller(request)
    tenant = await request.app[SERVICE].tenant_in_scope(caller, request.match_info["tenant_id"])
    return _json(tenant_info(tenant))


@documented(Spec("Partial tenant update", "tenant", body=TenantShape, response=OkResponse))
async def put_tenant(request: web.Request) -> web.Response:
    caller = await _caller(request)
    body = await _object(request)
    shape = _shape(TenantShape, {k: v for k, v in body.items() if k != "id"})
    await request.app[SERVICE].update_tenant(caller, request.match_info["tenant_id"],
                                             shape.changes())
    return _json({"ok": True})


@documented(Spec("Delete a tenant and everything it owns", "admin", response=OkResponse))
async def delete_tenant(request: web.Request) -> web.Response:
    caller = await _caller(request)
    await request.app[SERVICE].delete_tenant(caller, request.match_info["tenant_id"])
    return _json({"ok": True})


@documented(Spec("Issue or rotate the tenant token", "admin", body=ApiKeyShape,
                body_required=False, response=ApiKeyResponse))
async def issue_key(request: web.Request) -> web.Response:
    caller = await _caller(request)
    shape = _shape(ApiKeyShape, await _object(request, optional=True))
    expires = None if shape.expires_at is None else int(shape.expires_at)
    key, expires = await request.app[SERVICE].issue_key(
        caller, request.match_info["tenant_id"], expires)
    return _json({"ok": True, "api_key": key, "expires_at": expires})


@documented(Spec("Revoke the tenant token", "admin", response=OkResponse))
async def revoke_key(request: web.Request) -> web.Response:
    caller = await _caller(request)
    await request.app[SERVICE].revoke_key(caller, request.match_info["tenant_id"])
    return _json({"ok": True})


@documented(Spec("Report-loop state per tenant", "admin", response=SyncStatusResponse))
async def sync_status(request: web.Request) -> web.Response:
    caller = await _caller(request)
    service = request.app[SERVICE]
    views = await service.sync_status(caller)
    return _json({"ok": True, "sync_interval_seconds": int(service.sync_rules.interval),
                  "tenants": [sync_info(v) for v in views]})


@documented(Spec("Instance settings", "admin", response=InstanceResponse))
async def get_instance(request: web.Request) -> web.Response:
    caller = await _caller(request)
    config = await request.app[SERVICE].instance(caller)
    return _json({"ok": True, **instance_info(config)})


@documented(Spec("Change instance settings", "admin", body=InstanceShape,
                response=OkResponse))
async def put_instance(request: web.Request) -> web.Response:
    caller = await _caller(request)
    shape = _shape(InstanceShape, await _object(request))
    await request.app[SERVICE].update_instance(caller, shape.changes())
    return _json({"ok": True})


@documented(Spec("Restart the bounce poller", "admin", response=ReloadBounceResponse))
async def reload_bounce(request: web.Request) -> web.Response:
    caller = await _caller(request)
    enabled = await request.app[SERVICE].reload_bounce(caller)
    return _json({"ok": True, "bounce_enabled": enabled})


_SUPPRESSION_QUERY = (Param("address"), Param("limit", "integer", minimum=0, maximum=_MAX_INT64),
                      Param("offset", "integer", minimum=0, maximum=_MAX_INT64))


@documented(Spec("List suppressed addresses (§12)", "tenant", response=SuppressionsResponse,
                 query=_SUPPRESSION_QUERY))
async def list_suppressions(request: web.Request) -> web.Response:
    caller = await _caller(request)
    page = await request.app[BOUNCES].list_suppressions(
        caller, request.match_info["tenant_id"], address=_query_str(request, "address"),
        limit=_query_int(request, "limit", 1000), offset=_query_int(request, "offset", 0))
    return _json({"ok": True, "total": page.total,
                  "suppressions": [suppression_info(s) for s in page.items]})


@documented(Spec("Add suppressed addresses", "tenant", body=SuppressionsShape,
                 response=SuppressionsAddedResponse))
async def add_suppressions(request: web.Request) -> web.Response:
    caller = await _caller(request)
    shape = _shape(SuppressionsShape, await _object(request))
    added = await request.app[BOUNCES].add_suppressions(
        caller, request.match_info["tenant_id"], shape.addresses, shape.reason)
    return _json({"ok": True, "added": added})


@documented(Spec("Remove suppressed addresses", "tenant", body=SuppressionsShape,
                 body_required=False, response=SuppressionsRemovedResponse,
                 query=(Param("address"),)))
async def remove_suppressions(request: web.Request) -> web.Response:
    caller = await _caller(request)
    shape = _shape(SuppressionsShape, await _object(request, optional=True))
    addresses = list(shape.addresses) + request.query.getall("address", [])
    removed = await request.app[BOUNCES].remove_suppressions(
        caller, request.match_info["tenant_id"], addresses)
    return _json({"ok": True, "removed": removed})


def _optional_int(request: web.Request, name: str) -> int | None:
    if not request.query.get(name):
        return None
    return _query_int(request, name, 0)


@documented(Spec("Audit log, newest first", "admin", response=CommandLogResponse, query=(
    *_COMMAND_RANGE, Param("endpoint_filter"),
    Param("limit", "integer", minimum=0, maximum=_MAX_INT64),
    Param("offset", "integer", minimum=0, maximum=_MAX_INT64))))
async def command_log(request: web.Request) -> web.Response:
    caller = await _caller(request)
    since, until = _optional_int(request, "since_ts"), _optional_int(request, "until_ts")
    limit, offset = _query_int(request, "limit", 100), _query_int(request, "offset", 0)
    total, entries = await request.app[SERVICE].command_log(
        caller, tenant_id=_query_str(request, "tenant_id"), since_ts=since, until_ts=until,
        endpoint=_query_str(request, "endpoint_filter"), limit=limit, offset=offset,
    )
    return _json({"ok": True, "total": total, "commands": [
        {"id": e.id, "command_ts": e.command_ts, "endpoint": e.endpoint,
         "tenant_id": e.tenant_id, "payload": e.payload, "response_status": e.response_status}
        for e in entries]})


@documented(Spec("Replayable log: successful commands, oldest first", "admin",
                response=CommandExportResponse, query=_COMMAND_RANGE))
async def command_log_export(request: web.Request) -> web.Response:
    caller = await _caller(request)
    since, until = _optional_int(request, "since_ts"), _optional_int(request, "until_ts")
    entries = await request.app[SERVICE].export_commands(
        caller, tenant_id=_query_str(request, "tenant_id"), since_ts=since, until_ts=until)
    return _json({"ok": True, "commands": [
        {"endpoint": e.endpoint, "tenant_id": e.tenant_id, "payload": e.payload,
         "command_ts": e.command_ts} for e in entries]})


# -- command log -------------------------------------------------------------------------------

_LOGGED_METHODS = frozenset({"POST", "PUT", "DELETE"})
_UNLOGGED_PATHS = frozenset({"/commands/run-now", "/instance/reload-bounce"})


@web.middleware
async def command_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every authenticated POST/PUT/DELETE (§3.7) with its final status, written just
    after the response (MailService.record_command_after), not before it.

    Requests whose token failed are not recorded: an anonymous caller must not be able to
    write into the audit log.
    """
    try:
        response = await handler(request)
        caller = request.get(CALLER)
        if (caller is None or request.method not in _LOGGED_METHODS
                or request.path in _UNLOGGED_PATHS):
            return response
        try:
            payload = await bodies.logged_payload(request)
            await request.app[SERVICE].record_command_after(
                request.method, jsonsafe.scrub(request.path),
                jsonsafe.scrub(_logged_tenant(request, caller, payload)), payload,
                response.status)
        except Exception as exc:  # the command is done; losing its log line is not fatal
            log.warning("command log write failed for %s %s: %s", request.method,
                        request.path, type(exc).__name__)
        return response
    finally:
        bodies.forget(request)  # the body's last reader is done


def _logged_tenant(request: web.Request, caller: Caller, payload: Any) -> str | None:
    if caller.tenant_id is not None:
        return caller.tenant_id
    named = request.match_info.get("tenant_id") or request.query.get("tenant_id")
    if named:
        return named
    if not isinstance(payload, dict):
        return None
    if request.path == "/tenant" and isinstance(payload.get("id"), str):
        return str(payload["id"])
    if isinstance(payload.get("tenant_id"), str):
        return str(payload["tenant_id"])
    messages = payload.get("messages")
    if isinstance(messages, list):
        given = [m.get("tenant_id") for m in messages if isinstance(m, dict)]
        if given and all(isinstance(g, str) for g in given) and len(set(given)) == 1:
            return str(given[0])
    return None
# -- operations: metrics, OpenAPI, docs ------------------------------------------------------

@documented(Spec("Prometheus metrics (§14)", "metrics",
                 media_type="text/plain; version=1.0.0; charset=utf-8"))
async def metrics(request: web.Request) -> web.Response:
    exporter = request.app[METRICS]
    if exporter.token is not None and not await _may_scrape(request, exporter.token):
        raise Unauthorized("Invalid or missing API token")
    body, content_type = await exporter.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _may_scrape(request: web.Request, token: str) -> bool:
    """GMP_METRICS_TOKEN as a bearer token, or the admin token in X-API-Token."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value and same(value.strip(), token):
        return True
    try:
        return (await _caller(request)).admin
    except Unauthorized:
        return False


# Where a browser opening the server's root is sent: the dashboard (its sign-in when signed out).
HOME = "/ui/"


@documented(Spec("302 to the human API reference (a browser lands on HTML)", "public",
                 media_type="text/html"))
async def root(request: web.Request) -> web.Response:
    response = _json({"detail": f"See {HOME}"}, 302)
    response.headers["Location"] = HOME
    return response


@documented(Spec("OpenAPI 3.1 description of every route", "public"))
async def openapi(request: web.Request) -> web.Response:
    return _json(build_openapi(ROUTES))


@documented(Spec("Human API reference rendered from /openapi.json", "public",
                 media_type="text/html"))
async def docs(request: web.Request) -> web.Response:
    page = resources.path("templates", "docs.html").read_bytes()
    return web.Response(body=page, content_type="text/html", charset="utf-8")


_ASSET = re.compile(r"^[a-z0-9_-]+\.(css|js)$")
_ASSET_TYPES = {"css": "text/css", "js": "text/javascript"}


@documented(Spec("Assets of the /docs page", "public", media_type="text/plain"))
async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    match = _ASSET.match(name)
    asset = resources.path("static", "docs", name)
    if match is None or not asset.is_file():
        raise NotFound("asset not found")
    return web.Response(body=asset.read_bytes(), content_type=_ASSET_TYPES[match.group(1)],
                        charset="utf-8")


# -- response shapes ---------------------------------------------------------------------------

def tenant_info(t: Tenant) -> dict[str, Any]:
    large = None
    if t.large_file_config is not None:
        large = {k: v for k, v in t.large_file_config.items() if k != "storage_options"}
    limits = None
    if t.rate_limits is not None:
        limits = {"minute": t.rate_limits.minute, "hour": t.rate_limits.hour,
                  "day": t.rate_limits.day}
    return {
        "id": t.id, "name": t.name, "client_base_url": t.client_base_url,
        "client_sync_path": t.client_sync_path,
        "client_attachment_path": t.client_attachment_path,
        "client_auth": {"method": t.client_auth.method, "user": t.client_auth.user},
        "rate_limits": limits, "large_file_config": large, "active": t.active,
        "api_key_expires_at": t.api_key_expires_at,
        "has_client_secret": bool(t.client_auth.token or t.client_auth.password),
        "has_webhook_secret": t.webhook_secret is not None,
        "has_api_key": t.api_key_hash is not None,
        "suspended_batches": list(t.suspended_batches),
        "created_at": t.created_at, "updated_at": t.updated_at,
        "api_key_expires_at_iso": iso(t.api_key_expires_at), **_iso_stamps(t),
    }


def message_info(v: MessageView) -> dict[str, Any]:
    """The MessageRecord of the contract (§5.2)."""
    record: dict[str, Any] = {
        "pk": v.pk, "id": v.client_id, "tenant_id": v.tenant_id, "tenant_name": v.tenant_name,
        "account_id": v.account_id, "status": v.status, "suspended": v.suspended,
        "priority": v.priority, "batch_code": v.batch_code, "deferred_ts": v.deferred_ts,
        "retry_count": v.retry_count, "sent_ts": v.sent_ts, "error_ts": v.error_ts,
        "error": v.error, "reported_ts": v.reported_ts, "bounce_type": v.bounce_type,
        "bounce_code": v.bounce_code, "bounce_reason": v.bounce_reason,
        "bounce_ts": v.bounce_ts, "is_pec": v.is_pec, "last_error": v.last_error,
        "created_at": v.created_at, "updated_at": v.updated_at, "message": v.message,
    }
    for name in _MESSAGE_TS_FIELDS:
        record[f"{name}_iso"] = iso(record[name])
    record["created_at_iso"] = f"{v.created_at[:10]}T{v.created_at[11:]}Z"
    record["updated_at_iso"] = f"{v.updated_at[:10]}T{v.updated_at[11:]}Z"
    if v.history is not None:
        record["history"] = [history_info(h) for h in v.history]
    return record


# Time fields of a MessageRecord that get an ISO-8601 `<field>_iso` companion.
_MESSAGE_TS_FIELDS = ("deferred_ts", "sent_ts", "error_ts", "reported_ts", "bounce_ts")


def history_info(h: HistoryEntry) -> dict[str, Any]:
    return {
        "event_id": h.event_id, "event_type": h.event_type, "event_ts": h.event_ts,
        "description": h.description, "metadata": h.metadata, "reported_ts": h.reported_ts,
        "event_ts_iso": iso(h.event_ts), "reported_ts_iso": iso(h.reported_ts),
    }


def sync_info(v: SyncView) -> dict[str, Any]:
    t, s = v.tenant, v.state
    return {
        "id": t.id, "name": t.name, "active": t.active, "client_base_url": t.client_base_url,
        "last_sync_ts": s.last_sync_ts, "next_sync_due": v.next_sync_due,
        "next_sync_ts": v.next_sync_ts, "in_dnd": v.in_dnd, "pending_events": v.pending_events,
        "consecutive_failures": s.consecutive_failures,
        "retry_at": None if s.retry_at is None else int(s.retry_at),
        "last_error": s.last_error,
    }


def instance_info(c: InstanceConfig) -> dict[str, Any]:
    port = c.bounce_imap_port or (993 if c.bounce_imap_ssl else 143)
    return {
        "name": c.name, "edition": "ee", "bounce_enabled": c.bounce_enabled,
        "bounce_imap_host": c.bounce_imap_host, "bounce_imap_port": port,
        "bounce_imap_user": c.bounce_imap_user,
        "has_bounce_imap_password": c.bounce_imap_password is not None,
        "bounce_imap_folder": c.bounce_imap_folder, "bounce_imap_ssl": c.bounce_imap_ssl,
        "bounce_poll_interval": c.bounce_poll_interval,
        "bounce_return_path": c.bounce_return_path,
        "created_at": c.created_at, "updated_at": c.updated_at,
    }


def suppression_info(s: SuppressionView) -> dict[str, Any]:
    bounce_type = {"hard_bounce": "hard", "soft_bounce": "soft"}.get(s.source.value)
    return {"address": s.address, "reason": s.reason,
            "source": "manual" if bounce_type is None else "bounce", "bounce_type": bounce_type,
            "bounce_code": s.bounce_code, "message_id": s.message_id,
            "created_ts": s.created_ts}


def account_info(a: Account) -> dict[str, Any]:
    return {
        "id": a.id, "tenant_id": a.tenant_id, "host": a.host, "port": a.port, "user": a.user,
        "use_tls": a.use_tls, "ttl": a.ttl, "limit_per_minute": a.limits.minute,
        "limit_per_hour": a.limits.hour, "limit_per_day": a.limits.day,
        "limit_behavior": a.limit_behavior.value, "batch_size": a.batch_size,
        "is_pec_account": a.is_pec_account, "imap_host": a.imap_host, "imap_port": a.imap_port,
        "imap_user": a.imap_user, "imap_folder": a.imap_folder, "imap_ssl": a.imap_ssl,
        "has_password": a.password is not None,
        "has_submission_password": a.submission_password_hash is not None,
        "has_imap_password": a.imap_password is not None,
        "created_at": a.created_at, "updated_at": a.updated_at, **_iso_stamps(a),
    }


def _iso_stamps(row: Tenant | Account) -> dict[str, str | None]:
    """ISO-8601 UTC companions of the v0.6 `YYYY-MM-DD HH:MM:SS` strings (§1)."""
    return {"created_at_iso": iso_of_text(row.created_at),
            "updated_at_iso": iso_of_text(row.updated_at)}


# -- the route table ---------------------------------------------------------------------------

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/", root),
    ("GET", "/health", health),
    ("GET", "/status", status),
    ("POST", "/commands/add-messages", add_messages),
    ("POST", "/commands/run-now", run_now),
    ("POST", "/commands/suspend", suspend),
    ("POST", "/commands/activate", activate),
    ("POST", "/commands/delete-messages", delete_messages),
    ("POST", "/commands/cleanup-messages", cleanup_messages),
    ("GET", "/messages", list_messages),
    ("POST", "/account", post_account),
    ("GET", "/accounts", list_accounts),
    ("DELETE", "/account/{account_id}", delete_account),
    ("POST", "/tenant", post_tenant),
    ("GET", "/tenants", list_tenants),
    ("GET", "/tenants/sync-status", sync_status),
    ("GET", "/tenant/{tenant_id}", get_tenant),
    ("PUT", "/tenant/{tenant_id}", put_tenant),
    ("DELETE", "/tenant/{tenant_id}", delete_tenant),
    ("POST", "/tenant/{tenant_id}/api-key", issue_key),
    ("DELETE", "/tenant/{tenant_id}/api-key", revoke_key),
    ("GET", "/tenant/{tenant_id}/suppressions", list_suppressions),
    ("POST", "/tenant/{tenant_id}/suppressions", add_suppressions),
    ("DELETE", "/tenant/{tenant_id}/suppressions", remove_suppressions),
    ("GET", "/instance", get_instance),
    ("PUT", "/instance", put_instance),
    ("POST", "/instance/reload-bounce", reload_bounce),
    ("GET", "/command-log", command_log),
    ("GET", "/command-log/export", command_log_export),
    ("GET", "/metrics", metrics),
    ("GET", "/download/{token}/{filename}", download),
    ("GET", "/openapi.json", openapi),
    ("GET", "/docs", docs),
    ("GET", "/docs/static/{name}", docs_asset),
)


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
