"""What a running `mail-proxy serve` leaves in its data directory for the CLI to find.

`serve` writes `server.pid` and `server.json` (name, pid, REST URL with the port actually
bound) once it listens, and removes the pid file when it stops. The CLI reads them, so an
instance started by `make serve` (data in ./data, any GMP_PORT, even 0) is listed and
addressed by its name without extra variables. Standard library only: both sides use it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

PID_FILE = "server.pid"
STATE_FILE = "server.json"
# Files that only a data directory of mail-proxy holds.
MARKERS = ("api_token", "mail_service.db", STATE_FILE, "config.ini")


def write(data_dir: Path, name: str, url: str, smtp: str | None) -> None:
    """Record the running server (called once it listens)."""
    state = {"name": name, "pid": os.getpid(), "url": url, "smtp": smtp}
    _replace(data_dir / STATE_FILE, json.dumps(state) + "\n")
    _replace(data_dir / PID_FILE, f"{os.getpid()}\n")


def clear(data_dir: Path) -> None:
    """Remove the pid file at shutdown, if it is still ours (a later start may own it)."""
    path = data_dir / PID_FILE
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="ascii").strip()) == os.getpid():
            path.unlink()


def read(data_dir: Path) -> dict[str, Any]:
    """The recorded state, or {} when there is none or it is unreadable."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def is_data_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in MARKERS)


def _replace(path: Path, text: str) -> None:
    """Write atomically, so that a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
