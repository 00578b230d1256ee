"""Pure decisions: priorities, retry delays, rate windows."""

from __future__ import annotations

import random

import pytest

from mailproxy.model import Priority, RateLimits
from mailproxy.policy import (
    Budget,
    RetryPolicy,
    combine_budgets,
    display_status,
    parse_priority,
    priority_text,
    report_backoff,
    window_budget,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Priority.IMMEDIATE), (3, Priority.LOW), (9, Priority.LOW), (-4, Priority.IMMEDIATE),
        (1.9, Priority.HIGH), ("2", Priority.MEDIUM), ("HIGH", Priority.HIGH),
        (" low ", Priority.LOW), ("7", Priority.LOW), ("urgent", None), (None, None),
        (True, None), (float("nan"), None),
    ],
)
def test_parse_priority(value: object, expected: Priority | None) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Priority.IMMEDIATE), (3, Priority.LOW), (9, None), (-1, None), (1.0, None),
        ("2", None), ("HIGH", Priority.HIGH), (" low ", Priority.LOW), ("urgent", None),
        (None, None), (True, None),
    ],
)
def test_exact_priority_names_only_labels_and_ints_0_to_3(
    value: object, expected: Priority | None
) -> None:
    assert parse_priority(value, exact=True) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", Priority.IMMEDIATE), (" 3 ", Priority.LOW), ("Medium", Priority.MEDIUM),
     ("4", None), ("1.5", None), ("-1", None), ("urgent", None), ("", None)],
)
def test_priority_text_takes_a_label_or_a_digit(text: str, expected: Priority | None) -> None:
    assert priority_text(text) == expected


def test_nominal_retry_delays_follow_the_contract() -> None:
    policy = RetryPolicy()
    assert [policy.nominal_delay(n) for n in range(1, 6)] == [60, 180, 540, 1620, 4860]
    assert policy.nominal_delay(9) == 7200


def test_retry_delay_is_full_jitter_within_bounds() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    draws = [policy.delay(2, rng) for _ in range(2000)]
    assert min(draws) >= 1 and max(draws) <= 180
    assert min(draws) < 20 and max(draws) > 160  # spread over the whole range


def test_retries_exhaust_at_the_maximum() -> None:
    policy = RetryPolicy(max_retries=2)
    assert not policy.exhausted(1)
    assert policy.exhausted(2)


def test_report_backoff_doubles_and_caps() -> None:
    rng = random.Random(1)
    assert 2.5 <= report_backoff(1, rng) <= 5
    assert 5 <= report_backoff(2, rng) <= 10
    assert 300 <= report_backoff(30, rng) <= 600


def test_unlimited_scope_has_no_budget_limit() -> None:
    assert window_budget(None, [], 5, 1000) == Budget(allowed=None)
    assert window_budget(RateLimits(minute=0), [], 5, 1000) == Budget(allowed=None)


def test_budget_counts_sends_in_window_and_in_flight() -> None:
    limits = RateLimits(minute=10)
    sends = [(1000 - 30, 3), (1000 - 90, 50)]  # the old bucket is outside the minute
    assert window_budget(limits, sends, in_flight=2, now=1000) == Budget(allowed=5)


def test_full_window_frees_when_the_oldest_needed_send_ages_out() -> None:
    limits = RateLimits(minute=3)
    sends = [(950, 1), (960, 1), (970, 1)]
    budget = window_budget(limits, sends, in_flight=0, now=1000)
    assert budget == Budget(allowed=0, free_at=950 + 60)
    over = window_budget(RateLimits(minute=2), sends, 0, 1000)
    assert over.free_at == 960 + 60  # two sends must age out before there is room


def test_in_flight_alone_does_not_set_a_free_time() -> None:
    budget = window_budget(RateLimits(minute=2), [(990, 1)], in_flight=1, now=1000)
    assert budget == Budget(allowed=0, free_at=None)


def test_tightest_window_and_latest_free_time_win() -> None:
    limits = RateLimits(minute=5, hour=6)
    sends = [(1000 - 1000, 5), (1000 - 10, 1)]
    budget = window_budget(limits, sends, 0, 1000)
    assert budget.allowed == 0
    assert budget.free_at == 0 + 3600
    combined = combine_budgets([Budget(3, None), Budget(1, 2000), Budget(None)])
    assert combined == Budget(1, 2000)


def test_due_scheduled_reads_as_pending() -> None:
    assert display_status("scheduled", 100, now=100) == "pending"
    assert display_status("deferred", 101, now=100) == "deferred"
    assert display_status("sent", 1, now=100) == "sent"
