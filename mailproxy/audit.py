"""Command-log payload redaction (§3.7). Pure.

The log keeps what a command did without keeping its secrets: secret values become "***",
inline content becomes "<omitted N bytes>". The export drops the secret keys instead, so a
replay never stores the placeholder as if it were the secret.
"""

from __future__ import annotations

from typing import Any

MASK = "***"
SECRET_KEYS = frozenset({
    "password", "token", "api_token", "api_key", "secret", "webhook_secret",
    "bounce_imap_password", "imap_password", "submission_password", "storage_options",
})


def redact(value: Any) -> Any:
    """The payload with secrets masked and inline data omitted: copies of the objects and
    arrays that change, the rest shared with the payload (neither is changed afterwards).

    A 1000-message add-messages payload is redacted for its command-log line, and most of
    it is plain text that stays: walked without a call per value, and not copied."""
    if isinstance(value, dict):
        return _redact_object(value)
    if isinstance(value, list):
        return _redact_array(value)
    return value


def _redact_object(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] | None = None
    for key, item in value.items():
        if key in SECRET_KEYS:
            new: Any = MASK
        elif isinstance(item, str):
            if key != "raw" and (key != "storage_path" or not _inline(item, value)):
                continue
            new = _omitted(item)
        elif isinstance(item, dict | list):
            new = redact(item)
            if new is item:
                continue
        else:
            continue
        if out is None:
            out = dict(value)
        out[key] = new
    return value if out is None else out


def _redact_array(value: list[Any]) -> list[Any]:
    out: list[Any] | None = None
    for index, item in enumerate(value):
        if isinstance(item, dict | list):
            new = redact(item)
            if new is not item:
                if out is None:
                    out = list(value)
                out[index] = new
    return value if out is None else out


def _inline(path: str, attachment: dict[str, Any]) -> bool:
    return path.startswith("base64:") or attachment.get("fetch_mode") == "base64"


def _omitted(text: str) -> str:
    return f"<omitted {len(text.encode('utf-8'))} bytes>"


def strip_secrets(value: Any) -> Any:
    """A (redacted) payload without the keys whose values the log masks, for export."""
    if isinstance(value, dict):
        return {k: strip_secrets(v) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, list):
        return [strip_secrets(v) for v in value]
    return value
