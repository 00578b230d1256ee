"""The grace of an account whose relay host does not exist (pure; time passed in)."""

from __future__ import annotations

from dataclasses import replace

from mailproxy.model import Account
from mailproxy.relayhost import UnknownHosts

ACCOUNT = Account(tenant_id="acme", id="main", host="smtp.example.invalid", port=587)


def test_the_grace_counts_from_the_accounts_first_failure() -> None:
    hosts = UnknownHosts(60)
    assert hosts.deadline(ACCOUNT, 1000) == 1060
    assert hosts.deadline(ACCOUNT, 1030) == 1060  # a later message: same deadline
    other = replace(ACCOUNT, id="other")
    assert hosts.deadline(other, 1030) == 1090  # accounts are counted apart


def test_a_new_host_or_a_success_starts_it_anew() -> None:
    hosts = UnknownHosts(60)
    hosts.deadline(ACCOUNT, 1000)
    assert hosts.deadline(replace(ACCOUNT, host="mx.example.invalid"), 2000) == 2060
    hosts.forget("acme", "main")
    assert hosts.deadline(ACCOUNT, 3000) == 3060


def test_the_final_text_names_the_setting_to_fix() -> None:
    text = UnknownHosts(60).failed_text(ACCOUNT, "relay host smtp.example.invalid does not exist")
    assert text.endswith("; fix the host of account acme/main (unresolvable for 60 s)")
