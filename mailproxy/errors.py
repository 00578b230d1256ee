"""Domain errors. Adapters translate these into HTTP statuses and SMTP replies."""

from __future__ import annotations

from dataclasses import dataclass, field


class MailProxyError(Exception):
    """Base of every error the service raises on purpose."""


class InvalidRequest(MailProxyError):
    """A command was understood but cannot be executed (HTTP 400)."""


class NotFound(MailProxyError):
    """The object does not exist in the caller's scope (HTTP 404)."""


class Forbidden(MailProxyError):
    """The caller may not act on this object (HTTP 403)."""


class Unauthorized(MailProxyError):
    """Token missing, unknown, revoked or expired (HTTP 401)."""


class Conflict(MailProxyError):
    """The object is in a state that forbids the change."""


class StoreError(MailProxyError):
    """The database failed; nothing was committed."""


class ConfigError(MailProxyError):
    """A setting is missing or invalid; start-up stops."""


@dataclass(frozen=True, slots=True)
class RecipientFailure:
    address: str
    code: int | None
    reason: str


@dataclass
class DeliveryError(Exception):
    """A send attempt failed. Subclasses carry the retry decision."""

    message: str
    code: int | None = None
    recipients: tuple[RecipientFailure, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.message


class TemporaryFailure(DeliveryError):
    """Worth retrying later: 4xx, timeouts, connection problems."""


class UnknownHost(TemporaryFailure):
    """The relay's host name does not exist (DNS NXDOMAIN): the account's settings are
    wrong, unless DNS is being changed right now; the worker allows a short grace."""


class PermanentFailure(DeliveryError):
    """Retrying cannot help: 5xx, authentication, TLS, invalid content."""
