"""contrib/example_client.py against the running app and the relay."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import mailproxy
from tests.conftest import ADMIN, Api
from tests.relay import Relay

CLIENT = Path(__file__).resolve().parents[2] / "contrib" / "example_client.py"


async def run_client(api: Api, relay: Relay, *extra: str) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{api.client.server.port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), "--url", url, "--token", ADMIN,
        "--smtp-host", relay.host, "--smtp-port", str(relay.port), "--no-tls",
        "--count", "3", "--timeout", "20", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    try:
        summary = json.loads(out)
    except ValueError:
        raise AssertionError(err.decode()) from None
    return proc.returncode, summary


async def test_example_client_enqueues_and_sees_every_message_sent(
    api: Api, relay: Relay
) -> None:
    code, summary = await run_client(api, relay, "--poll")
    assert code == 0, summary
    assert set(summary["outcomes"].values()) == {"sent"}  # type: ignore[union-attr]
    assert relay.accepted == 3


@pytest.mark.skipif(not (Path(mailproxy.__file__).parent / "reports.py").exists(),
                    reason="the delivery-report loop (mailproxy/reports.py) is not built yet")
async def test_example_client_receives_signed_delivery_reports(api: Api, relay: Relay) -> None:
    code, summary = await run_client(api, relay, "--webhook-secret", "s3cret")
    assert code == 0, summary
    assert summary["report_calls"] >= 1


def test_the_report_receiver_checks_signatures_and_deduplicates() -> None:
    import hashlib
    import hmac
    import threading
    import time
    import urllib.error
    import urllib.request
    from http.server import ThreadingHTTPServer

    spec = importlib.util.spec_from_file_location("example_client", CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reports = module.Reports("s3cret")
    server = ThreadingHTTPServer(("127.0.0.1", 0), module.receiver(reports))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/mail-proxy/sync"
    item = {"id": "m1", "event_id": "e1", "sent_ts": 1}
    body = json.dumps({"delivery_report": [item, item]}).encode()

    def post(signature: str) -> int:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"X-Mail-Proxy-Signature": signature})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        t = str(int(time.time()))
        good = hmac.new(b"s3cret", t.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert post(f"t={t},v1={'0' * 64}") == 401
        assert post(f"t={t},v1={good}") == 200
    finally:
        server.shutdown()
        server.server_close()
    assert list(reports.final) == ["m1"]
    assert reports.seen_events == {"e1"}
