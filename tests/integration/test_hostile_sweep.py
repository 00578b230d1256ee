"""Property-based sweep of every REST route with hostile JSON (issue 17): strings holding lone
surrogates, keys holding them, and values nested far too deep, in bodies, queries and path
segments. Every answer must be a JSON 4xx/2xx with a reason, never a 5xx, and every
authenticated write must be in the command log.

The app runs in its own thread and event loop on 127.0.0.1, so that hypothesis drives it
from a plain synchronous test over real HTTP. Deliveries go to a sender that refuses at once:
no generated account host is ever contacted.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import smtplib
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailproxy.app import build, make_app
from mailproxy.errors import TemporaryFailure
from mailproxy.ingress.http import ROUTES
from mailproxy.model import Account
from tests.conftest import ADMIN, make_settings
from tests.pg import PgSchema, require_server
from tests.procs import new_encryption_key
from tests.relay import free_port

LONE = ["\ud800", "\udfff", "a\udc00b", "\udc00\ud800", "x" * 10 + "\udbff", "\x00", "a\x00b"]
# Text with lone surrogates mixed in (hypothesis' text() excludes them by default).
hostile_text = st.one_of(
    st.sampled_from(LONE),
    st.lists(st.one_of(st.characters(categories=["Cs"]), st.characters()), max_size=12)
    .map("".join),
    st.text(max_size=8),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    hostile_text)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12)
MESSAGE_KEYS = ["id", "tenant_id", "account_id", "from", "to", "cc", "bcc", "subject", "body",
                "html", "headers", "reply_to", "return_path", "batch_code", "priority",
                "attachments", "raw", "deferred_ts", "content_type"]


@st.composite
def hostile_message(draw: st.DrawFn) -> dict[str, Any]:
    """A message that is valid but for one or two hostile fields."""
    base: dict[str, Any] = {"id": draw(st.sampled_from(["m1", "m2", "m3"])),
                            "tenant_id": "acme", "account_id": "main",
                            "from": "a@acme.test", "to": ["b@example.org"], "subject": "s"}
    for key in draw(st.lists(st.sampled_from(MESSAGE_KEYS), min_size=1, max_size=2)):
        base[key] = draw(st.one_of(hostile_text, values, st.lists(hostile_text, max_size=3)))
    return base


@st.composite
def body(draw: st.DrawFn, path: str) -> Any:
    if path == "/commands/add-messages" and draw(st.booleans()):
        value: Any = {"messages": draw(st.lists(hostile_message(), min_size=1, max_size=3))}
    else:
        value = draw(st.dictionaries(
            st.one_of(st.sampled_from(["id", "name", "tenant_id", "ids", "host", "messages",
                                       "older_than_seconds", "expires_at"]), hostile_text),
            values, max_size=4))
    return value


def _deep(raw: bytes, depth: int, as_object: bool) -> bytes:
    """The JSON text wrapped in `depth` arrays or objects (built as text: the value itself
    would be too deep for json.dumps and for hypothesis' printer)."""
    if as_object:
        return b'{"k":' * depth + raw + b"}" * depth
    return b"[" * depth + raw + b"]" * depth


class LiveApp:
    """The real app in a background thread's event loop, with a raw HTTP client."""

    def __init__(self, data_dir: Path, db_path: str | None) -> None:
        self._db = ({"db_path": db_path, "encryption_key": new_encryption_key()}
                    if db_path else {})
        self.port = free_port()
        self.smtp_port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._data_dir = data_dir

    def start(self) -> LiveApp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    async def _start(self) -> None:
        parts = await build(make_settings(self._data_dir, smtp_port=self.smtp_port,
                                          **self._db))

        async def refuse(account: Account, sender: str, recipients: Sequence[str],
                         data: bytes, **_: Any) -> tuple[()]:
            raise TemporaryFailure("sending disabled in this test")

        parts.pool.send = refuse  # type: ignore[method-assign]
        self.runner = web.AppRunner(make_app(parts), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()

    def request(self, method: str, path: str, data: bytes = b"",
                query: dict[str, str] | None = None) -> tuple[int, Any]:
        if query:
            path += "?" + urllib.parse.urlencode(query, errors="surrogatepass")
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            con.request(method, path, body=data,
                        headers={"X-API-Token": ADMIN, "Content-Type": "application/json"})
            resp = con.getresponse()
            raw = resp.read()
        finally:
            con.close()
        if not resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, raw
        return resp.status, json.loads(raw)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[LiveApp]:
    schema = PgSchema(require_server()) if request.param == "postgres" else None
    app = LiveApp(tmp_path_factory.mktemp("sweep") / "data",
                  schema.url if schema else None).start()
    try:
        status, _ = app.request("POST", "/tenant", json.dumps({"id": "acme"}).encode())
        assert status == 200
        yield app
    finally:
        app.stop()
        if schema is not None:
            asyncio.run(schema.drop())


def _segment(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


WRITE_ROUTES = sorted({(m, p) for m, p, _ in ROUTES if m in ("POST", "PUT", "DELETE")})
ALL_ROUTES = sorted({(m, p) for m, p, _ in ROUTES})
UNLOGGED = {"/commands/run-now", "/instance/reload-bounce"}
NOT_JSON = {"/docs", "/docs/static/{name}", "/metrics"}
SWEEP = settings(max_examples=75, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


def _check(status: int, answer: Any, what: object) -> None:
    assert status < 500, (status, answer, what)
    if status >= 400:
        assert isinstance(answer, dict) and answer.get("detail"), (status, answer, what)


def _logged(live: LiveApp) -> int:
    status, answer = live.request("GET", "/command-log", query={"limit": "1"})
    assert status == 200, answer
    return int(answer["total"])


@SWEEP
@given(route=st.sampled_from(WRITE_ROUTES), data=st.data())
def test_hostile_bodies_never_give_a_server_error_and_are_logged(
        live: LiveApp, route: tuple[str, str], data: st.DataObject) -> None:
    method, template = route
    value = data.draw(body(template))
    raw = json.dumps(value).encode("ascii")  # lone surrogates travel as \\udXXX escapes
    depth = data.draw(st.sampled_from([0, 0, 0, 63, 65, 200, 10_000]), label="depth")
    if depth:
        raw = _deep(raw, depth, data.draw(st.booleans(), label="as object"))
    path = template.replace("{tenant_id}", "acme").replace("{account_id}", "main")
    before = _logged(live)
    status, answer = live.request(method, path, raw, {"tenant_id": "acme"})
    _check(status, answer, (method, path, raw[:300]))
    if template not in UNLOGGED:
        assert _logged(live) == before + 1, (method, path, status, answer)


@SWEEP
@given(route=st.sampled_from(ALL_ROUTES), text=hostile_text)
def test_hostile_query_and_path_values_never_give_a_server_error(
        live: LiveApp, route: tuple[str, str], text: str) -> None:
    method, template = route
    segment = _segment(text or "x")
    path = template.replace("{tenant_id}", segment).replace(
        "{account_id}", segment).replace("{name}", segment)
    query = {"tenant_id": text, "batch_code": text, "status": text, "endpoint_filter": text}
    status, answer = live.request(method, path, b"", query)
    if template in NOT_JSON and status == 200:
        return
    _check(status, answer, (method, path, query))


header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header_names = st.sampled_from([b"Subject", b"X-Custom", b"From", b"X-Mail-Proxy-ID",
                                b"X-Mail-Proxy-Batch", b"X-Mail-Proxy-Priority",
                                b"X-Mail-Proxy-Deferred-Ts"])


@pytest.fixture(scope="module")
def submitter(live: LiveApp) -> Iterator[smtplib.SMTP]:
    """An SMTP session of a tenant the REST sweeps never name (they rotate acme's token)."""
    status, created = live.request("POST", "/tenant", json.dumps({"id": "mailer"}).encode())
    assert status == 200, created
    account = {"id": "main", "tenant_id": "mailer", "host": "127.0.0.1", "port": 9,
               "use_tls": False}
    status, answer = live.request("POST", "/account", json.dumps(account).encode())
    assert status == 200, answer
    with smtplib.SMTP("127.0.0.1", live.smtp_port, timeout=60) as client:
        client.login("mailer/main", created["api_key"])
        yield client


@SWEEP
@given(headers=st.lists(st.tuples(header_names, header_bytes), min_size=1, max_size=3))
def test_hostile_smtp_headers_get_250_or_a_5xx_with_a_reason_and_the_session_lives(
        live: LiveApp, submitter: smtplib.SMTP, headers: list[tuple[bytes, bytes]]) -> None:
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    data = b"To: rcpt@example.org\r\n" + head + b"\r\nbody\r\n"
    submitter.mail("sender@acme.test")
    submitter.rcpt("rcpt@example.org")
    code, text = submitter.data(data)
    # 451 "message is being sent" is the documented answer when a drawn X-Mail-Proxy-ID
    # names an earlier example's message still in flight; no other 4xx (a storage failure
    # on such input is the bug this sweep looks for).
    in_flight = code == 451 and b"being sent" in text
    assert code == 250 or in_flight or (500 <= code < 600 and len(text) > 10), (
        code, text, data)
    assert submitter.noop()[0] == 250
    status, answer = live.request("GET", "/messages", query={"tenant_id": "mailer",
                                                             "limit": "1"})
    assert status == 200, answer
