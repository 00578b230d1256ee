"""The dashboard's HTTP side: sign-in, pages, htmx fragments and forms under /ui/.

Thin by design: each view reads the session, calls a Dashboard use case and renders a
template. Security headers (a nonce-based CSP), the session check and CSRF live in the
middleware below, so no view can forget them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from mailproxy import resources
from mailproxy.dashboard import render, session
from mailproxy.dashboard.query import KEYS, QueryError
from mailproxy.dashboard.usecases import ACTIONS, Dashboard
from mailproxy.errors import Conflict, Forbidden, InvalidRequest, MailProxyError, NotFound
from mailproxy.service import Caller
from mailproxy.tokens import hash_token

log = logging.getLogger("mailproxy.dashboard")

DASHBOARD = web.AppKey("dashboard", Dashboard)
SESSION = web.RequestKey("session", session.Session)
NONCE = web.RequestKey("nonce", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/ui"
_PUBLIC = frozenset({f"{PREFIX}/login"})
_ASSET = re.compile(r"^(ui|vendor)/[A-Za-z0-9_.-]+\.(css|js)$")
_ASSET_TYPES = {"css": "text/css", "js": "text/javascript"}
_STATUS_OF: dict[type[Exception], int] = {NotFound: 404, Forbidden: 403, InvalidRequest: 400,
                                          Conflict: 409, QueryError: 400}


def _csp(nonce: str) -> str:
    return ("default-src 'none'; "
            f"script-src 'self' 'nonce-{nonce}'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _dash(request: web.Request) -> Dashboard:
    return request.app[DASHBOARD]


def _caller(request: web.Request) -> Caller:
    return Caller(tenant_id=request[SESSION].tenant_id)


# -- middleware --------------------------------------------------------------------------------

@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CSP nonce, session, CSRF, and HTML (not JSON) errors for everything under /ui/."""
    nonce = secrets.token_urlsafe(16)
    request[NONCE] = nonce
    try:
        response = await _guarded(request, handler)
    except (MailProxyError, QueryError) as exc:
        response = _error_page(request, _STATUS_OF.get(type(exc), 400), str(exc))
    response.headers["Content-Security-Policy"] = _csp(nonce)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes Origin "null"
    response.headers["X-Frame-Options"] = "DENY"
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(f"{PREFIX}/static/"):
        return await handler(request)
    if request.path in _PUBLIC:
        if request.method == "POST" and not _same_origin(request):
            return _error_page(request, 403, "cross-site form refused")
        return await handler(request)
    current = await _session_of(request)
    if current is None:
        if request.method == "GET" and not request.headers.get("HX-Request"):
            return _see_other(f"{PREFIX}/login")
        return _error_page(request, 401, "signed out: sign in again", hx_redirect=True)
    request[SESSION] = current
    if request.method == "POST" and not await _csrf_ok(request, current):
        return _error_page(request, 403, "missing or stale form token (CSRF): reload the page")
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


async def _csrf_ok(request: web.Request, current: session.Session) -> bool:
    if not _same_origin(request):
        return False
    given = request.headers.get("X-CSRF-Token")
    if given is None:
        form = await request.post()
        value = form.get("csrf")
        given = value if isinstance(value, str) else None
    return session.csrf_ok(_dash(request).service.admin_token, current.sid, given)


async def _session_of(request: web.Request) -> session.Session | None:
    dash = _dash(request)
    current = session.read(dash.service.admin_token, request.cookies.get(session.COOKIE),
                           dash.now())
    if current is None or current.admin:
        return current
    if not await dash.service.key_current(str(current.tenant_id), current.key_print):
        return None
    return current


def _error_page(request: web.Request, status: int, message: str, *,
                hx_redirect: bool = False) -> web.Response:
    if request.headers.get("HX-Request"):
        response = web.Response(status=status, text=message, content_type="text/plain")
        if hx_redirect:
            response.headers["HX-Redirect"] = f"{PREFIX}/login"
        return response
    response = aiohttp_jinja2.render_template(
        "ui/error.html", request, _context(request, status=status, message=message))
    response.set_status(status)
    return response


# -- context -----------------------------------------------------------------------------------

def _context(request: web.Request, **values: Any) -> dict[str, Any]:
    current = request.get(SESSION)
    csrf = None
    if current is not None:
        csrf = session.csrf_token(_dash(request).service.admin_token, current.sid)
    return {"nonce": request[NONCE], "session": current, "csrf": csrf, "prefix": PREFIX,
            "path": request.path, "query_keys": KEYS, **values}


def _page(template: str, request: web.Request, **values: Any) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, _context(request, **values))
    response.headers["Cache-Control"] = "no-store"
    return response


