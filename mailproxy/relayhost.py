"""Relay hosts that do not exist (DNS NXDOMAIN): a short grace, then the account fails.

A name that does not resolve is a mistake in the account's settings far more often than
an outage (an outage answers SERVFAIL or times out, which stays an ordinary retry). So the
first attempts that meet it are deferred to the end of a grace period counted from the first
failure on that account, in case DNS is being changed; after it, every message of the
account fails at once with a text that names the setting to fix. Pure: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailproxy.model import Account


@dataclass
class UnknownHosts:
    grace: float
    _since: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)

    def deadline(self, account: Account, now: float) -> float:
        """Until when this account's unresolvable host is retried."""
        host, since = self._since.get((account.tenant_id, account.id), (account.host, now))
        if host != account.host:
            since = now
        self._since[(account.tenant_id, account.id)] = (account.host, since)
        return since + self.grace

    def forget(self, tenant_id: str, account_id: str) -> None:
        """The host resolved again, or the account changed: the next failure starts anew."""
        if self._since:
            self._since.pop((tenant_id, account_id), None)

    def failed_text(self, account: Account, error: str) -> str:
        return (f"{error}; fix the host of account {account.tenant_id}/{account.id} "
                f"(unresolvable for {self.grace:g} s)")
