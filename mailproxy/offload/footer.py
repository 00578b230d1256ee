"""The download-link footer appended to the bodies (§11). Pure."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailproxy.offload.config import MB

HEADING = "Large attachments available for download:"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Link:
    filename: str
    size: int
    url: str
    expires: int


def megabytes(size: int) -> str:
    return f"{size / MB:.1f}"


def _day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def plain(body: str, links: Sequence[Link]) -> str:
    lines = [f"- {x.filename} ({megabytes(x.size)} MB): {x.url} (expires {_day(x.expires)})"
             for x in links]
    sep = "" if body.endswith("\n") or not body else "\n"
    return body + sep + "\n" + HEADING + "\n" + "\n".join(lines) + "\n"


def html_body(body: str, links: Sequence[Link]) -> str:
    items = "".join(
        f'<li><a href="{html.escape(x.url)}">{html.escape(x.filename)}</a> '
        f"({megabytes(x.size)} MB, expires {_day(x.expires)})</li>"
        for x in links)
    block = f"<p>{html.escape(HEADING)}</p><ul>{items}</ul>"
    ends = list(_BODY_END.finditer(body))
    if ends:
        at = ends[-1].start()
        return body[:at] + block + body[at:]
    return body + block


def raw_part_text(x: Link) -> str:
    """What replaces a large part of a raw message."""
    return (f"{HEADING}\n- {x.filename} ({megabytes(x.size)} MB): {x.url} "
            f"(expires {_day(x.expires)})\n")
