"""Typed write commands: what an edge hands the service once it has validated a body.

A secret is write-only: a command carries what to do with it, not just a value. ABSENT (the
body left it out or sent null) keeps the stored one, None clears it, a string replaces it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailproxy.model import Account


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
