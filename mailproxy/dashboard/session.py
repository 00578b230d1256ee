"""Signed, expiring dashboard sessions and their CSRF tokens. Standard library only.

The cookie holds who signed in (admin, or one tenant and a fingerprint of its key), when the
session ends and a random session id, signed with HMAC-SHA256 under a key derived from the
admin token. It never holds the token itself. Rotating the admin token ends every session;
rotating or revoking a tenant key ends that tenant's sessions (the fingerprint no longer
matches).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

COOKIE = "gmp_session"
LOGIN_COOKIE = "gmp_login"
LIFETIME = 8 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    tenant_id: str | None  # None = admin
    key_print: str | None  # first 16 hex of the tenant key hash
    expires: int
    sid: str

    @property
    def admin(self) -> bool:
        return self.tenant_id is None


def _key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode(), b"mailproxy dashboard session v1",
                    hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(admin_token: str, body: str) -> str:
    return _b64(hmac.new(_key(admin_token), body.encode("ascii"), hashlib.sha256).digest())


def issue(admin_token: str, tenant_id: str | None, key_hash: str | None, now: int) -> str:
    session = {"t": tenant_id, "k": key_hash[:16] if key_hash else None,
               "e": now + LIFETIME, "s": secrets.token_urlsafe(16)}
    body = _b64(json.dumps(session, separators=(",", ":")).encode())
    return f"{body}.{_sign(admin_token, body)}"


def read(admin_token: str, cookie: str | None, now: int) -> Session | None:
    """The session a cookie carries, or None when it is absent, forged or expired."""
    if not cookie or "." not in cookie:
        return None
    body, _, signature = cookie.partition(".")
    if not hmac.compare_digest(signature.encode(), _sign(admin_token, body).encode()):
        return None
    try:
        data = json.loads(_unb64(body))
        session = Session(data["t"], data["k"], int(data["e"]), str(data["s"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > now else None


def csrf_token(admin_token: str, sid: str) -> str:
    """The token every state-changing form of this session must send back."""
    return _sign(admin_token, f"csrf:{sid}")


def csrf_ok(admin_token: str, sid: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(),
                                               csrf_token(admin_token, sid).encode())


def new_login_nonce() -> str:
    return secrets.token_urlsafe(16)
