"""Terminal side of the CLI: exit codes, one-line errors, tables, prompts, progress."""

from __future__ import annotations

import getpass
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from mailproxy.timefmt import iso

OK, FAILED, USAGE, NOT_RUNNING = 0, 1, 2, 3
_NAIVE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class CliError(Exception):
    """Ends the command with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Ctx:
    json: bool = False
    no_input: bool = False

    @property
    def interactive(self) -> bool:
        """Prompts only when a person can answer them."""
        return not self.no_input and sys.stdin.isatty()

    def emit(self, data: Any, render: Callable[[], None]) -> None:
        if self.json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            render()

    def ask(self, label: str, flag: str, *, secret: bool = False) -> str:
        """A missing required value: prompted on a terminal, else a usage error."""
        if not self.interactive:
            raise CliError(f"{flag} is required (no terminal to ask on)", USAGE)
        while True:
            value = getpass.getpass(f"{label}: ") if secret else input(f"{label}: ")
            if value.strip() or secret:
                return value.strip() if not secret else value
            print(f"{label} cannot be empty", file=sys.stderr)

    def confirm(self, question: str, yes: bool) -> None:
        """Delete confirmation that --yes skips; refused or impossible = no change."""
        if yes:
            return
        if not self.interactive:
            raise CliError("refusing to delete without --yes (no terminal to confirm on)",
                           USAGE)
        answer = input(f"{question} [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise CliError("cancelled, nothing was deleted", FAILED)


def readable_time(value: Any) -> str:
    """An epoch, a stored `YYYY-MM-DD HH:MM:SS` (UTC) or an ISO-8601 `...Z` time, as one
    readable UTC form; never a raw epoch on a terminal."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return str(value)
    text = value if isinstance(value, str) else (iso(value) or "")
    if _NAIVE.match(text):
        text = f"{text[:10]}T{text[11:19]}Z"
    if _ISO.match(text):
        return f"{text[:10]} {text[11:19]} UTC"
    return str(value)


def is_time_key(key: str) -> bool:
    return key.endswith(("_ts", "_at"))


def cell(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key and is_time_key(key):
        return readable_time(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
          out: TextIO | None = None) -> None:
    """Aligned columns with a header; `columns` are (key, header) pairs."""
    stream = out or sys.stdout
    if not rows:
        print("(none)", file=stream)
        return
    grid = [[header for _key, header in columns]]
    grid += [[cell(row.get(key), key) for key, _header in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    for line in grid:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip(),
              file=stream)


def pairs(items: Iterable[tuple[str, Any]]) -> None:
    """Key: value lines, keys aligned."""
    listed = [(k, cell(v, k)) for k, v in items]
    width = max((len(k) for k, _ in listed), default=0)
    for key, value in listed:
        print(f"{key.ljust(width)}  {value}")


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled and total > 1 and sys.stderr.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