def _fragment(template: str, request: web.Request, **values: Any) -> web.Response:
    """A polled fragment with an ETag: 304 when the client already has this content.

    The tag is a digest of the values the template shows (and of the session it renders
    for), so an unchanged fragment is answered before any rendering.
    """
    env = aiohttp_jinja2.get_env(request.app)
    compiled = env.get_template(template)  # cached; its file's mtime marks a new template
    stamp = os.stat(compiled.filename).st_mtime_ns if compiled.filename else 0
    seed = repr((template, stamp, sorted(values.items()), request.get(SESSION)))
    etag = '"' + hashlib.sha256(seed.encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache, private", "Vary": "Cookie"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    body = compiled.render(_context(request, **values)).encode()
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)


# -- sign-in -----------------------------------------------------------------------------------

async def login_form(request: web.Request) -> web.Response:
    nonce = session.new_login_nonce()
    response = _page("ui/login.html", request, login_csrf=_login_token(request, nonce),
                     problem=None)
    _set_cookie(request, response, session.LOGIN_COOKIE, nonce, max_age=1800)
    return response


def _login_token(request: web.Request, nonce: str) -> str:
    return session.csrf_token(_dash(request).service.admin_token, f"login:{nonce}")


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    nonce = request.cookies.get(session.LOGIN_COOKIE, "")
    if not nonce or not session.csrf_ok(_dash(request).service.admin_token, f"login:{nonce}",
                                        _text(form.get("csrf"))):
        return _error_page(request, 403, "the sign-in form expired: reload it")
    token = (_text(form.get("token")) or "").strip()
    dash = _dash(request)
    try:
        caller = await dash.service.authenticate(token)
    except MailProxyError:
        response = _page("ui/login.html", request, login_csrf=_login_token(request, nonce),
                         problem="That token is not valid.")
        response.set_status(401)
        return response
    cookie = session.issue(dash.service.admin_token, caller.tenant_id,
                           None if caller.admin else hash_token(token), dash.now())
    response = _see_other(f"{PREFIX}/")
    _set_cookie(request, response, session.COOKIE, cookie, max_age=session.LIFETIME)
    response.del_cookie(session.LOGIN_COOKIE, path=PREFIX)
    return response


async def logout(request: web.Request) -> web.Response:
    response = _see_other(f"{PREFIX}/login")
    response.del_cookie(session.COOKIE, path=PREFIX)
    return response


