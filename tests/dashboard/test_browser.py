"""The dashboard in real Chromium: sign in, live updates, the query box, a message's
attempts, suspend/activate a batch, the bounce page, and tenant isolation. Screenshots of
each page in light and dark go to test-artifacts/dashboard/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from mailproxy.app import build, make_app
from mailproxy.bounces.model import BounceType, MailboxCursor, ParsedBounce
from tests.conftest import ADMIN, make_settings, message
from tests.dashboard.browser import browser, shot
from tests.relay import Relay

__all__ = ["browser"]
WAIT = 20_000  # ms: the machine is shared; polls run every 3 s


class Server:
    def __init__(self, server: TestServer, parts: Any) -> None:
        self.server = server
        self.parts = parts
        self.url = str(server.make_url("/")).rstrip("/")

    async def api(self, method: str, path: str, *, token: str = ADMIN, **kw: Any) -> Any:
        async with ClientSession() as http, http.request(
                method, self.url + path, headers={"X-API-Token": token}, **kw) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return body


@pytest.fixture
async def server(tmp_path: Path, relay: Relay,
                 aiohttp_server: Callable[..., Awaitable[TestServer]]) -> AsyncIterator[Server]:
    parts = await build(make_settings(tmp_path / "data", retry_base_seconds=1))
    running = Server(await aiohttp_server(make_app(parts)), parts)
    yield running


async def _sign_in(context: Any, url: str, token: str) -> Any:
    page = await context.new_page()
    await page.goto(url + "/ui/")
    assert page.url.endswith("/ui/login")
    await page.fill("#token", token)
    await page.click("#sign-in")
    await page.wait_for_url(re.compile(r"/ui/$"))
    return page


async def _setup(server: Server, relay: Relay) -> dict[str, str]:
    keys = {}
    for tenant_id in ("acme", "beta"):
        body = await server.api("POST", "/tenant", json={"id": tenant_id,
                                                          "name": tenant_id.title()})
        keys[tenant_id] = body["api_key"]
        await server.api("POST", "/account", json={
            "id": "main", "tenant_id": tenant_id, "host": relay.host, "port": relay.port,
            "use_tls": False, "limit_per_minute": 100})
    return keys


async def test_operator_journey(browser: Any, server: Server, relay: Relay) -> None:
    keys = await _setup(server, relay)
    relay.rcpt_replies["slow@example.org"] = "451 4.7.1 greylisted, try later"
    await server.api("POST", "/commands/add-messages", json={"messages": [
        message(1), message(2, to=["slow@example.org"], batch_code="spring"),
        message(3, tenant_id="beta", subject="beta only")]})
    await relay.wait_for(2, timeout=10)
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await _sign_in(context, server.url, ADMIN)
    assert await page.text_content("#who") == "admin"
    await page.wait_for_function(
        "Number(document.querySelector('#count-sent .n').textContent) >= 2", timeout=WAIT)
    await page.screenshot(path=shot("overview-light"), full_page=True)

    # a REST enqueue shows up on the open queue page without a reload
    await page.goto(server.url + "/ui/queue")
    await page.evaluate("window.__stillHere = true")
    await server.api("POST", "/commands/suspend", params={"tenant_id": "acme",
                                                          "batch_code": "spring"})
    await server.api("POST", "/commands/add-messages", json={"messages": [
        message("live", batch_code="spring", subject="Arrived live")]})
    await page.wait_for_selector("text=Arrived live", timeout=WAIT)
    assert await page.evaluate("window.__stillHere") is True

    # the query box
    await page.fill("#q", "batch:spring tenant:acme")
    await page.press("#q", "Enter")
    await page.wait_for_url(re.compile(r"q=batch%3Aspring"))
    ids = await page.locator("#messages a.mono").all_text_contents()
    assert sorted(ids) == ["m2", "mlive"]
    await page.screenshot(path=shot("queue-light"), full_page=True)
    await page.click("#queue-activate-batch")
    await page.wait_for_selector("#notice")
    assert (await server.api("GET", "/tenant/acme"))["suspended_batches"] == []
    assert "batch%3Aspring" in page.url  # back on the same filtered page

    # a message page with its attempts (451 from the relay, retried)
    await page.click("text=m2")
    await page.wait_for_selector("#timeline")
    await page.wait_for_function(
        "document.querySelectorAll('#timeline li.attempt').length >= 1", timeout=WAIT)
    timeline = await page.text_content("#timeline")
    assert "451" in timeline and "greylisted" in timeline and "took" in timeline

    # suspend and activate the batch from the message page
    await page.click("#suspend-batch")
    await page.wait_for_selector("#notice")
    assert (await server.api("GET", "/tenant/acme"))["suspended_batches"] == ["spring"]
    await page.click("#activate-batch")
    await page.wait_for_selector("#notice")
    assert (await server.api("GET", "/tenant/acme"))["suspended_batches"] == []
    await page.screenshot(path=shot("message-light"), full_page=True)

    await page.goto(server.url + "/ui/rates")
    assert await page.locator("#rates svg.bar").count() >= 2
    await page.screenshot(path=shot("rates-light"), full_page=True)
    # a hard bounce, as the bounce poller records it, and the suppression it adds
    m1 = await server.api("GET", "/messages", params={"tenant_id": "acme"})
    m1_pk = next(m["pk"] for m in m1["messages"] if m["id"] == "m1")
    await server.parts.bounces.record(MailboxCursor("INBOX", 1, 1), [ParsedBounce(
        recipient="rcpt@example.org", type=BounceType.HARD, code="5.1.1",
        reason="550 5.1.1 user unknown", fingerprint="dsn-1", pk=m1_pk)])
    await page.goto(server.url + "/ui/bounces")
    row = page.locator('#bounces tr[data-recipient="rcpt@example.org"]')
    assert "550 5.1.1 user unknown" in (await row.text_content() or "")
    assert await page.locator('#suppressions tr[data-address="rcpt@example.org"]').count() == 1
    await page.fill('input[name="tenant_id"]', "acme")
    await page.fill('input[name="address"]', "Unsub@Example.org")
    await page.fill('input[name="reason"]', "unsubscribed")
    await page.click("#suppress-add")
    await page.wait_for_selector('#suppressions tr[data-address="unsub@example.org"]')
    await page.screenshot(path=shot("bounces-light"), full_page=True)
    await page.locator('#suppressions tr[data-address="rcpt@example.org"] button').click()
    await page.wait_for_selector("text=Suppression removed")
    listed = await server.api("GET", "/tenant/acme/suppressions")
    assert [s["address"] for s in listed["suppressions"]] == ["unsub@example.org"]

    # UTC / local toggle rewrites the times in place
    await page.goto(server.url + "/ui/queue")
    first = page.locator("#messages time").first
    assert (await first.text_content() or "").endswith("UTC")
    await page.click("#tz-toggle")
    assert (await first.text_content() or "").endswith("local")
    await context.close()
    assert keys


async def test_dark_mode_and_tenant_isolation(browser: Any, server: Server,
                                              relay: Relay) -> None:
    keys = await _setup(server, relay)
    await server.api("POST", "/commands/add-messages", json={"messages": [
        message(1, subject="acme private"), message(2, tenant_id="beta", subject="beta mail")]})
    await relay.wait_for(2, timeout=10)
    acme_pk = (await server.api("GET", "/messages", params={"tenant_id": "acme"})
               )["messages"][0]["pk"]
    context = await browser.new_context(color_scheme="dark",
                                        viewport={"width": 1280, "height": 860})
    page = await _sign_in(context, server.url, keys["beta"])
    assert await page.text_content("#who") == "tenant beta"
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 19, 25)"
    assert "Acme" not in await page.content()
    await page.wait_for_function(
        "Number(document.querySelector('#count-sent .n').textContent) === 1", timeout=WAIT)
    await page.screenshot(path=shot("overview-dark"), full_page=True)

    # polling stops while the tab is hidden and resumes when it is shown again
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/fragments/" in r.url else None)
    await page.wait_for_timeout(5500)
    assert polls, "the overview polls while visible"
    await page.evaluate("""Object.defineProperty(document, 'visibilityState',
                           {configurable: true, get: () => 'hidden'})""")
    await page.wait_for_timeout(200)
    polls.clear()
    await page.wait_for_timeout(11_000)
    assert polls == []
    await page.evaluate("""Object.defineProperty(document, 'visibilityState',
                           {configurable: true, get: () => 'visible'});
                           document.dispatchEvent(new Event('visibilitychange'))""")
    await page.wait_for_timeout(1000)
    assert len(polls) == 1
    await page.goto(server.url + "/ui/queue")
    assert await page.locator("#messages a.mono").all_text_contents() == ["m2"]
    assert "acme private" not in await page.content()
    await page.screenshot(path=shot("queue-dark"), full_page=True)
    await page.goto(server.url + "/ui/bounces")
    assert await page.locator('input[name="tenant_id"]').count() == 0  # its own tenant only
    await page.screenshot(path=shot("bounces-dark"), full_page=True)
    response = await page.goto(server.url + f"/ui/messages/{acme_pk}")
    assert response is not None and response.status == 404
    await page.goto(server.url + "/ui/queue?q=tenant:acme")
    assert "only its own tenant" in await page.content()
    await page.goto(server.url + "/ui/")
    await page.click("#sign-out")
    await page.wait_for_url(re.compile(r"/ui/login$"))
    await context.close()
