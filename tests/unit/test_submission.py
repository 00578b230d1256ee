"""Pure parts of SMTP submission: control headers, envelope syntax, the AUTH throttle."""

from __future__ import annotations

import pytest

from mailproxy.model import Priority
from mailproxy.submission import (
    AuthThrottle,
    Control,
    InvalidControl,
    envelope_address_ok,
    read_control,
)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def test_control_headers_default_and_values() -> None:
    assert read_control({}, Priority.MEDIUM) == Control(None, Priority.MEDIUM, None, None)
    values = {"x-mail-proxy-id": "inv-1", "x-mail-proxy-priority": "Immediate",
              "x-mail-proxy-batch": "jan", "x-mail-proxy-deferred-ts": "1767225600.9"}
    assert read_control(values, Priority.MEDIUM) == Control(
        "inv-1", Priority.IMMEDIATE, "jan", 1767225600)
    assert read_control({"x-mail-proxy-priority": "3"}, Priority.MEDIUM).priority == Priority.LOW


@pytest.mark.parametrize(("name", "value"), [
    ("x-mail-proxy-priority", "4"), ("x-mail-proxy-priority", "urgent"),
    ("x-mail-proxy-priority", "1.5"), ("x-mail-proxy-deferred-ts", "nan"),
    ("x-mail-proxy-deferred-ts", "-1"), ("x-mail-proxy-deferred-ts", "soon"),
    ("x-mail-proxy-batch", "b" * 65), ("x-mail-proxy-id", "i" * 256),
])
def test_invalid_control_values_name_the_header(name: str, value: str) -> None:
    with pytest.raises(InvalidControl) as raised:
        read_control({name: value}, Priority.MEDIUM)
    assert str(raised.value).lower() == name


@pytest.mark.parametrize(("address", "smtputf8", "ok"), [
    ("a@example.org", False, True),
    ("first.last+tag@sub.example.org", False, True),
    ("a@[192.0.2.1]", False, True),
    ("zoë@example.org", False, False),
    ("zoë@example.org", True, True),
    ("a@exämple.org", True, True),
    ("no-at-sign", False, False),
    ("a@-bad-.org", False, False),
    ("a..b@example.org", False, False),
    ("\udcff@example.org", True, False),  # undecodable bytes, as aiosmtpd hands them over
])
def test_envelope_address_syntax(address: str, smtputf8: bool, ok: bool) -> None:
    assert envelope_address_ok(address, smtputf8) is ok


def test_auth_throttle_blocks_after_max_failures_in_the_window() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(max_failures=3, clock=clock)
    for _ in range(3):
        assert not throttle.blocked("192.0.2.1")
        throttle.failed("192.0.2.1")
        clock.t += 60
    assert throttle.blocked("192.0.2.1")
    assert not throttle.blocked("192.0.2.2")
    clock.t += 600 - 180  # the first failure leaves the 10-minute window
    assert not throttle.blocked("192.0.2.1")


def test_auth_throttle_of_zero_never_blocks() -> None:
    throttle = AuthThrottle(max_failures=0, clock=FakeClock())
    throttle.failed("192.0.2.1")
    assert not throttle.blocked("192.0.2.1")