def _set_cookie(request: web.Request, response: web.Response, name: str, value: str, *,
                max_age: int) -> None:
    """HttpOnly and SameSite=Strict always; Secure when the dashboard is served over TLS."""
    response.set_cookie(name, value, path=PREFIX, max_age=max_age, httponly=True,
                        samesite="Strict", secure=request.secure or None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- pages -------------------------------------------------------------------------------------

async def overview(request: web.Request) -> web.Response:
    data = await _dash(request).overview(_caller(request))
    return _page("ui/overview.html", request, o=render.overview(data),
                 notice=request.query.get("done"))


async def overview_fragment(request: web.Request) -> web.Response:
    data = await _dash(request).overview(_caller(request))
    return _fragment("ui/_overview.html", request, o=render.overview(data))


async def _queue_values(request: web.Request) -> dict[str, Any]:
    text = request.query.get("q", "")
    cursor = request.query.get("after")
    try:
        flt, page = await _dash(request).queue(_caller(request), text, cursor)
    except QueryError as exc:
        return {"q": text, "problem": str(exc), "page": None, "first": cursor is None,
                "flt": None}
    more = None
    if page.next_cursor is not None:
        more = f"{PREFIX}/queue?" + urlencode({"q": text, "after": page.next_cursor.encode()})
    return {"q": text, "problem": None, "page": page, "more": more, "first": cursor is None,
            "flt": flt,
            "fragment_url": f"{PREFIX}/fragments/queue?" + urlencode({"q": text})}


async def queue(request: web.Request) -> web.Response:
    return _page("ui/queue.html", request, notice=request.query.get("done"),
                 here=request.path_qs, **await _queue_values(request))


async def queue_fragment(request: web.Request) -> web.Response:
    return _fragment("ui/_queue_rows.html", request, **await _queue_values(request))


async def message(request: web.Request) -> web.Response:
    detail = await _dash(request).message(_caller(request), request.match_info["pk"])
    return _page("ui/message.html", request, m=render.message(detail),
                 notice=request.query.get("done"))


async def message_action(request: web.Request) -> web.Response:
    pk, action = request.match_info["pk"], request.match_info["action"]
    if action not in ACTIONS:
        raise NotFound("unknown action")
    await _dash(request).act_on_message(_caller(request), pk, action)
    return _see_other(f"{PREFIX}/messages/{quote(pk)}?done={action}")


async def bulk(request: web.Request) -> web.Response:
    form = await request.post()
    text, action = _text(form.get("q")) or "", _text(form.get("action")) or ""
    dash, caller = _dash(request), _caller(request)
    confirmed = _text(form.get("expected"))
    if confirmed is None:
        count = await dash.bulk_count(caller, text, action)
        return _page("ui/bulk.html", request, q=text, action=action, count=count, result=None,
                     problem=None)
    if not confirmed.isdigit():
        raise InvalidRequest("expected must be a number")
    try:
        result = await dash.bulk(caller, text, action, int(confirmed))
    except Conflict as exc:
        count = await dash.bulk_count(caller, text, action)
        return _page("ui/bulk.html", request, q=text, action=action, count=count,
                     result=None, problem=str(exc))
    return _page("ui/bulk.html", request, q=text, action=action, count=result.matched,
                 result=result, problem=None)


async def suspension(request: web.Request) -> web.Response:
    form = await request.post()
    tenant_id = _text(form.get("tenant_id")) or ""
    batch = (_text(form.get("batch_code")) or "").strip() or None
    mode = _text(form.get("mode"))
    if mode not in ("suspend", "activate"):
        raise InvalidRequest("mode must be suspend or activate")
    await _dash(request).suspend(_caller(request), tenant_id, batch, mode == "suspend")
    back = _text(form.get("next")) or f"{PREFIX}/"
    if not back.startswith(f"{PREFIX}/") or "\n" in back or "\r" in back:
        back = f"{PREFIX}/"
    what = f"{mode}d batch {batch}" if batch else f"{mode}d tenant {tenant_id}"
    return _see_other(back + ("&" if "?" in back else "?") + urlencode({"done": what}))


async def rates(request: web.Request) -> web.Response:
    rows = await _dash(request).rates(_caller(request))
    return _page("ui/rates.html", request, rows=[render.rate_row(r) for r in rows])


async def bounces(request: web.Request) -> web.Response:
    dash = _dash(request)
    found, suppressed = await dash.bounce_page(_caller(request))
    return _page("ui/bounces.html", request, bounces=found, suppressions=suppressed,
                 available=dash.bounces.available, notice=request.query.get("done"))


async def suppression(request: web.Request) -> web.Response:
    form = await request.post()
    tenant_id = _text(form.get("tenant_id")) or (request[SESSION].tenant_id or "")
    add = _text(form.get("mode")) == "add"
    await _dash(request).change_suppression(
        _caller(request), tenant_id, _text(form.get("address")) or "", add,
        (_text(form.get("reason")) or "").strip() or None)
    return _see_other(f"{PREFIX}/bounces?done={'added' if add else 'removed'}")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    match = _ASSET.match(name)
    path = resources.path("static", *name.split("/"))
    if match is None or not path.is_file():
        raise NotFound("asset not found")
    return web.Response(body=path.read_bytes(), content_type=_ASSET_TYPES[match.group(2)],
                        charset="utf-8", headers={"Cache-Control": "public, max-age=3600"})


async def root(_request: web.Request) -> web.Response:
    """A browser opening the server lands on the dashboard."""
    return _see_other(f"{PREFIX}/")


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/", overview),
    ("GET", "/login", login_form),
    ("POST", "/login", login),
    ("POST", "/logout", logout),
    ("GET", "/fragments/overview", overview_fragment),
    ("GET", "/queue", queue),
    ("GET", "/fragments/queue", queue_fragment),
    ("POST", "/queue/bulk", bulk),
    ("GET", "/messages/{pk}", message),
    ("POST", "/messages/{pk}/{action}", message_action),
    ("POST", "/suspension", suspension),
    ("GET", "/rates", rates),
    ("GET", "/bounces", bounces),
    ("POST", "/suppressions", suppression),
    ("GET", "/static/{name:.+}", asset),
)


def setup(app: web.Application, dashboard: Dashboard) -> web.Application:
    """Mount the dashboard under /ui/ on the main app (and /ui without the slash)."""
    ui = web.Application(middlewares=[security_middleware])
    ui[DASHBOARD] = dashboard
    env = aiohttp_jinja2.setup(
        ui, loader=jinja2.FileSystemLoader(str(resources.root("templates"))),
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    env.filters.update(render.FILTERS)
    for method, path, handler in ROUTES:
        ui.router.add_route(method, path, handler)
    app.add_subapp(f"{PREFIX}/", ui)
    app.router.add_get(PREFIX, root)  # GET / itself is the REST table's (http.HOME)
    return ui

