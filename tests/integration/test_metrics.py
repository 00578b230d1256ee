"""Prometheus metrics (§14) over HTTP: names, labels, buckets, zero series, protection."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from mailproxy.metrics import Metrics
from tests.conftest import ADMIN, Api, ApiFactory, message
from tests.endpoint import EndpointFactory
from tests.relay import Relay


async def scrape(api: Api, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with api.client.get("/metrics", headers=headers or {}) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in metrics:\n{text}")


async def test_account_counters_start_at_zero_and_count_sends(api: Api, relay: Relay) -> None:
    await api.tenant("acme", name="Acme Corp")
    await api.account(relay)
    status, content_type, text = await scrape(api)
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    labels = 'account_id="main",account_name="main",tenant_id="acme",tenant_name="Acme Corp"'
    for name in ("gmp_sent_total", "gmp_errors_total", "gmp_deferred_total",
                 "gmp_rate_limited_total"):
        assert value(text, f"{name}{{{labels}}}") == 0.0
    assert "_created" not in text
    await api.send(message(1), message(2))
    await relay.wait_for(2)
    for _ in range(100):
        _, _, text = await scrape(api)
        # the pending gauge is read at the start of a scrape, the counters at its end
        if (value(text, f"gmp_sent_total{{{labels}}}") == 2.0
                and value(text, "gmp_pending_messages") == 0.0):
            break
    assert value(text, f"gmp_sent_total{{{labels}}}") == 2.0
    assert value(text, 'gmp_queue_latency_seconds_count{tenant_id="acme"}') == 2.0
    assert value(text, 'gmp_smtp_send_seconds_count{outcome="sent"}') == 2.0
    assert 'gmp_queue_latency_seconds_bucket{le="86400.0",tenant_id="acme"}' in text
    assert 'gmp_smtp_send_seconds_bucket{le="0.05",outcome="sent"}' in text
    assert value(text, "gmp_pending_messages") == 0.0


async def test_permanent_failure_counts_as_error(api: Api, relay: Relay) -> None:
    await api.tenant()
    await api.account(relay)
    relay.replies["DATA"] = "554 5.7.1 rejected"
    await api.send(message(1))
    labels = 'account_id="main",account_name="main",tenant_id="acme",tenant_name="acme"'
    for _ in range(200):  # up to about 10 s on a loaded machine
        _, _, text = await scrape(api)
        if value(text, f"gmp_errors_total{{{labels}}}") == 1.0:
            break
        await asyncio.sleep(0.05)
    assert value(text, f"gmp_errors_total{{{labels}}}") == 1.0
    assert value(text, 'gmp_smtp_send_seconds_count{outcome="permanent"}') == 1.0


async def test_http_requests_are_counted_by_route_template(api: Api) -> None:
    await api.tenant()
    await api.call("GET", "/tenant/acme")
    await api.call("GET", "/tenant/nobody")
    await api.call("GET", "/no/such/path")
    _, _, text = await scrape(api)
    assert value(text, 'gmp_http_requests_total{method="GET",route="/tenant/{tenant_id}",'
                       'status="200"}') == 1.0
    assert value(text, 'gmp_http_requests_total{method="GET",route="/tenant/{tenant_id}",'
                       'status="404"}') == 1.0
    assert value(text, 'gmp_http_requests_total{method="GET",route="unmatched",'
                       'status="404"}') == 1.0
    for declared in ("gmp_bounces_total", "gmp_reports_sent_total",
                     "gmp_report_failures_total"):
        assert f"# TYPE {declared} counter" in text


async def test_metrics_token_protects_the_endpoint(make_api: ApiFactory) -> None:
    api = await make_api(metrics_token="scrape-me")
    assert (await scrape(api))[0] == 401
    assert (await scrape(api, {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await scrape(api, {"Authorization": "Bearer scrape-me"}))[0] == 200
    assert (await scrape(api, {"X-API-Token": ADMIN}))[0] == 200
    tenant_key = await api.tenant()
    assert (await scrape(api, {"X-API-Token": tenant_key}))[0] == 401


async def test_registries_are_per_app(api: Api) -> None:
    other = Metrics(api.parts.store)  # type: ignore[attr-defined]
    await api.call("GET", "/status")
    _, _, text = await scrape(api)
    assert 'route="/status"' in text
    assert b'route="/status"' not in generate_latest(other.registry)


async def test_report_posts_move_the_report_counters(
    api: Api, make_endpoint: EndpointFactory
) -> None:
    """Each acknowledged report POST counts in gmp_reports_sent_total, each failed one in
    gmp_report_failures_total, labelled with the tenant."""
    endpoint = await make_endpoint()
    await api.tenant("acme", client_base_url=endpoint.base_url)
    series = ('gmp_reports_sent_total{tenant_id="acme"}',
              'gmp_report_failures_total{tenant_id="acme"}')

    async def reach(sent: float, failed: float) -> None:
        seen: tuple[float, ...] = ()
        for _ in range(200):
            _, _, text = await scrape(api)
            seen = tuple(value(text, s) if s + " " in text else 0.0 for s in series)
            if seen == (sent, failed):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"report counters {seen}, expected {(sent, failed)}")

    await endpoint.wait_calls(1)  # the first heartbeat of a new tenant
    await reach(1, 0)
    rejected = {"messages": [message(1, subject="")]}  # stored as error: one report item
    assert (await api.call("POST", "/commands/add-messages", json=rejected))[0] == 400
    calls = await endpoint.wait_calls(2)
    assert [i["id"] for i in calls[1].items] == ["m1"]
    await reach(2, 0)
    endpoint.status = 500
    rejected = {"messages": [message(2, subject="")]}
    assert (await api.call("POST", "/commands/add-messages", json=rejected))[0] == 400
    await endpoint.wait_calls(3)
    await reach(2, 1)


async def test_http_request_duration_histogram_by_method_and_route_template(api: Api) -> None:
    await api.tenant("acme")
    for tenant in ("acme", "nobody", "other-1"):
        await api.call("GET", f"/tenant/{tenant}")
    async with api.client.request("PATCH", "/tenant/acme") as resp:
        assert resp.status == 405
    await api.call("GET", "/no/such/path")
    _, _, text = await scrape(api)
    name = "gmp_http_request_duration_seconds"
    assert f"# TYPE {name} histogram" in text
    route = 'method="GET",route="/tenant/{tenant_id}"'
    assert value(text, f'{name}_count{{{route}}}') == 3.0
    assert value(text, f'{name}_bucket{{le="10.0",{route}}}') == 3.0
    assert value(text, f'{name}_sum{{{route}}}') > 0
    assert value(text, f'{name}_count{{method="POST",route="/tenant"}}') == 1.0
    assert value(text, f'{name}_count{{method="GET",route="unmatched"}}') == 1.0
    assert value(text, f'{name}_count{{method="PATCH",route="unmatched"}}') == 1.0
    series = [line for line in text.splitlines() if line.startswith(name)]
    assert not [line for line in series if "acme" in line or "nobody" in line], series
    # The queue and SMTP histograms are still there.
    assert "# TYPE gmp_queue_latency_seconds histogram" in text
    assert "# TYPE gmp_smtp_send_seconds histogram" in text
