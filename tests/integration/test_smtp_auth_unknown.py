"""SMTP AUTH as a tenant/account pair that does not exist is refused at AUTH (535), with the
same delay and the same failure count as a wrong password: probing learns nothing more."""

from __future__ import annotations

import time

import aiosmtplib
import pytest

from mailproxy import submission
from tests.conftest import ApiFactory
from tests.integration.test_smtp_ingress import (
    FAIL_DELAY,
    SUBMISSION_PASSWORD,
    command,
    connect,
    plain_blob,
    start_proxy,
)
from tests.relay import Relay

INVALID = (535, "5.7.8 Authentication credentials invalid")


async def _auth(smtp: aiosmtplib.SMTP, user: str, password: str) -> tuple[tuple[int, str], float]:
    started = time.monotonic()
    reply = await command(smtp, "AUTH", "PLAIN", plain_blob(user, password).decode())
    return reply, time.monotonic() - started


async def test_an_unknown_account_is_535_at_auth_like_a_wrong_password(
        make_api: ApiFactory, relay: Relay) -> None:
    proxy = await start_proxy(make_api, relay)
    smtp = await connect(proxy.port)
    for user, password in [("acme/nope", proxy.token), ("acme/nope", SUBMISSION_PASSWORD),
                           ("nope/main", proxy.token), ("acme/main", "wrong")]:
        reply, took = await _auth(smtp, user, password)
        assert reply == INVALID, user
        assert took >= FAIL_DELAY, user
    reply, _took = await _auth(smtp, "acme/main", proxy.token)
    assert reply[0] == 235  # the real pair still logs in
    await smtp.quit()


async def test_unknown_accounts_count_toward_the_421_throttle(
        make_api: ApiFactory, relay: Relay) -> None:
    proxy = await start_proxy(make_api, relay, smtp_auth_max_failures=3,
                              smtp_auth_fail_delay_seconds=0.01)
    smtp = await connect(proxy.port)
    for _ in range(3):
        reply, _took = await _auth(smtp, "acme/nope", proxy.token)
        assert reply == INVALID
    reply, _took = await _auth(smtp, "acme/main", proxy.token)
    assert reply == (421, "4.7.0 Too many failed attempts")


async def test_every_refusal_does_the_same_password_work(
        make_api: ApiFactory, relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown pair costs the scrypt check a wrong submission password costs, so the
    time of the 535 does not tell which accounts exist."""
    checks: list[str] = []
    real = submission.check_password

    def counting(password: str, stored: str) -> bool:
        checks.append(password)
        return real(password, stored)

    monkeypatch.setattr(submission, "check_password", counting)
    proxy = await start_proxy(make_api, relay, smtp_auth_fail_delay_seconds=0.01)
    smtp = await connect(proxy.port)
    for user, password in [("acme/nope", "guess-1"), ("nope/main", "guess-2"),
                           ("acme/main", "guess-3"), ("acme/nope", proxy.token)]:
        reply, _took = await _auth(smtp, user, password)
        assert reply == INVALID, user
    assert checks == ["guess-1", "guess-2", "guess-3", proxy.token]
