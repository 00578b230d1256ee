"""`mail-proxy serve` as a user runs it (issue 17): GMP_LOG_FORMAT=json writes one JSON object
per line, with message id, tenant, account and outcome on delivery lines; start-up names the
API reference URL; a browser opening the root is sent there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from mailproxy import __version__
from tests.conftest import eventually
from tests.procs import TOKEN, ServeProcess
from tests.relay import Relay


async def _deliver_two(server: ServeProcess, session: aiohttp.ClientSession,
                       relay: Relay) -> None:
    """One message sent, one refused for good by the relay."""
    created = await server.call(session, "POST", "/tenant", {"id": "acme"})
    assert created["ok"]
    await server.call(session, "POST", "/account", {
        "id": "main", "tenant_id": "acme", "host": relay.host, "port": relay.port,
        "use_tls": False})
    relay.rcpt_replies["bad@example.org"] = "550 5.1.1 user unknown"
    base = {"tenant_id": "acme", "account_id": "main", "from": "s@acme.test",
            "subject": "hi", "body": "b"}
    await server.call(session, "POST", "/commands/add-messages", {"messages": [
        {**base, "id": "good-1", "to": ["rcpt@example.org"]},
        {**base, "id": "bad-1", "to": ["bad@example.org"]}]})

    async def both_final() -> bool:
        listed = await server.call(session, "GET", "/messages?tenant_id=acme")
        return sorted(m["status"] for m in listed["messages"]) == ["error", "sent"]

    await eventually(both_final, timeout=30)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


async def test_json_log_lines_carry_the_delivery_fields(tmp_path: Path, relay: Relay) -> None:
    server = ServeProcess(tmp_path / "data", GMP_LOG_FORMAT="json", GMP_LOG_LEVEL="INFO")
    server.start()
    try:
        async with aiohttp.ClientSession() as session:
            await server.ready(session)
            await _deliver_two(server, session, relay)
    finally:
        assert server.stop() == 0
    records = _json_lines(server.log_path)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), records
    delivery = {r["message_id"]: r for r in records if "outcome" in r}
    assert delivery["good-1"]["outcome"] == "sent"
    assert delivery["bad-1"]["outcome"] == "error"
    assert "user unknown" in delivery["bad-1"]["reason"]
    for record in delivery.values():
        assert record["tenant_id"] == "acme" and record["account_id"] == "main"
        assert record["level"] == "INFO"
    assert any(f"http://127.0.0.1:{server.port}/docs" in r["message"] for r in records)


async def test_start_up_names_the_urls_and_the_root_redirects_to_the_dashboard(
        tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", GMP_LOG_LEVEL="INFO")
    server.start()
    try:
        async with aiohttp.ClientSession() as session:
            await server.ready(session)
            async with session.get(server.url + "/", allow_redirects=False) as resp:
                assert resp.status == 302
                assert resp.headers["Location"] == "/ui/"
            async with session.get(server.url + "/", headers={"X-API-Token": TOKEN}) as resp:
                assert resp.status == 200  # followed to the dashboard sign-in page
                assert resp.content_type == "text/html"
    finally:
        assert server.stop() == 0
    log = server.log_path.read_text()
    # the version, not the lease owner id, follows the command's name
    assert (f"mail-proxy {__version__} listening on http://127.0.0.1:{server.port} "
            "(instance ") in log, log
    assert f"API reference: http://127.0.0.1:{server.port}/docs" in log, log
    assert not log.lstrip().startswith("{")  # text is the default format
