"""Pure helpers of §10: the `{MD5:hex}` filename marker, the MIME type, the error text."""

from __future__ import annotations

import mimetypes
import re

_MARKER = re.compile(r"\{MD5:([0-9a-fA-F]{32})\}")
_SEPARATORS = "_-. "


class FetchError(Exception):
    """An attachment could not be had. `temporary` says whether a retry may help."""

    def __init__(self, filename: str, detail: str, *, temporary: bool) -> None:
        super().__init__(f"attachment '{filename}': {detail}")
        self.filename = filename
        self.detail = detail
        self.temporary = temporary


def marker_md5(filename: str) -> str | None:
    """The MD5 of a `{MD5:<32 hex>}` marker in the filename, lower-case, or None."""
    found = _MARKER.search(filename)
    return found.group(1).lower() if found else None


def sent_name(filename: str) -> str:
    """The filename without its cache marker, separators around it tidied:
    `report_{MD5:..}.pdf` -> `report.pdf`, `a__{MD5:..}_b.txt` -> `a_b.txt`."""
    found = _MARKER.search(filename)
    if found is None:
        return filename
    before = filename[: found.start()].rstrip(_SEPARATORS)
    after = filename[found.end():]
    rest = after.lstrip(_SEPARATORS)
    if rest and "." in after[: len(after) - len(rest)] + rest[:1]:
        rest = "." + rest.lstrip(".")  # the marker stood before the extension
    elif rest and before:
        rest = filename[found.start() - 1] + rest  # keep one separator between the halves
    name = (before or "attachment") + rest if rest.startswith(".") else before + rest
    return name or filename


def cache_key(content_md5: str | None, filename: str) -> str | None:
    """The cache lookup key: `content_md5`, else the filename marker."""
    return content_md5.lower() if content_md5 else marker_md5(filename)


def mime_type(given: str | None, filename: str) -> str:
    """`mime_type` when given, else guessed from the filename, else octet-stream."""
    if given and given.strip():
        return given.strip()
    guessed = mimetypes.guess_type(filename, strict=False)[0]
    return guessed or "application/octet-stream"
