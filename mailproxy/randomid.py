"""Random ids (message pks, SMTP client ids) from os.urandom bytes drawn a block at a time.

os.urandom lets go of the GIL for its system call, and taking the GIL back waits behind the
thread that holds it meanwhile. Once per message, the SQLite writer (new pks) queued behind
the event loop (13 % of the busy samples of batched intake) and the event loop (the ids of
SMTP submissions) behind the writer (7 % of the loop's samples in bench/smtp_ingress.py).
Drawn per thread, in blocks of 5 KB; a forked child draws its own.
"""

from __future__ import annotations

import os
import threading
import time

_BLOCK = 5120


class _Noise(threading.local):
    block = b""
    at = 0

    def take(self, count: int) -> int:
        """`count` random bytes as an unsigned integer."""
        if self.at + count > len(self.block):
            self.block, self.at = os.urandom(_BLOCK), 0
        self.at += count
        return int.from_bytes(self.block[self.at - count:self.at], "big")


_noise = _Noise()
os.register_at_fork(after_in_child=lambda: setattr(_noise, "block", b""))

_VERSION_BITS = ~((0xF << 76) | (0x3 << 62))
_UUID4 = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant
_UUID7 = (0x7 << 76) | (0x2 << 62)  # version 7, RFC 4122 variant


def _text(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid4() -> str:
    """str(uuid.uuid4()), without a system call per id."""
    return _text(_noise.take(16) & _VERSION_BITS | _UUID4)


def uuid7() -> str:
    """A time-ordered UUID (version 7 layout: milliseconds, then random bits): new rows land
    at the end of a pk index. Formatted by hand: uuid.UUID's constructor and str() cost more
    than the random bytes."""
    value = (int(time.time() * 1000) << 80) | _noise.take(10)
    return _text(value & _VERSION_BITS | _UUID7)
