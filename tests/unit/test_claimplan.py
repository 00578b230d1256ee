"""The claim planner: rotation, rate scopes, combined budgets, REJECT and DEFER at the limit."""

from __future__ import annotations

from collections import Counter

import pytest

from mailproxy import claimplan
from mailproxy.model import Account, LimitBehavior, RateLimited, RateLimits
from mailproxy.policy import Budget

NOW = 1_000_000


def account(
    limits: RateLimits | None = None,
    behavior: LimitBehavior = LimitBehavior.DEFER,
    batch_size: int = 10,
    account_id: str = "acc",
) -> Account:
    return Account(tenant_id="t1", id=account_id, host="127.0.0.1", port=25,
                   limits=limits or RateLimits(), limit_behavior=behavior,
                   batch_size=batch_size)


def usage_budget(
    acc: Account,
    tenant_limits: RateLimits | None,
    account_sends: list[tuple[int, int]],
    tenant_sends: list[tuple[int, int]],
    account_in_flight: int = 0,
    tenant_in_flight: int = 0,
) -> Budget:
    """What a store does: one Usage per scope, from its own rows."""
    usages = []
    for scope in claimplan.rate_scopes(acc, tenant_limits):
        if scope.tenant_wide:
            usages.append(claimplan.Usage(scope, tenant_sends, tenant_in_flight))
        else:
            usages.append(claimplan.Usage(scope, account_sends, account_in_flight))
    return claimplan.budget(usages, NOW)


# -- rotation ----------------------------------------------------------------------------


def test_rotation_serves_each_account_first_once_per_round() -> None:
    names = ["a", "b", "c", "d"]
    firsts = Counter(claimplan.rotate(names, offset)[0] for offset in range(1, 13))
    assert firsts == {"a": 3, "b": 3, "c": 3, "d": 3}


def test_rotation_keeps_every_account_and_their_cyclic_order() -> None:
    names = ["a", "b", "c"]
    assert claimplan.rotate(names, 1) == ["b", "c", "a"]
    assert claimplan.rotate(names, 5) == ["c", "a", "b"]
    assert claimplan.rotate(names, 3) == names
    assert claimplan.rotate([], 7) == []


# -- scopes ------------------------------------------------------------------------------


def test_scopes_account_first_then_tenant() -> None:
    acc = account(RateLimits(minute=5))
    scopes = claimplan.rate_scopes(acc, RateLimits(day=100))
    assert claimplan.scope_names(scopes) == ("a:t1/acc", "t:t1")
    assert [s.tenant_wide for s in scopes] == [False, True]
    assert scopes[1].limits == RateLimits(day=100)


@pytest.mark.parametrize(
    ("acc_limits", "tenant_limits", "names"),
    [
        (RateLimits(), None, ()),
        (RateLimits(minute=0, hour=None), RateLimits(day=0), ()),
        (RateLimits(hour=3), None, ("a:t1/acc",)),
        (RateLimits(), RateLimits(minute=1), ("t:t1",)),
    ],
)
def test_scopes_only_where_a_window_is_limited(
    acc_limits: RateLimits, tenant_limits: RateLimits | None, names: tuple[str, ...]
) -> None:
    scopes = claimplan.rate_scopes(account(acc_limits), tenant_limits)
    assert claimplan.scope_names(scopes) == names


# -- budgets -----------------------------------------------------------------------------


def test_no_scopes_is_unlimited() -> None:
    assert claimplan.budget([], NOW) == Budget(allowed=None)


def test_account_minute_and_tenant_hour_combine_to_the_tightest() -> None:
    acc = account(RateLimits(minute=5))
    # account: 2 sends this minute -> 3 left; tenant: 8 of 10 this hour -> 2 left
    budget = usage_budget(acc, RateLimits(hour=10), [(NOW - 10, 2)],
                          [(NOW - 10, 2), (NOW - 1800, 6)])
    assert budget == Budget(allowed=2, free_at=None)


def test_tenant_day_window_full_blocks_until_its_oldest_send_ages_out() -> None:
    acc = account(RateLimits(minute=5))
    budget = usage_budget(acc, RateLimits(day=3), [], [(NOW - 80000, 1), (NOW - 10, 2)])
    assert budget.allowed == 0
    assert budget.free_at == NOW - 80000 + 86400


def test_both_scopes_full_free_when_the_later_window_frees() -> None:
    acc = account(RateLimits(minute=1))
    budget = usage_budget(acc, RateLimits(hour=2), [(NOW - 20, 1)],
                          [(NOW - 3000, 1), (NOW - 20, 1)])
    assert budget.allowed == 0
    assert budget.free_at == max(NOW - 20 + 60, NOW - 3000 + 3600)


