"""Secrets at rest: AES-256-GCM with a random 96-bit nonce per value, and token hashing."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailproxy.errors import ConfigError

_CHECK_PLAINTEXT = b"mailproxy-key-check"


class Vault:
    """Encrypts and decrypts short secrets; ciphertext is url-safe base64 text."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError("encryption key must be 32 bytes (base64 of 32 bytes)")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str | None) -> str | None:
        if plaintext is None:
            return None
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), None)
        return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, token: str | None) -> str | None:
        if token is None:
            return None
        blob = base64.urlsafe_b64decode(token.encode("ascii"))
        try:
            return self._aead.decrypt(blob[:12], blob[12:], None).decode("utf-8")
        except InvalidTag:
            raise ConfigError("a stored secret cannot be decrypted with this key") from None

    def key_check(self) -> str:
        """A value stored once in the database so that a wrong key is detected at start."""
        value = self.encrypt(_CHECK_PLAINTEXT.decode())
        assert value is not None
        return value

    def verify(self, stored_check: str) -> None:
        try:
            blob = base64.urlsafe_b64decode(stored_check.encode("ascii"))
            self._aead.decrypt(blob[:12], blob[12:], None)
        except (InvalidTag, ValueError):
            raise ConfigError(
                "the encryption key does not match the one this database was created with"
            ) from None


def decode_key(text: str, origin: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=False) if text.strip() else b""
        if len(key) != 32:
            key = base64.urlsafe_b64decode(text.strip())
    except ValueError:
        raise ConfigError(f"{origin}: not valid base64") from None
    if len(key) != 32:
        raise ConfigError(f"{origin}: the key must be base64 of exactly 32 bytes")
    return key


def load_key(configured: str | None, data_dir: Path, *, may_generate: bool) -> bytes:
    """GMP_ENCRYPTION_KEY, else <data_dir>/encryption.key, else generate it (mode 0600)."""
    if configured:
        return decode_key(configured, "GMP_ENCRYPTION_KEY")
    path = data_dir / "encryption.key"
    if path.exists():
        return decode_key(path.read_text(encoding="ascii"), str(path))
    if not may_generate:
        raise ConfigError(
            "an encryption key is required with PostgreSQL: set GMP_ENCRYPTION_KEY "
            f"or create {path}"
        )
    key = secrets.token_bytes(32)
    write_private(path, base64.b64encode(key).decode("ascii") + "\n")
    return key


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, created with that mode (no window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
