"""Pure decisions: retry delays, priorities, rate windows. No I/O, no clock reads."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailproxy.model import Priority, RateLimits

PRIORITY_LABELS = {p.name.lower(): p for p in Priority}


def parse_priority(value: object, *, exact: bool = False) -> Priority | None:
    """Map an API priority (int, float, numeric string or label) to a Priority.

    The one priority parser. Lenient (a message's `priority`): ints are clamped to 0-3,
    floats truncated then clamped; unknown labels and None give None so that the caller
    falls back to the default. Exact (`default_priority`, the SMTP header, the dashboard
    filter): only a label or an int 0-3 names a priority, anything else gives None for the
    caller to refuse. A label is matched in any case, blanks around it ignored. Booleans
    name none.
    """
    if value is None or isinstance(value, bool):
        return None
    if exact:
        return _exact_priority(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return Priority(min(3, max(0, int(value))))
    if isinstance(value, str):
        text = value.strip()
        label = PRIORITY_LABELS.get(text.lower())
        if label is not None:
            return label
        try:
            return parse_priority(float(text))
        except ValueError:
            return None
    return None


def _exact_priority(value: object) -> Priority | None:
    if isinstance(value, int):
        return Priority(value) if 0 <= value <= 3 else None
    if isinstance(value, str):
        return PRIORITY_LABELS.get(value.strip().lower())
    return None


_PRIORITY_DIGITS = frozenset("0123")


def priority_text(text: str) -> Priority | None:
    """A priority written where every value is text (an SMTP header, a search term):
    a label or one of the digits 0-3; None otherwise."""
    stripped = text.strip()
    return parse_priority(int(stripped) if stripped in _PRIORITY_DIGITS else stripped,
                          exact=True)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5
    base_seconds: float = 60
    factor: float = 3
    max_delay_seconds: float = 7200

    def nominal_delay(self, retry_count: int) -> float:
        """Nominal delay before retry number `retry_count` (1-based)."""
        exponent = max(0, retry_count - 1)
        try:
            delay = self.base_seconds * self.factor**exponent
        except OverflowError:
            delay = self.max_delay_seconds
        return min(self.max_delay_seconds, delay)

    def delay(self, retry_count: int, rng: random.Random | None = None) -> int:
        """Full jitter: uniform in [1, nominal], whole seconds."""
        nominal = max(1.0, self.nominal_delay(retry_count))
        draw = (rng or random).uniform(1.0, nominal)
        return max(1, math.ceil(draw))

    def exhausted(self, retry_count: int) -> bool:
        """True when a failure at this retry count may not be retried again."""
        return retry_count >= self.max_retries


def report_backoff(failures: int, rng: random.Random | None = None) -> float:
    """Tenant report backoff: 5 s doubling, capped at 600 s, random in [d/2, d]."""
    nominal = min(600.0, 5.0 * 2 ** max(0, failures - 1))
    return (rng or random).uniform(nominal / 2, nominal)


@dataclass(frozen=True, slots=True)
class Budget:
    """How many sends a scope may start now, and when a full window frees."""

    allowed: int | None
    free_at: int | None = None


def window_budget(
    limits: RateLimits | None,
    sends: Sequence[tuple[int, int]],
    in_flight: int,
    now: int,
) -> Budget:
    """Budget of one scope given its recent sends.

    `sends` are (second, count) buckets, any order, covering at least the last day.
    A window is full when sends in it + reservations in flight >= limit. `free_at` is the
    earliest second at which every window that is full from sends alone has room again;
    None when only in-flight reservations block (their outcome decides).
    """
    windows = limits.windows() if limits is not None else ()
    if not windows:
        return Budget(allowed=None)
    ordered = sorted(sends)
    allowed: int | None = None
    free_at: int | None = None
    for seconds, limit in windows:
        start = now - seconds
        inside = [(ts, n) for ts, n in ordered if ts > start]
        used = sum(n for _, n in inside)
        room = limit - used - in_flight
        allowed = room if allowed is None else min(allowed, room)
        if used >= limit:
            moment = _moment_with_room(inside, used - limit + 1) + seconds
            free_at = moment if free_at is None else max(free_at, moment)
    return Budget(allowed=max(0, allowed or 0), free_at=free_at)


def _moment_with_room(inside: Iterable[tuple[int, int]], surplus: int) -> int:
    """Timestamp of the send whose ageing-out frees `surplus` slots."""
    seen = 0
    ts = 0
    for ts, n in inside:
        seen += n
        if seen >= surplus:
            return ts
    return ts


def combine_budgets(budgets: Iterable[Budget]) -> Budget:
    """The tightest of several scopes (account and tenant)."""
    allowed: int | None = None
    free_at: int | None = None
    for b in budgets:
        if b.allowed is not None:
            allowed = b.allowed if allowed is None else min(allowed, b.allowed)
        if b.free_at is not None:
            free_at = b.free_at if free_at is None else max(free_at, b.free_at)
    return Budget(allowed=allowed, free_at=free_at)


def smtp_code_text(code: int | None, message: str) -> str:
    """Normalise a relay reply for storage: code plus text with whitespace collapsed."""
    text = " ".join(message.split())
    if code is None:
        return text
    return f"{code} {text}" if text else str(code)


def retry_error_text(max_retries: int, error: str) -> str:
    return f"Max retries ({max_retries}) exceeded: {error}"


def display_status(status: str, deferred_ts: int | None, now: int) -> str:
    """A due scheduled/deferred message reads as pending (no stored transition)."""
    if status in ("scheduled", "deferred") and (deferred_ts is None or deferred_ts <= now):
        return "pending"
    return status
