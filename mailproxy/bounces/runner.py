"""The bounce poller of this process, driven by the stored instance settings (§3.6, §12.1).

Every process runs one; the poller lease lets only one of them poll at a time. Each re-reads
the settings once per poll interval (and at once on POST /instance/reload-bounce), so
`bounce_enabled`, the mailbox and `bounce_return_path` changes apply without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

from mailproxy.bounces.imap import Fetched, Mailbox, Poller
from mailproxy.bounces.model import MailboxCursor, ParsedBounce
from mailproxy.bounces.parse import parse
from mailproxy.bounces.service import BounceService, BounceStore, Clock
from mailproxy.model import InstanceConfig

log = logging.getLogger("mailproxy.bounces")

MAILBOX = "bounce"
# Share of the time a bounce poller with a full mailbox may work while mail is being sent;
# it rests the remainder, so that thousands of DSNs cost the dispatcher (same event loop,
# same database writer, same CPUs) little. While nothing is being sent it works flat out.
BUSY_DUTY = 0.05


class InstanceSource(Protocol):
    async def get_instance(self) -> InstanceConfig: ...


@dataclass(frozen=True, slots=True)
class Handling:
    """What happens to processed bounce mail (GMP_BOUNCE_MARK_SEEN / _PROCESSED_FOLDER), and
    which CA file the TLS connection trusts besides the system store."""

    mark_seen: bool = False
    move_to: str | None = None
    ca_file: str | None = None  # GMP_BOUNCE_IMAP_CA_FILE


def mailbox_of(config: InstanceConfig, handling: Handling) -> Mailbox | None:
    """The mailbox to poll, or None while bouncing is off or incomplete."""
    if not config.bounce_enabled or not config.bounce_imap_host:
        return None
    port = config.bounce_imap_port or (993 if config.bounce_imap_ssl else 143)
    return Mailbox(name=MAILBOX, host=config.bounce_imap_host, port=port,
                   user=config.bounce_imap_user or "",
                   password=config.bounce_imap_password or "",
                   folder=config.bounce_imap_folder or "INBOX", ssl=config.bounce_imap_ssl,
                   mark_seen=handling.mark_seen, move_to=handling.move_to,
                   ca_file=handling.ca_file)


def parse_all(fetched: Fetched) -> list[ParsedBounce]:
    """Bounces of a chunk of mail; a message that cannot be parsed is logged and skipped."""
    found: list[ParsedBounce] = []
    for uid, raw in fetched:
        try:
            found.extend(parse(raw))
        except Exception as exc:
            log.warning("bounce mailbox: message UID %d skipped, unparsable (%s: %s)", uid,
                        type(exc).__name__, exc)
    return found


class BounceRunner:
    def __init__(self, instance: InstanceSource, bounces: BounceService, store: BounceStore,
                 clock: Clock, owner: str, handling: Handling,
                 return_path: Callable[[str | None], None],
                 sending: Callable[[], bool] = lambda: False) -> None:
        self._instance = instance
        self._bounces = bounces
        self._return_path = return_path
        self._handling = handling
        self._pool: ProcessPoolExecutor | None = None
        self.poller = Poller(MAILBOX, self._source, self._process, store, clock, owner,
                             duty=lambda: BUSY_DUTY if sending() else 1.0)

    async def _source(self) -> tuple[Mailbox | None, float]:
        config = await self._instance.get_instance()
        enabled = config.bounce_enabled and bool(config.bounce_imap_host)
        self._return_path(config.bounce_return_path if enabled else None)
        return mailbox_of(config, self._handling), float(max(1, config.bounce_poll_interval))

    async def _process(self, cursor: MailboxCursor, fetched: Fetched) -> None:
        await self._bounces.record(cursor, await self._parse(fetched))

    async def _parse(self, fetched: Fetched) -> list[ParsedBounce]:
        """Parse in a helper process: a mailbox of thousands of DSNs costs seconds of CPU,
        which would otherwise be taken from the dispatcher on this event loop."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, parse_all, list(fetched))
        except BrokenProcessPool:
            log.warning("bounce parser process failed; parsing in this process")
            self._pool = None
            return parse_all(fetched)

    async def start(self) -> None:
        await self.reload()
        self.poller.start()

    async def reload(self) -> None:
        """Apply the stored settings now (the return path at once, the poller next)."""
        await self._source()
        self.poller.wake()

    async def stop(self) -> None:
        await self.poller.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
