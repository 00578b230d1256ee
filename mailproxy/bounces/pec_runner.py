"""PEC receipt pollers (§8.3): one read-only poller per PEC account with an IMAP mailbox.

The same machinery as the bounce poller (cursor, lease, backoff), one mailbox per account:
the accounts are re-read every interval, so adding, changing or deleting a PEC account takes
effect without a restart. The holder of the `pec-timeouts` lease also raises pec_timeout
for messages sent without an acceptance receipt in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from mailproxy.bounces.imap import Fetched, Mailbox, Poller, Process
from mailproxy.bounces.model import MailboxCursor, PecReceipt
from mailproxy.bounces.pec import parse_receipt
from mailproxy.bounces.service import BounceService, BounceStore, Clock
from mailproxy.model import Account
from mailproxy.tasks import cancel_and_wait

log = logging.getLogger("mailproxy.pec")

TIMEOUT_LEASE = "pec-timeouts"


class AccountSource(Protocol):
    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]: ...


def mailbox_name(account: Account) -> str:
    return f"pec:{account.tenant_id}/{account.id}"


def mailbox_of(account: Account, ca_file: str | None = None) -> Mailbox | None:
    """The account's receipt mailbox, read-only (never flagged, moved or expunged)."""
    if not account.is_pec_account or not account.imap_host:
        return None
    return Mailbox(name=mailbox_name(account), host=account.imap_host, port=account.imap_port,
                   user=account.imap_user or account.user or "",
                   password=account.imap_password or account.password or "",
                   folder=account.imap_folder or "INBOX", ssl=account.imap_ssl,
                   ca_file=ca_file)


def receipts_of(fetched: Fetched) -> list[PecReceipt]:
    found: list[PecReceipt] = []
    for uid, raw in fetched:
        try:
            receipt = parse_receipt(raw)
        except Exception as exc:
            log.warning("PEC mailbox: message UID %d skipped, unparsable (%s)", uid, exc)
            continue
        if receipt is not None:
            found.append(receipt)
    return found


class PecRunner:
    def __init__(self, accounts: AccountSource, bounces: BounceService, store: BounceStore,
                 clock: Clock, owner: str, *, interval: float, timeout: int,
                 ca_file: str | None = None) -> None:
        self._accounts = accounts
        self._bounces = bounces
        self._store = store
        self._clock = clock
        self._owner = owner
        self._interval = interval
        self._timeout = timeout
        self._ca_file = ca_file
        self._watched: dict[tuple[str, str], Account] = {}
        self.pollers: dict[tuple[str, str], Poller] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="pec")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await asyncio.gather(*(p.stop() for p in self.pollers.values()))
        self.pollers.clear()
        with contextlib.suppress(Exception):
            await self._store.release_lease(TIMEOUT_LEASE, self._owner)

    async def _supervise(self) -> None:
        while True:
            try:
                await self.refresh()
                await self.check_timeouts()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("PEC supervision failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self._interval)

    async def refresh(self) -> None:
        """Start pollers for new PEC accounts, stop those of accounts gone or changed off."""
        current = {a.key: a for a in await self._accounts.list_accounts()
                   if mailbox_of(a) is not None}
        self._watched = current
        for key in [k for k in self.pollers if k not in current]:
            await self.pollers.pop(key).stop()
        for key, account in current.items():
            if key not in self.pollers:
                poller = Poller(mailbox_name(account), self._source(key),
                                self._process(key), self._store, self._clock, self._owner)
                self.pollers[key] = poller
                poller.start()

    def _source(self, key: tuple[str, str]) -> Callable[[], Awaitable[tuple[Mailbox | None,
                                                                          float]]]:
        async def source() -> tuple[Mailbox | None, float]:
            account = self._watched.get(key)
            found = None if account is None else mailbox_of(account, self._ca_file)
            return found, self._interval

        return source

    def _process(self, key: tuple[str, str]) -> Process:
        async def process(cursor: MailboxCursor, fetched: Fetched) -> None:
            await self._bounces.record_receipts(cursor, key[0], key[1], receipts_of(fetched))

        return process

    async def check_timeouts(self) -> int:
        """pec_timeout for watched accounts' messages without acceptance in time."""
        now = self._clock.now()
        if not self._watched or not await self._store.acquire_lease(
                TIMEOUT_LEASE, self._owner, now, now + 3 * self._interval):
            return 0
        created = 0
        for tenant_id, account_id in self._watched:
            created += await self._bounces.pec_timeouts(tenant_id, account_id, self._timeout)
        return created
