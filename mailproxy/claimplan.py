"""Claim decisions, once for every store: which accounts first, what a rate limit allows,
and what REJECT and DEFER do to the messages beyond it. No I/O, no clock reads.

A store gathers the inputs (accounts, their limits and their tenant's, recent sends and
sends in flight per scope, the heads of an account's queue) and applies the steps this
module returns; the order of reads and writes, and the locking, stay the store's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mailproxy import policy
from mailproxy.model import Account, LimitBehavior, RateLimited, RateLimits

T = TypeVar("T")

REJECT_ERROR = "rate_limit_exceeded"
REJECT_CODE = 429
DEFER_REASON = "rate_limit"
SENDS_HORIZON = 86400  # the longest window: older sends never count


def rotate(items: Sequence[T], offset: int) -> list[T]:
    """Start the cycle at `offset` (mod len), so that no account is always served last."""
    if not items:
        return []
    shift = offset % len(items)
    return [*items[shift:], *items[:shift]]


@dataclass(frozen=True, slots=True)
class Scope:
    """A rate window owner: the account (`a:t/a`) or its whole tenant (`t:t`)."""

    name: str
    limits: RateLimits
    tenant_wide: bool


def rate_scopes(account: Account, tenant_limits: RateLimits | None) -> tuple[Scope, ...]:
    """The scopes whose windows limit this account, account first; none when unlimited."""
    scopes: list[Scope] = []
    if account.limits.windows():
        scopes.append(Scope(f"a:{account.tenant_id}/{account.id}", account.limits, False))
    if tenant_limits is not None and tenant_limits.windows():
        scopes.append(Scope(f"t:{account.tenant_id}", tenant_limits, True))
    return tuple(scopes)


def scope_names(scopes: Iterable[Scope]) -> tuple[str, ...]:
    return tuple(s.name for s in scopes)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one scope has spent: (second, count) buckets of the last day, and in flight."""

    scope: Scope
    sends: Sequence[tuple[int, int]]
    in_flight: int


def budget(usages: Iterable[Usage], now: int) -> policy.Budget:
    """The tightest budget of all the account's scopes at `now`."""
    return policy.combine_budgets(
        policy.window_budget(u.scope.limits, u.sends, u.in_flight, now) for u in usages
    )


@dataclass(frozen=True, slots=True)
class Take:
    """How many due messages to claim for an account, and whether some are over the limit.

    `heads` > 0 means the budget is short: read that many due heads of the account's queue
    (in claim order) and pass them to `over_limit` before claiming `n`.
    """

    n: int
    budget: policy.Budget
    heads: int = 0


def take(account: Account, budget: policy.Budget, remaining: int) -> Take:
    """Claim up to a batch within the cycle's remaining room and the budget."""
    n = min(account.batch_size, remaining)
    if budget.allowed is None or budget.allowed >= n:
        return Take(n, budget)
    extra = account.batch_size if account.limit_behavior == LimitBehavior.REJECT else 1
    return Take(budget.allowed, budget, budget.allowed + extra)


@dataclass(frozen=True, slots=True)
class OverLimit:
    """What to do with the heads beyond the budget: fail some now, or defer one until a
    full window frees (and skip the account until then). Empty when nothing is to do."""

    reject: tuple[int, ...] = ()
    defer: int | None = None
    until: int = 0
    reason: str = REJECT_ERROR
    code: int = REJECT_CODE

    def limited(self, account: Account) -> list[RateLimited]:
        """The decisions, for metrics: one per rejected message, one per deferral."""
        out = [RateLimited(account.tenant_id, account.id, deferred=False) for _ in self.reject]
        if self.defer is not None:
            out.append(RateLimited(account.tenant_id, account.id, deferred=True))
        return out


NOTHING = OverLimit()


def over_limit(account: Account, step: Take, heads: Sequence[int]) -> OverLimit:
    """Apply limit_behavior to the due heads (seqs, claim order) beyond the budget.

    REJECT fails up to a batch of them; DEFER defers the first until `free_at`, but only
    when the budget is spent by past sends: when only reservations in flight block, their
    outcome decides and nothing is deferred.
    """
    budget = step.budget
    allowed = budget.allowed or 0
    beyond = tuple(heads[allowed:])
    if not beyond:
        return NOTHING
    if account.limit_behavior == LimitBehavior.REJECT:
        return OverLimit(reject=beyond)
    if allowed > 0 or budget.free_at is None:
        return NOTHING
    return OverLimit(defer=beyond[0], until=budget.free_at)

