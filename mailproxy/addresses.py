"""Address parsing and syntax checks (contract §4.2, §4.5). Pure: no I/O.

These run for every address of every message of a request (up to 1000 messages), so the
common cases take a precompiled-regex fast path and never go through the `email` parser.
"""

from __future__ import annotations

import functools
import ipaddress
import re

MAX_ADDRESS_LENGTH = 254

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
# UTF-8 local parts (RFC 6532): any non-ASCII character except C1 controls and surrogates.
_UTF8 = "\u00a0-\ud7ff\ue000-\U0010ffff"
_QTEXT = r"\x20\x21\x23-\x5b\x5d-\x7e"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"


def _local_pattern(extra: str) -> str:
    atom = f"[{_ATEXT}{extra}]+"
    quoted = rf'"(?:[{_QTEXT}{extra}]|\\[\x20-\x7e{extra}])+"'
    return rf"(?:{atom}(?:\.{atom})*|{quoted})"


_ASCII_LOCAL = _local_pattern("")
_ASCII_ADDRESS_RE = re.compile(rf"{_ASCII_LOCAL}@{_DOMAIN}")
_ASCII_LOCAL_RE = re.compile(_ASCII_LOCAL)
_UTF8_LOCAL_RE = re.compile(_local_pattern(_UTF8))
_DOMAIN_RE = re.compile(_DOMAIN)
_CRLF_RE = re.compile(r"[\r\n]")


def _reject_crlf(value: str) -> None:
    """CR or LF in an address could inject a header line or an SMTP command."""
    if _CRLF_RE.search(value):
        raise ValueError("CR/LF in address")


def _split_list_slow(value: str) -> list[str]:
    """Split at commas that are outside quoted strings, comments and angle brackets."""
    items: list[str] = []
    start = 0
    quoted = escaped = False
    depth = angle = 0
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = quoted or depth > 0
        elif ch == '"' and depth == 0:
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif ch in "<>":
            angle = 1 if ch == "<" else 0
        elif ch == "," and not angle:
            items.append(value[start:i])
            start = i + 1
    if quoted:
        raise ValueError("unterminated quoted string in address list")
    items.append(value[start:])
    return items


def parse_address_list(value: str | list[str]) -> list[str]:
    """Items of an address field as written (display names kept), empty entries dropped.

    A list is taken item by item; a string is an RFC 5322 address list, so a quoted
    display name may contain a comma. CR/LF anywhere raises ValueError.
    """
    if isinstance(value, str):
        _reject_crlf(value)
        if '"' in value or "(" in value or "\\" in value:
            parts = _split_list_slow(value)
        else:
            parts = value.split(",")
    else:
        parts = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError("address must be a string")
            _reject_crlf(item)
            parts.append(item)
    return [s for s in (p.strip() for p in parts) if s]


def _first_unquoted(text: str, targets: str) -> int:
    """Index of the first character of `targets` outside a quoted string, or -1."""
    if '"' not in text:
        hits = [i for i in (text.find(t) for t in targets) if i >= 0]
        return min(hits) if hits else -1
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch in targets:
            return i
    if quoted:
        raise ValueError("unterminated quoted string")
    return -1


def _unquote_phrase(name: str) -> str:
    """Display name with its quotes and backslash escapes removed."""
    if '"' not in name and "\\" not in name:
        return name
    out: list[str] = []
    escaped = False
    for ch in name:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch != '"':
            out.append(ch)
    return "".join(out).strip()


@functools.lru_cache(maxsize=1024)
def split_address(item: str) -> tuple[str, str]:
    """(display name, addr-spec) of `Name <a@b>`, `<a@b>`, `a@b` or `a@b (Name)`.

    The addr-spec is not validated here (see check_address); only the shape is. Memoised:
    bulk mail names the same senders and recipients again and again, and intake, the
    worker and the composer each split them (a refusal is raised again, never cached).
    """
    _reject_crlf(item)
    text = item.strip()
    if not text:
        raise ValueError("empty address")
    lt = _first_unquoted(text, "<>")
    if lt < 0:
        return _split_bare(text)
    if text[lt] == ">" or not text.endswith(">"):
        raise ValueError("malformed angle brackets")
    addr = text[lt + 1 : -1].strip()
    if not addr or _first_unquoted(addr, "<>") >= 0:
        raise ValueError("malformed angle brackets")
    return _unquote_phrase(text[:lt].strip()), addr


def _split_bare(text: str) -> tuple[str, str]:
    """A bare addr-spec, possibly followed by an old-style `(Display Name)` comment."""
    if text.endswith(")"):
        open_at = _first_unquoted(text, "(")
        if open_at <= 0:
            raise ValueError("malformed comment")
        return text[open_at + 1 : -1].strip(), text[:open_at].strip()
    return "", text


def _check_ip_literal(domain: str) -> str:
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
            return "[IPv6:" + inner[5:] + "]"
        ipaddress.IPv4Address(inner)
    except ValueError:
        raise ValueError("invalid IP literal") from None
    return domain


def _check_domain(domain: str) -> str:
    """The domain in lower-case ASCII (IDNA for internationalised names)."""
    if not domain:
        raise ValueError("empty domain")
    if domain.startswith("[") and domain.endswith("]"):
        return _check_ip_literal(domain)
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("invalid internationalised domain") from None
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError("invalid domain")
    return domain.lower()


def _check_local(local: str, allow_utf8_local: bool) -> None:
    if not local:
        raise ValueError("empty local part")
    if local.isascii():
        if not _ASCII_LOCAL_RE.fullmatch(local):
            raise ValueError("invalid local part")
    elif not allow_utf8_local:
        raise ValueError("non-ASCII local part")
    elif not _UTF8_LOCAL_RE.fullmatch(local):
        raise ValueError("invalid local part")


def check_address(addr_spec: str, *, allow_utf8_local: bool = False) -> str:
    """Validate an addr-spec (contract §4.5) and return it with the domain normalised.

    The domain is lower-cased and internationalised names become IDNA (the stdlib codec,
    i.e. IDNA 2003); the local part is kept as written. UTF-8 local parts need SMTPUTF8,
    so they pass only with `allow_utf8_local=True`.
    """
    if len(addr_spec) <= MAX_ADDRESS_LENGTH and _ASCII_ADDRESS_RE.fullmatch(addr_spec):
        local, _, domain = addr_spec.rpartition("@")
        lowered = domain.lower()
        return addr_spec if lowered == domain else f"{local}@{lowered}"
    _reject_crlf(addr_spec)
    local, at, domain = addr_spec.rpartition("@")
    if not at:
        raise ValueError("missing @")
    _check_local(local, allow_utf8_local)
    result = f"{local}@{_check_domain(domain)}"
    if len(result.encode("utf-8")) > MAX_ADDRESS_LENGTH:
        raise ValueError("address too long")
    return result


def needs_smtputf8(addr: str) -> bool:
    """Whether the address can only be relayed with the SMTPUTF8 extension."""
    return not addr.isascii()
