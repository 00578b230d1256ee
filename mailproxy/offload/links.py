"""Signed links to our own /download route (§11): HMAC-SHA256 over id, expiry and name."""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote

_TOKEN = re.compile(r"^([0-9a-f]{32})-(\d{1,12})-([0-9a-f]{64})$")


class BadLink(Exception):
    """The link is malformed or its signature does not match (404, like an unknown file)."""


class ExpiredLink(Exception):
    """The link was genuine but its time is up (410)."""


def signature(secret: bytes, file_id: str, expires: int, filename: str) -> str:
    message = f"{file_id}:{expires}:{filename}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def link(base_url: str, secret: bytes, file_id: str, expires: int, filename: str) -> str:
    sig = signature(secret, file_id, expires, filename)
    return f"{base_url.rstrip('/')}/download/{file_id}-{expires}-{sig}/{quote(filename)}"


def verify(secret: bytes, token: str, filename: str, now: float) -> str:
    """The file id of a genuine, unexpired link; BadLink or ExpiredLink otherwise."""
    found = _TOKEN.match(token)
    if found is None:
        raise BadLink("malformed download link")
    file_id, expires, sig = found.group(1), int(found.group(2)), found.group(3)
    if not hmac.compare_digest(sig, signature(secret, file_id, expires, filename)):
        raise BadLink("bad signature")
    if expires < now:
        raise ExpiredLink("download link expired")
    return file_id