def test_in_flight_counts_per_scope_but_sets_no_free_time() -> None:
    acc = account(RateLimits(minute=4))
    budget = usage_budget(acc, RateLimits(minute=10), [(NOW - 5, 1)], [(NOW - 5, 1)],
                          account_in_flight=3, tenant_in_flight=3)
    assert budget == Budget(allowed=0, free_at=None)


def test_sends_older_than_a_window_do_not_count_in_it() -> None:
    acc = account(RateLimits(minute=2, hour=5))
    budget = usage_budget(acc, None, [(NOW - 61, 2), (NOW - 30, 1)], [])
    assert budget.allowed == 1  # minute: 1 of 2 used; hour: 3 of 5 used


# -- take --------------------------------------------------------------------------------


def test_take_unlimited_is_a_batch_within_the_cycle_room() -> None:
    acc = account(batch_size=10)
    assert claimplan.take(acc, Budget(allowed=None), 50) == claimplan.Take(10, Budget(None))
    assert claimplan.take(acc, Budget(allowed=None), 4).n == 4


def test_take_within_budget_reads_no_heads() -> None:
    step = claimplan.take(account(batch_size=10), Budget(allowed=10), 50)
    assert (step.n, step.heads) == (10, 0)
    step = claimplan.take(account(batch_size=10), Budget(allowed=3), 3)
    assert (step.n, step.heads) == (3, 0)


@pytest.mark.parametrize(("behavior", "heads"), [(LimitBehavior.REJECT, 13),
                                                 (LimitBehavior.DEFER, 4)])
def test_take_short_budget_claims_what_is_allowed_and_looks_beyond(
    behavior: LimitBehavior, heads: int
) -> None:
    step = claimplan.take(account(behavior=behavior, batch_size=10), Budget(allowed=3), 50)
    assert (step.n, step.heads) == (3, heads)


# -- at the limit ------------------------------------------------------------------------


def full_minute(behavior: LimitBehavior) -> tuple[Account, claimplan.Take]:
    """Two sends this minute against a limit of 2: nothing more until the first ages out."""
    acc = account(RateLimits(minute=2), behavior=behavior, batch_size=3)
    budget = usage_budget(acc, None, [(NOW - 30, 1), (NOW - 10, 1)], [])
    return acc, claimplan.take(acc, budget, 100)


def test_reject_fails_a_batch_of_heads_beyond_the_limit() -> None:
    acc, step = full_minute(LimitBehavior.REJECT)
    assert (step.n, step.heads) == (0, 3)
    verdict = claimplan.over_limit(acc, step, [11, 12, 13])
    assert verdict.reject == (11, 12, 13)
    assert verdict.defer is None
    assert (verdict.reason, verdict.code) == ("rate_limit_exceeded", 429)
    assert verdict.limited(acc) == [RateLimited("t1", "acc", deferred=False)] * 3


def test_reject_spares_the_heads_within_the_budget() -> None:
    acc = account(RateLimits(minute=5), behavior=LimitBehavior.REJECT, batch_size=4)
    step = claimplan.take(acc, usage_budget(acc, None, [(NOW - 1, 3)], []), 100)
    assert (step.n, step.heads) == (2, 6)
    verdict = claimplan.over_limit(acc, step, [1, 2, 3, 4, 5])
    assert verdict.reject == (3, 4, 5)


def test_defer_puts_off_the_first_head_until_the_window_frees() -> None:
    acc, step = full_minute(LimitBehavior.DEFER)
    assert (step.n, step.heads) == (0, 1)
    verdict = claimplan.over_limit(acc, step, [21])
    assert (verdict.defer, verdict.until) == (21, NOW - 30 + 60)
    assert verdict.reject == ()
    assert verdict.limited(acc) == [RateLimited("t1", "acc", deferred=True)]


def test_defer_with_some_room_left_claims_it_and_defers_nothing() -> None:
    acc = account(RateLimits(minute=5), batch_size=4)
    step = claimplan.take(acc, usage_budget(acc, None, [(NOW - 1, 3)], []), 100)
    assert (step.n, step.heads) == (2, 3)
    assert claimplan.over_limit(acc, step, [1, 2, 3]) == claimplan.NOTHING


def test_defer_when_only_in_flight_blocks_waits_for_their_outcome() -> None:
    acc = account(RateLimits(minute=2), batch_size=4)
    step = claimplan.take(acc, usage_budget(acc, None, [], [], account_in_flight=2), 100)
    assert step.n == 0
    verdict = claimplan.over_limit(acc, step, [1])
    assert verdict == claimplan.NOTHING
    assert verdict.limited(acc) == []


@pytest.mark.parametrize("behavior", list(LimitBehavior))
def test_nothing_beyond_the_budget_means_nothing_to_do(behavior: LimitBehavior) -> None:
    acc, step = full_minute(behavior)
    assert claimplan.over_limit(acc, step, []) == claimplan.NOTHING
