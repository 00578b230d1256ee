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
    """A copy of a request payload with secrets masked and inline data omitted."""
    if isinstance(value, dict):
        return {k: _redact_item(k, v, value) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _redact_item(key: str, value: Any, parent: dict[str, Any]) -> Any:
    if key in SECRET_KEYS:
        return MASK
    if key == "raw" and isinstance(value, str):
        return _omitted(value)
    if key == "storage_path" and isinstance(value, str) and _inline(value, parent):
        return _omitted(value)
    return redact(value)


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
