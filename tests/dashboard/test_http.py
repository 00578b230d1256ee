"""The dashboard over HTTP with aiohttp's client: sign-in, cookie flags, CSRF, CSP, ETag,
pagination, actions and tenant isolation, against the real app (worker and relay running)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, CookieJar
from aiohttp.test_utils import TestClient

from mailproxy.app import build, make_app
from mailproxy.bounces.model import BounceType, MailboxCursor, ParsedBounce
from tests.conftest import ADMIN, Api, ApiFactory, eventually, make_settings, message
from tests.dashboard.ui import csrf_of, sign_in
from tests.relay import Relay


async def _new_client(api: Api) -> ClientSession:
    """A second browser: its own cookie jar against the same server."""
    return ClientSession(base_url=str(api.client.make_url("/")),
                         cookie_jar=CookieJar(unsafe=True))  # cookies for 127.0.0.1


async def _texts(client: Any, path: str) -> tuple[int, str]:
    async with client.get(path, allow_redirects=False) as resp:
        return resp.status, await resp.text()


async def test_pages_need_a_session_and_the_token_never_travels_in_a_url(api: Api) -> None:
    status, _ = await _texts(api.client, "/ui/")
    assert status == 303
    async with api.client.get("/ui/queue", allow_redirects=False) as resp:
        assert resp.headers["Location"] == "/ui/login"
    async with api.client.get("/ui/fragments/overview", headers={"HX-Request": "true"}) as resp:
        assert resp.status == 401 and resp.headers["HX-Redirect"] == "/ui/login"
    # the API token is not a dashboard credential, in a header or in the query string
    async with api.client.get(f"/ui/?token={ADMIN}", headers={"X-API-Token": ADMIN},
                              allow_redirects=False) as resp:
        assert resp.status == 303
    status, page = await _texts(api.client, "/ui/login")
    assert status == 200 and 'method="post"' in page and 'type="password"' in page


async def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_clears_it(api: Api) -> None:
    async with api.client.get("/ui/login") as resp:
        form_csrf = csrf_of(await resp.text())
    async with api.client.post("/ui/login", data={"token": "wrong", "csrf": form_csrf}) as resp:
        assert resp.status == 401
        assert "not valid" in await resp.text()
    async with api.client.post("/ui/login", data={"token": ADMIN, "csrf": form_csrf},
                               allow_redirects=False) as resp:
        assert resp.status == 303
        cookie = resp.cookies["gmp_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ui"
        assert ADMIN not in cookie.value
        assert resp.headers["Location"] == "/ui/"
    status, page = await _texts(api.client, "/ui/")
    assert status == 200 and ">admin<" in page
    csrf = csrf_of(page)
    async with api.client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False) as resp:
        assert resp.status == 303
    assert (await _texts(api.client, "/ui/"))[0] == 303


async def test_forged_or_foreign_cookies_are_refused(api: Api) -> None:
    await sign_in(api.client, ADMIN)
    jar = api.client.session.cookie_jar
    value = next(c.value for c in jar if c.key == "gmp_session")
    body, _, sig = value.partition(".")
    jar.clear()
    jar.update_cookies({"gmp_session": body + "." + sig[::-1]})
    assert (await _texts(api.client, "/ui/"))[0] == 303
    # rotating the admin token ends every session
    await sign_in(api.client, ADMIN)
    api.parts.service.admin_token = "rotated-token"  # type: ignore[attr-defined]
    assert (await _texts(api.client, "/ui/"))[0] == 303


async def test_every_state_change_needs_the_csrf_token(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay)
    csrf = await sign_in(api.client, ADMIN)
    data = {"tenant_id": "acme", "mode": "suspend"}
    async with api.client.post("/ui/suspension", data=data) as resp:
        assert resp.status == 403 and "CSRF" in await resp.text()
    async with api.client.post("/ui/suspension", data={**data, "csrf": "x" * 43}) as resp:
        assert resp.status == 403
    async with api.client.post("/ui/suspension", data={**data, "csrf": csrf},
                               headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403
    assert (await api.ok("GET", "/tenant/acme"))["suspended_batches"] == []
    async with api.client.post("/ui/suspension", data={**data, "csrf": csrf},
                               allow_redirects=False) as resp:
        assert resp.status == 303
    assert (await api.ok("GET", "/tenant/acme"))["suspended_batches"] == ["*"]
    log = await api.ok("GET", "/command-log", params={"endpoint_filter": "suspend"})
    assert log["commands"][0]["payload"]["via"] == "dashboard"
    # the sign-in form has its own token too
    async with api.client.post("/ui/login", data={"token": ADMIN}) as resp:
        assert resp.status == 403


async def test_security_headers_and_local_assets(api: Api) -> None:
    await sign_in(api.client, ADMIN)
    async with api.client.get("/ui/") as resp:
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce is not None and "default-src 'none'" in csp and "unsafe" not in csp
    scripts = re.findall(r"<script([^>]*)>", page)
    assert scripts and all(f'nonce="{nonce.group(1)}"' in s and 'src="/ui/static/' in s
                           for s in scripts)
    assert "http://" not in page.split("<main>")[0] and "https://" not in page
    for path in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page):
        async with api.client.get(path) as resp:
            assert resp.status == 200, path
    async with api.client.get("/ui/static/../pyproject.toml") as resp:
        assert resp.status == 404
    async with api.client.get("/", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/ui/"


async def test_fragments_answer_304_when_nothing_changed(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay)
    await sign_in(api.client, ADMIN)
    async with api.client.get("/ui/fragments/overview") as resp:
        etag = resp.headers["ETag"]
        assert resp.headers["Cache-Control"].startswith("no-cache")
    async with api.client.get("/ui/fragments/overview", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    await api.send(message(1))

    async def changed() -> bool:
        async with api.client.get("/ui/fragments/overview",
                                  headers={"If-None-Match": etag}) as resp:
            return resp.status == 200
    await eventually(changed)


async def test_queue_pages_with_a_keyset_cursor(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay)
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    await api.send(*[message(i) for i in range(120)])
    await sign_in(api.client, ADMIN)
    seen: list[str] = []
    path = "/ui/queue?q=tenant:acme"
    while path:
        status, page = await _texts(api.client, path)
        assert status == 200
        assert "offset" not in page
        seen.extend(re.findall(r'class="mono">(m\d+)</a>', page))
        more = re.search(r'href="([^"]+)" id="older"', page)
        path = more.group(1).replace("&amp;", "&") if more else ""
    assert len(seen) == 120 and len(set(seen)) == 120
    status, page = await _texts(api.client, "/ui/queue?q=bogus:1")
    assert status == 200 and "unknown key" in page


async def test_bulk_cancel_confirms_the_exact_count(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay)
    await api.ok("POST", "/commands/suspend", params={"tenant_id": "acme"})
    await api.send(*[message(i, batch_code="promo") for i in range(5)], message(9))
    csrf = await sign_in(api.client, ADMIN)
    form = {"csrf": csrf, "q": "batch:promo", "action": "cancel"}
    async with api.client.post("/ui/queue/bulk", data=form) as resp:
        page = await resp.text()
    assert "Cancel 5 messages?" in page
    async with api.client.post("/ui/queue/bulk", data={**form, "expected": "4"}) as resp:
        assert "5 messages match now, not 4" in await resp.text()
    assert all(m["status"] == "pending" for m in await api.messages())
    async with api.client.post("/ui/queue/bulk", data={**form, "expected": "5"}) as resp:
        assert "5 of 5 messages changed" in await resp.text()
    statuses = {m["id"]: m["status"] for m in await api.messages()}
    assert statuses == {**{f"m{i}": "error" for i in range(5)}, "m9": "pending"}
    log = await api.ok("GET", "/command-log", params={"endpoint_filter": "/ui/queue/bulk"})
    assert log["commands"][0]["payload"]["count"] == 5


async def test_a_tenant_session_sees_and_touches_only_its_tenant(api: Api, relay: Relay) -> None:
    acme_key = await api.tenant("acme")
    await api.tenant("beta")
    await api.account(relay)
    await api.account(relay, "beta")
    for tenant_id in ("acme", "beta"):
        await api.ok("POST", "/commands/suspend", params={"tenant_id": tenant_id})
    await api.send(message(1), message(2, tenant_id="beta", account_id="main",
                                       subject="beta secret"))
    beta_pk = (await api.messages("beta"))[0]["pk"]
    async with await _new_client(api) as browser:
        csrf = await sign_in(browser, acme_key)
        for path in ("/ui/", "/ui/queue", "/ui/fragments/overview", "/ui/rates",
                     "/ui/queue?q=secret"):
            status, page = await _texts(browser, path)
            assert status == 200 and "beta" not in page, path
        status, page = await _texts(browser, "/ui/queue?q=tenant:beta")
        assert "only its own tenant" in page and "beta secret" not in page
        assert (await _texts(browser, f"/ui/messages/{beta_pk}"))[0] == 404
        async with browser.post(f"/ui/messages/{beta_pk}/cancel", data={"csrf": csrf}) as resp:
            assert resp.status == 404
        async with browser.post("/ui/suspension", data={
                "csrf": csrf, "tenant_id": "beta", "mode": "activate"}) as resp:
            assert resp.status == 403
        async with browser.post("/ui/queue/bulk", data={
                "csrf": csrf, "q": "", "action": "cancel", "expected": "1"}) as resp:
            assert "1 of 1 messages changed" in await resp.text()
    assert (await api.messages("beta"))[0]["status"] == "pending"
    assert (await api.ok("GET", "/tenant/beta"))["suspended_batches"] == ["*"]
    # revoking the tenant's key ends its sessions
    async with await _new_client(api) as browser:
        await sign_in(browser, acme_key)
        await api.ok("DELETE", "/tenant/acme/api-key")
        assert (await _texts(browser, "/ui/"))[0] == 303


async def test_bounces_and_suppressions_stay_in_their_tenant(api: Api, relay: Relay) -> None:
    acme_key = await api.tenant("acme")
    await api.tenant("beta")
    await api.account(relay)
    await api.account(relay, "beta")
    await api.send(message(1, tenant_id="beta", to=["gone@beta.example"]))
    await relay.wait_for(1)
    pk = (await api.messages("beta"))[0]["pk"]
    parts = api.parts  # type: ignore[attr-defined]
    await parts.bounces.record(MailboxCursor("INBOX", 1, 1), [ParsedBounce(
        recipient="gone@beta.example", type=BounceType.HARD, code="5.1.1",
        reason="550 user unknown", fingerprint="fp-1", pk=pk)])
    await sign_in(api.client, ADMIN)
    assert "gone@beta.example" in (await _texts(api.client, "/ui/bounces"))[1]
    async with await _new_client(api) as browser:
        csrf = await sign_in(browser, acme_key)
        status, page = await _texts(browser, "/ui/bounces")
        assert status == 200 and "gone@beta.example" not in page
        async with browser.post("/ui/suppressions", data={
                "csrf": csrf, "tenant_id": "beta", "mode": "remove",
                "address": "gone@beta.example"}) as resp:
            assert resp.status == 403
        async with browser.post("/ui/suppressions", data={
                "csrf": csrf, "mode": "add", "address": "no-mail@acme.example"},
                allow_redirects=False) as resp:
            assert resp.status == 303
    beta = await api.ok("GET", "/tenant/beta/suppressions")
    assert [s["address"] for s in beta["suppressions"]] == ["gone@beta.example"]
    acme = await api.ok("GET", "/tenant/acme/suppressions")
    assert [s["address"] for s in acme["suppressions"]] == ["no-mail@acme.example"]


async def test_without_bounce_storage_the_page_is_an_empty_state(
        tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]) -> None:
    parts = await build(make_settings(tmp_path / "data"))
    parts.bounces = None
    client = await aiohttp_client(make_app(parts))
    await sign_in(client, ADMIN)
    status, page = await _texts(client, "/ui/bounces")
    assert status == 200 and 'id="bounces-empty"' in page


async def test_rate_usage_shows_a_full_window_and_who_waits(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay, limit_per_minute=2)
    await api.send(*[message(i) for i in range(3)])
    await relay.wait_for(2)
    await sign_in(api.client, ADMIN)

    async def waiting() -> bool:
        page = (await _texts(api.client, "/ui/rates"))[1]
        row = re.search(r'data-scope="acme/main">(.*?)</tr>', page, re.S)
        assert row is not None
        return "2 / 2" in row.group(1) and 'class="bar full"' in row.group(1) and re.search(
            r'<td class="num">1</td>', row.group(1)) is not None
    await eventually(waiting, timeout=10)
    page = (await _texts(api.client, "/ui/rates"))[1]
    tenant_row = re.search(r'data-scope="acme/\*">(.*?)</tr>', page, re.S)
    assert tenant_row is not None and "no limit" in tenant_row.group(1)
    assert re.search(r'<span class="small">2</span>', tenant_row.group(1))


async def test_retry_now_makes_a_deferred_message_due(make_api: ApiFactory, relay: Relay
                                                      ) -> None:
    # A retry an hour away: only "retry now" makes the message due before the test ends (with
    # the suite's 1 s retry base, the worker could send it first under load).
    api = await make_api(retry_base_seconds=3600)
    await api.tenant("acme")
    await api.account(relay)
    relay.rcpt_replies["slow@example.org"] = "451 4.7.1 try later"
    await api.send(message(1, to=["slow@example.org"]))

    async def deferred() -> bool:
        return (await api.messages())[0]["status"] == "deferred"
    await eventually(deferred)
    pk = (await api.messages())[0]["pk"]
    relay.rcpt_replies.clear()
    csrf = await sign_in(api.client, ADMIN)
    _status, page = await _texts(api.client, f"/ui/messages/{pk}")
    assert 'id="retry"' in page and 'data-countdown="' in page
    async with api.client.post(f"/ui/messages/{pk}/retry", data={"csrf": csrf},
                               allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"].endswith("?done=retry")

    async def sent() -> bool:
        return (await api.messages())[0]["status"] == "sent"
    await eventually(sent, timeout=10)
    async with api.client.post(f"/ui/messages/{pk}/retry", data={"csrf": csrf}) as resp:
        assert resp.status == 400 and "cannot retry a message that is sent" in await resp.text()
    log = await api.ok("GET", "/command-log", params={"endpoint_filter": "/retry"})
    assert log["commands"][0]["payload"] == {"pk": pk, "action": "retry", "via": "dashboard"}


async def test_hostile_cursors_queries_and_addresses_get_no_500(api: Api, relay: Relay) -> None:
    await api.tenant("acme")
    await api.account(relay)
    csrf = await sign_in(api.client, ADMIN)
    for path in ("/ui/queue?after=1_99999999999999999999999", "/ui/queue?after=inf_1",
                 "/ui/queue?after=nan_-5"):
        status, page = await _texts(api.client, path)
        assert status == 200, path  # a cursor that points at nothing starts from the top
    status, page = await _texts(api.client, "/ui/queue?q=to:%00x")
    assert status == 200 and "invalid character" in page
    async with api.client.post("/ui/suppressions", data={
            "csrf": csrf, "tenant_id": "acme", "mode": "add",
            "address": "\x00a@example.org"}) as resp:
        assert 400 <= resp.status < 500
    acme = await api.ok("GET", "/tenant/acme/suppressions")
    assert acme["suppressions"] == []
