"""Typed write commands: what an edge hands the service once it has validated a body.

A secret is write-only: a command carries what to do with it, not just a value. ABSENT (the
body left it out or sent null) keeps the stored one, None clears it, a string replaces it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailproxy.model import Account, RateLimits


class Absent(enum.Enum):
    """Not given: the stored value stays as it is."""

    ABSENT = "absent"


ABSENT = Absent.ABSENT

SecretChange = str | None | Absent


def secret_change(value: str | None) -> SecretChange:
    """A secret as a request sends it: null keeps, "" clears, text replaces."""
    if value is None:
        return ABSENT
    return value or None


def kept(change: SecretChange, current: str | None) -> str | None:
    """The secret once the change is applied."""
    return current if change is ABSENT else change


@dataclass(frozen=True, slots=True)
class PutAccount:
    """POST /account: the account as given (its defaults are Account's), secrets aside."""

    account: Account  # holds no secrets; the changes below say what happens to them
    password: SecretChange = ABSENT
    imap_password: SecretChange = ABSENT
    submission_password: SecretChange = ABSENT


@dataclass(frozen=True, slots=True)
class ClientAuthChange:
    """A tenant's client_auth as given: method and user replace, the secrets change."""

    method: str = "none"
    user: str | None = None
    token: SecretChange = ABSENT
    password: SecretChange = ABSENT


@dataclass(frozen=True, slots=True)
class TenantChanges:
    """The tenant fields a body gives. ABSENT: not given, the stored value stays; None:
    back to the default (client_auth: none, its secrets dropped)."""

    name: str | Absent | None = ABSENT
    client_base_url: str | Absent | None = ABSENT
    client_sync_path: str | Absent | None = ABSENT
    client_attachment_path: str | Absent | None = ABSENT
    client_auth: ClientAuthChange | Absent | None = ABSENT
    webhook_secret: SecretChange = ABSENT
    rate_limits: RateLimits | Absent | None = ABSENT
    # as sent (§11: extra keys kept); storage_options left out keep the stored ones
    large_file_config: Mapping[str, Any] | Absent | None = ABSENT
    active: bool | Absent | None = ABSENT
    api_key_expires_at: int | Absent | None = ABSENT


@dataclass(frozen=True, slots=True)
class PutTenant:
    """POST /tenant: create, or replace every field (the webhook secret stays on null)."""

    id: str
    changes: TenantChanges


@dataclass(frozen=True, slots=True)
class InstanceChanges:
    """PUT /instance: ABSENT leaves a setting, None sets it back to its default."""

    name: str | Absent | None = ABSENT
    bounce_enabled: bool | Absent | None = ABSENT
    bounce_imap_host: str | Absent | None = ABSENT
    bounce_imap_port: int | Absent | None = ABSENT
    bounce_imap_user: str | Absent | None = ABSENT
    bounce_imap_password: SecretChange = ABSENT
    bounce_imap_folder: str | Absent | None = ABSENT
    bounce_imap_ssl: bool | Absent | None = ABSENT
    bounce_poll_interval: int | Absent | None = ABSENT
    bounce_return_path: str | Absent | None = ABSENT
    api_token: str | Absent = ABSENT  # the new admin token (null: not changed)
