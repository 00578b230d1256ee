"""A small REST client over urllib (standard library only) for the CLI."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mailproxy.cli.ui import FAILED, NOT_RUNNING, CliError


class ApiError(CliError):
    """The instance answered with an error status."""

    def __init__(self, status: int, detail: Any, hint: str = "") -> None:
        super().__init__(f"{describe(detail)} (HTTP {status}){'; ' + hint if hint else ''}",
                         FAILED)
        self.status = status
        self.detail = detail


def describe(detail: Any) -> str:
    """One line for an error detail: a text, a 422 list or the add-messages object."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg')}")
            else:
                parts.append(str(item))
        return "; ".join(parts) or "invalid request"
    if isinstance(detail, dict):
        reasons = ", ".join(sorted({str(r.get("reason")) for r in detail.get("rejected", [])}))
        return f"{detail.get('error', 'request failed')}: {reasons}" if reasons else str(detail)
    return str(detail)


class Rest:
    def __init__(self, base_url: str, token: str, name: str, start: str | None = None,
                 timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.name = name
        self.start = start
        self.timeout = timeout

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             body: Any = None) -> Any:
        url = self.base_url + urllib.parse.quote(path)
        params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method, headers={
            "X-API-Token": self.token, "Content-Type": "application/json",
            "Accept": "application/json",
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _decode(response.read())
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read())
            detail = payload.get("detail") if isinstance(payload, dict) else payload
            if exc.code == 401:
                raise CliError(f"the admin token of instance {self.name} was refused (a server "
                               "started with GMP_API_TOKEN needs the same GMP_API_TOKEN here)",
                               FAILED) from None
            hint = (f"see: mail-proxy {self.name} tenants list"
                    if detail == "tenant not found" else "")
            raise ApiError(exc.code, detail, hint) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            raise not_running(self.name, getattr(exc, "reason", exc), self.start) from None

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query)


def not_running(name: str, reason: object = None, start: str | None = None) -> CliError:
    why = f" ({reason})" if reason else ""
    command = start or f"mail-proxy start {name}"
    return CliError(f"instance {name} is not running{why}; start it with: {command}",
                    NOT_RUNNING)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")
