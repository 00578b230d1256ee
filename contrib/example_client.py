#!/usr/bin/env python3
"""A complete mailproxy client in one file, standard library only.

It creates a tenant whose delivery reports come back to a small HTTP server run here, adds an
SMTP account, enqueues a few messages, wakes the dispatcher and waits until every message has
a final outcome. Run it against an instance:

    python3 contrib/example_client.py --url http://127.0.0.1:8000 --token "$GMP_API_TOKEN" \\
        --smtp-host smtp.example.com --smtp-port 587 --to you@example.com

Delivery reports (contract §8): the proxy POSTs {"delivery_report": [...]} to
<client_base_url>/mail-proxy/sync; any 2xx reply acknowledges the items. With --webhook-secret
the proxy signs each call (X-Mail-Proxy-Signature, §8.4) and this receiver checks it.
`--poll` waits by reading GET /messages instead, for instances that cannot reach this host.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FINAL_EVENTS = {"sent": "sent_ts", "error": "error_ts", "bounce": "bounce_ts"}
FINAL_STATUSES = {"sent", "error", "bounced", "suppressed"}


class Api:
    """The REST calls this client needs, with the admin token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "X-API-Token": self.token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{method} {path} failed: {exc.code} {exc.read().decode()}") from None


class Reports:
    """Receives delivery reports; remembers the final event of each message id."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.final: dict[str, dict[str, Any]] = {}
        self.seen_events: set[str] = set()
        self.calls = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def signature_ok(self, header: str | None, body: bytes) -> bool:
        if self.secret is None:
            return True
        fields = dict(p.split("=", 1) for p in (header or "").split(",") if "=" in p)
        t, v1 = fields.get("t", ""), fields.get("v1", "")
        if not t.isdigit() or abs(time.time() - int(t)) > 300:
            return False
        expected = hmac.new(self.secret.encode(), t.encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, v1)

    def accept(self, items: list[dict[str, Any]]) -> None:
        with self.changed:
            self.calls += 1
            for item in items:
                event_id = str(item.get("event_id"))
                if event_id in self.seen_events:  # a resend of an event already handled
                    continue
                self.seen_events.add(event_id)
                if any(key in item for key in FINAL_EVENTS.values()):
                    self.final[str(item["id"])] = item
            self.changed.notify_all()


def receiver(reports: Reports) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not reports.signature_ok(self.headers.get("X-Mail-Proxy-Signature"), body):
                self._reply(401, {"ok": False})
                return
            try:
                items = json.loads(body).get("delivery_report", [])
            except (ValueError, AttributeError):
                self._reply(400, {"ok": False})
                return
            reports.accept(items)
            self._reply(200, {"ok": True, "queued": 0})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet

    return Handler


def setup_tenant(api: Api, args: argparse.Namespace, report_url: str) -> None:
    tenant: dict[str, Any] = {"id": args.tenant, "name": "Example client",
                              "client_base_url": report_url}
    if args.webhook_secret:
        tenant["webhook_secret"] = args.webhook_secret
    api.call("POST", "/tenant", tenant)
    account: dict[str, Any] = {"id": "main", "tenant_id": args.tenant, "host": args.smtp_host,
                               "port": args.smtp_port, "use_tls": False if args.no_tls else None}
    if args.smtp_user:
        account.update(user=args.smtp_user, password=args.smtp_password)
    api.call("POST", "/account", account)


def enqueue(api: Api, args: argparse.Namespace) -> list[str]:
    run = uuid.uuid4().hex[:8]
    messages = [{
        "id": f"example-{run}-{i}", "tenant_id": args.tenant, "account_id": "main",
        "from": args.sender, "to": [args.to], "subject": f"mailproxy example {i}",
        "body": f"Message {i} of {args.count}, sent by contrib/example_client.py.",
        "html_body": f"<p>Message <b>{i}</b> of {args.count}.</p>",
    } for i in range(1, args.count + 1)]
    answer = api.call("POST", "/commands/add-messages", {"messages": messages})
    if answer.get("rejected"):
        raise SystemExit(f"rejected: {answer['rejected']}")
    api.call("POST", "/commands/run-now", tenant_id=args.tenant)
    return [m["id"] for m in messages]


def wait_for_reports(reports: Reports, ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    with reports.changed:
        while not all(i in reports.final for i in ids):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            reports.changed.wait(min(left, 1.0))
        return {i: _outcome(reports.final.get(i)) for i in ids}


def _outcome(item: dict[str, Any] | None) -> str:
    if item is None:
        return "no report"
    for event, key in FINAL_EVENTS.items():
        if key in item:
            return event if event != "error" else f"error: {item.get('error')}"
    return "unknown"


def wait_by_polling(api: Api, tenant: str, ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        records = api.call("GET", "/messages", tenant_id=tenant)["messages"]
        states = {r["id"]: r["status"] for r in records if r["id"] in ids}
        if len(states) == len(ids) and set(states.values()) <= FINAL_STATUSES:
            break
        time.sleep(0.2)
    return {i: states.get(i, "missing") for i in ids}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("GMP_API_TOKEN"),
                        help="admin token (default: GMP_API_TOKEN)")
    parser.add_argument("--tenant", default="example")
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=25)
    parser.add_argument("--smtp-user")
    parser.add_argument("--smtp-password")
    parser.add_argument("--no-tls", action="store_true", help="plain SMTP to the relay")
    parser.add_argument("--from", dest="sender", default="Example <example@example.com>")
    parser.add_argument("--to", default="someone@example.org")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--listen-host", default="127.0.0.1",
                        help="address the proxy can reach this receiver on")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--webhook-secret", help="ask the proxy to sign reports")
    parser.add_argument("--poll", action="store_true", help="poll GET /messages instead")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token or GMP_API_TOKEN is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api = Api(args.url, args.token)
    reports = Reports(args.webhook_secret)
    server = ThreadingHTTPServer((args.listen_host, args.listen_port), receiver(reports))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    report_url = f"http://{args.listen_host}:{server.server_address[1]}"
    try:
        setup_tenant(api, args, report_url)
        ids = enqueue(api, args)
        print(f"queued {len(ids)} messages; reports go to {report_url}/mail-proxy/sync",
              file=sys.stderr)
        if args.poll:
            outcomes = wait_by_polling(api, args.tenant, ids, args.timeout)
        else:
            outcomes = wait_for_reports(reports, ids, args.timeout)
    finally:
        server.shutdown()
        server.server_close()
    print(json.dumps({"outcomes": outcomes, "report_calls": reports.calls}, indent=2))
    return 0 if all(o == "sent" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
