"""The one readable time format: ISO-8601 in UTC, to the second, with a `Z`.

The wire contract keeps v0.6's types (epoch integers in `*_ts`, naive UTC strings in
`created_at`/`updated_at`); records add an `<field>_iso` companion in this format, logs
print it, and the CLI shows it, so nobody has to guess a zone or convert an epoch.
"""

from __future__ import annotations

import calendar
import time


def iso(ts: float | None) -> str | None:
    """`2026-12-02T13:30:52Z` for an epoch time (None stays None)."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def iso_of_text(text: str | None) -> str | None:
    """The same for a stored `YYYY-MM-DD HH:MM:SS` UTC string (as the contract keeps it)."""
    if not text:
        return None
    try:
        return iso(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        return None
