"""What the CLI believes of a data directory it did not write itself.

A checkout's ./data may come from anyone: its server.json could name any URL and its
server.pid any process. The CLI sends the admin token only to a loopback URL, and takes a
pid for a running server only when /proc shows a `mail-proxy serve` process there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.parse
from pathlib import Path

_PROGRAMS = frozenset({"mail-proxy", "mailproxy"})


def is_loopback_url(url: str) -> bool:
    """True for http(s)://localhost, 127.0.0.0/8 or [::1], with any port."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_server_process(pid: int) -> bool:
    """True when pid is a live (not zombie) `mail-proxy serve` process. Anything that
    cannot be read (no /proc entry, no permission) is no proof, so it is False."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and serves([a.decode(errors="replace") for a in argv if a])


def serves(argv: list[str]) -> bool:
    """`mail-proxy serve …`, `python …/mail-proxy serve …` or `python -m mailproxy serve …`."""
    rest: list[str] | None = None
    if argv and Path(argv[0]).name in _PROGRAMS:
        rest = argv[1:]
    elif argv and Path(argv[0]).name.startswith("python"):
        rest = _after_interpreter(argv[1:])
    return rest is not None and rest[:1] == ["serve"]


def _after_interpreter(args: list[str]) -> list[str] | None:
    """The arguments after the mail-proxy script or `-m mailproxy`, else None."""
    with contextlib.suppress(ValueError):
        at = args.index("-m")
        return args[at + 2:] if args[at + 1:at + 2] == ["mailproxy"] else None
    first = next((a for a in args if not a.startswith("-")), None)
    if first is not None and Path(first).name in _PROGRAMS:
        return args[args.index(first) + 1:]
    return None
