"""Message bytes on the SMTP wire (contract §4.3, §4.4, §13). Pure: no I/O, no clock reads.

build_message runs for every delivery, so MIME is written by hand rather than through
`email.message`: the generator costs several hundred microseconds per message, this path a
few tens. The output is deterministic for a given input (boundaries derive from the pk), so a
retry sends the same bytes. prepare_raw never re-parses a raw message: it edits the header
block bytes and leaves every other byte alone.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import re
from collections.abc import Iterable, Sequence
from email.policy import default as _default_policy
from email.utils import formatdate
from urllib.parse import quote

from mailproxy.addresses import check_address, parse_address_list, split_address
from mailproxy.model import Content

FOLD_WIDTH = 78
MAX_LINE = 998
# Longer words cannot be folded, so they go out as encoded-words (which can be split).
_MAX_WORD = 900
_EW_BYTES = 45  # raw bytes per encoded-word: 60 base64 chars, 72 with the =?utf-8?b??= frame

TRACKING_HEADERS = ("x-mail-proxy-id", "x-genro-mail-id")
_IGNORED_EXTRA = frozenset(
    {"bcc", *TRACKING_HEADERS, "content-type", "content-transfer-encoding", "mime-version"}
)
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender"})
_STANDARD_NAMES = {
    "from": "From",
    "to": "To",
    "cc": "Cc",
    "reply-to": "Reply-To",
    "subject": "Subject",
    "date": "Date",
    "message-id": "Message-ID",
}

_WORDS_RE = re.compile(r"([ \t]+)")
_FOLD_PIECES_RE = re.compile(r"[ \t]+[^ \t]*")
_ATOMS_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- \t-]*")
_ATOM_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+")
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_MIME_TYPE_RE = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*|\[[A-Za-z0-9.:]+\]")
_CRLF_RE = re.compile(r"[\r\n]")
_HIGH_BYTES = bytes(range(128, 256))
# Bytes that quoted-printable carries as themselves anywhere in a line (RFC 2045 6.7).
_QP_LITERAL = bytes(range(0x20, 0x7F)).replace(b"=", b"") + b"\t\n"
_QP_WIDTH = 76  # characters per encoded line, the soft break's "=" included
_PARAM_SAFE = "!#$&+-.^_`|~"
_PARAM_CHUNK = 50  # keeps each RFC 2231 segment line under 78 characters
_RAW_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_UNFOLD_RE = re.compile(rb"\r?\n(?=[ \t])")


# --- header values -------------------------------------------------------------------


def _no_crlf(name: str, value: str) -> str:
    """A CR or LF in a value would let it add header lines: refuse it outright."""
    if _CRLF_RE.search(value):
        raise ValueError(f"invalid header: {name}")
    return value


def _utf8_len(ch: str) -> int:
    code = ord(ch)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4


def _encoded_words(text: str) -> str:
    """RFC 2047 'b' encoded-words for `text`, split on character boundaries."""
    words: list[str] = []
    start = size = 0
    for i, ch in enumerate(text):
        n = _utf8_len(ch)
        if size + n > _EW_BYTES:
            words.append(text[start:i])
            start, size = i, 0
        size += n
    words.append(text[start:])
    return " ".join(
        "=?utf-8?b?" + binascii.b2a_base64(w.encode("utf-8"), newline=False).decode() + "?="
        for w in words
    )


def _needs_encoding(word: str) -> bool:
    return not word.isascii() or len(word) > _MAX_WORD


def _quote_word(word: str) -> str:
    """A phrase word as an atom, or as a quoted string when it holds specials."""
    if _ATOM_RE.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_words(text: str, *, phrase: bool = False) -> str:
    """Encode a header text word by word (RFC 2047): only words that need it get encoded.

    Consecutive words that need encoding share one run, because the space between two
    encoded-words is dropped by decoders. In a phrase (display name), ASCII words with
    specials are quoted instead, since a phrase cannot carry them bare.
    """
    if len(text) <= _MAX_WORD and text.isascii():
        if not phrase or _ATOMS_RE.fullmatch(text):
            return text
        return _quote_word(text)
    tokens = _WORDS_RE.split(text)  # word, space, word, ...; words at even indexes
    out: list[str] = []
    i = 0
    while i < len(tokens):
        word = tokens[i]
        if not _needs_encoding(word):
            out.append(_quote_word(word) if phrase and word else word)
            out.extend(tokens[i + 1 : i + 2])
            i += 2
            continue
        end = i
        while end + 2 < len(tokens) and _needs_encoding(tokens[end + 2]):
            end += 2
        out.append(_encoded_words("".join(tokens[i : end + 1])))
        out.extend(tokens[end + 1 : end + 2])
        i = end + 2
    return "".join(out)


def _fold(name: str, value: str) -> str:
    """`Name: value`, folded before whitespace so that lines stay near 78 characters.

    Unfolding (dropping the inserted CRLFs) gives back the value exactly.
    """
    line = f"{name}: {value}"
    if len(line) <= FOLD_WIDTH:
        return line
    lines: list[str] = []
    current = name + ":"
    for piece in _FOLD_PIECES_RE.findall(" " + value):
        if len(current) + len(piece) > FOLD_WIDTH and current != name + ":" and piece.strip():
            lines.append(current)
            current = piece
        else:
            current += piece
    lines.append(current)
    return "\r\n".join(lines)


@functools.lru_cache(maxsize=1024)
def _format_mailbox(item: str) -> str:
    """One address for a header: display name encoded word by word, addr-spec never.
    Memoised, like split_address: the same senders come back message after message."""
    name, addr = split_address(item)
    if not addr.isascii():
        with contextlib.suppress(ValueError):  # already checked at intake; keep it as is
            addr = check_address(addr, allow_utf8_local=True)
    if not name:
        return addr
    return f"{encode_words(name, phrase=True)} <{addr}>"


def _format_addresses(items: Iterable[str]) -> str:
    return ", ".join(_format_mailbox(item) for item in items)


def _angle(message_id: str) -> str:
    if message_id.startswith("<") and message_id.endswith(">"):
        return message_id
    return "<" + message_id.removeprefix("<").removesuffix(">") + ">"


@functools.lru_cache(maxsize=256)
def _msgid_domain(domain: str | None, hostname: str) -> str:
    """An ASCII right-hand side for a generated Message-ID."""
    if domain and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            domain = None
    if domain and _DOMAIN_RE.fullmatch(domain):
        return domain
    return hostname


def _from_domain(from_addr: str) -> str | None:
    try:
        addr = split_address(from_addr)[1]
    except ValueError:
        return None
    local, at, domain = addr.rpartition("@")
    return domain.strip() if at and local else None


# --- build_message ---------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _date_header(date_ts: int) -> str:
    """RFC 5322 date in GMT; messages claimed together mostly share their second."""
    return formatdate(date_ts, usegmt=True)


def _standard_headers(content: Content, pk: str, date_ts: int, hostname: str) -> dict[str, str]:
    if content.message_id:
        message_id = _angle(_no_crlf("Message-ID", content.message_id))
    else:
        message_id = f"<{pk}@{_msgid_domain(_from_domain(content.from_addr), hostname)}>"
    fields = {"from": _format_addresses([content.from_addr])}
    if content.to:
        fields["to"] = _format_addresses(content.to)
    if content.cc:
        fields["cc"] = _format_addresses(content.cc)
    if content.reply_to:
        fields["reply-to"] = _format_addresses(parse_address_list(content.reply_to))
    if content.subject:
        fields["subject"] = encode_words(_no_crlf("Subject", content.subject))
    fields["date"] = _date_header(date_ts)
    fields["message-id"] = message_id
    return fields


def _extra_value(lname: str, value: str) -> str:
    if lname == "message-id":
        return _angle(value)
    if lname in _ADDRESS_HEADERS:
        try:
            return _format_addresses(parse_address_list(value))
        except ValueError:
            pass
    return encode_words(value)


def _header_lines(
    content: Content, pk: str, client_id: str, date_ts: int, hostname: str, genro_header: bool
) -> list[str]:
    """Header lines: standard ones, then extras (an extra of a standard name replaces it)."""
    fields = _standard_headers(content, pk, date_ts, hostname)
    names = {key: _STANDARD_NAMES[key] for key in fields}
    for name, value in content.headers:
        lname = name.lower()
        if lname in _IGNORED_EXTRA:
            continue
        if not _FIELD_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid header: {name}")
        fields[lname] = _extra_value(lname, _no_crlf(name, str(value)))
        names.setdefault(lname, name)
    fields["x-mail-proxy-id"] = encode_words(_no_crlf("X-Mail-Proxy-ID", pk))
    names["x-mail-proxy-id"] = "X-Mail-Proxy-ID"
    if genro_header:
        fields["x-genro-mail-id"] = encode_words(_no_crlf("X-Genro-Mail-ID", client_id))
        names["x-genro-mail-id"] = "X-Genro-Mail-ID"
    return [_fold(names[key], value) for key, value in fields.items()]


def _base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines. encodebytes splits in C-sized chunks and one
    replace adds the CRs: about 3x faster than slicing per line on a 200 KB attachment."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _lf(text: str) -> str:
    """Text with every line ending as LF, so that it can be turned into CRLF uniformly."""
    if "\r" in text:
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _has_long_line(text: str) -> bool:
    return len(text) > MAX_LINE and max(map(len, text.split("\n"))) > MAX_LINE


def _encode_text(text: str) -> tuple[bytes, str]:
    """Body bytes with CRLF line ends and the cheapest 7-bit-safe transfer encoding.

    A missing final newline is added, as the `email` package does (so v0.6 did too).
    """
    text = _lf(text)
    if text and not text.endswith("\n"):
        text += "\n"
    if text.isascii():
        if "\x00" not in text and not _has_long_line(text):
            return text.replace("\n", "\r\n").encode("ascii"), "7bit"
        data = text.encode("ascii")
        plain = _qp_plain(data)
        if plain is not None:
            return plain, "quoted-printable"
        return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n"), "quoted-printable"
    data = text.encode("utf-8")
    high = len(data) - len(data.translate(None, _HIGH_BYTES))
    if high * 6 > len(data):  # base64 (4/3 of the size) beats quoted-printable (3 per byte)
        # Text is encoded in canonical form (CRLF line ends), as RFC 2045 asks.
        return _base64_lines(data.replace(b"\n", b"\r\n")), "base64"
    return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n"), "quoted-printable"


def _qp_plain(data: bytes) -> bytes | None:
    """Quoted-printable of LF-ended ASCII text that needs no escape (no "=", no control
    character but tab, no white space ending a line): its long lines are only cut by soft
    line breaks. About twice as fast as binascii's encoder, which looks at every byte; None
    when the text needs that encoder."""
    if data.translate(None, _QP_LITERAL):
        return None
    lines = data.split(b"\n")
    if any(line.endswith((b" ", b"\t")) for line in lines):
        return None
    step = _QP_WIDTH - 1
    return b"\r\n".join([
        line if len(line) <= _QP_WIDTH
        else b"=\r\n".join([line[i:i + step] for i in range(0, len(line), step)])
        for line in lines
    ])


def _text_entity(text: str, subtype: str) -> tuple[list[str], bytes]:
    body, cte = _encode_text(text)
    headers = [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        f"Content-Transfer-Encoding: {cte}",
    ]
    return headers, body


def _param(name: str, value: str) -> list[str]:
    """A MIME parameter: quoted when plain ASCII, else RFC 2231 with continuations."""
    if len(value) <= 200 and value.isprintable() and value.isascii():
        return [f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"']
    encoded = quote(value, safe=_PARAM_SAFE, encoding="utf-8")
    if len(encoded) <= _PARAM_CHUNK:
        return [f"{name}*=utf-8''{encoded}"]
    chunks: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + _PARAM_CHUNK, len(encoded))
        cut = encoded.rfind("%", end - 2, end)  # never split a %XX escape
        end = cut if cut > start else end
        chunks.append(encoded[start:end])
        start = end
    return [
        f"{name}*{n}*=" + ("utf-8''" if n == 0 else "") + chunk for n, chunk in enumerate(chunks)
    ]


def _with_params(head: str, params: list[str]) -> str:
    line = "; ".join([head, *params])
    if len(line) <= FOLD_WIDTH:
        return line
    return ";\r\n ".join([head, *params])


class Base64Lines(bytes):
    """Attachment data already encoded by base64_lines: sent as is, so that content sent
    again and again (a cached attachment) is encoded once, not per message."""


def base64_lines(data: bytes) -> Base64Lines:
    return Base64Lines(_base64_lines(data))


def _attachment_entity(filename: str, mime_type: str, data: bytes) -> tuple[list[str], bytes]:
    ctype = mime_type.strip().lower() if mime_type else ""
    if not _MIME_TYPE_RE.fullmatch(ctype):
        ctype = "application/octet-stream"
    if isinstance(data, Base64Lines):
        if not ctype.startswith("message/"):
            return _attachment_headers(filename, ctype, "base64"), data
        data = binascii.a2b_base64(data)
    body, cte = _base64_lines(data), "base64"
    if ctype.startswith("message/") and data.isascii() and b"\0" not in data:
        # RFC 2046 forbids base64 on message/*: send it as 7-bit text when it is.
        text = _lf(data.decode("ascii"))
        if not _has_long_line(text):
            body, cte = text.replace("\n", "\r\n").encode("ascii"), "7bit"
    return _attachment_headers(filename, ctype, cte), body


def _attachment_headers(filename: str, ctype: str, cte: str) -> list[str]:
    return [
        _with_params(f"Content-Type: {ctype}", _param("name", filename)),
        f"Content-Transfer-Encoding: {cte}",
        _with_params("Content-Disposition: attachment", _param("filename", filename)),
    ]


def _multipart(
    subtype: str, tag: str, pk: str, parts: list[tuple[list[str], bytes]]
) -> tuple[list[str], bytes]:
    headers, pieces = _multipart_pieces(subtype, tag, pk, parts)
    return headers, b"".join(pieces)


def _multipart_pieces(
    subtype: str, tag: str, pk: str, parts: list[tuple[list[str], bytes]]
) -> tuple[list[str], list[bytes]]:
    """A multipart entity whose boundary derives from the pk and occurs in no part, as the
    pieces of its body (no part is copied into it).
    Base64 lines cannot hold a boundary (`_` is not in their alphabet), so large
    pre-encoded attachments are not searched.
    """
    heads = ["\r\n".join(h).encode("utf-8") for h, _body in parts]
    base = "=_" + tag + "_" + re.sub(r"[^A-Za-z0-9\-]", "", pk)[:50]
    boundary, n = base, 0
    while any(_holds(boundary.encode("ascii"), head, body)
              for head, (_h, body) in zip(heads, parts, strict=True)):
        n += 1
        boundary = f"{base}.{n}"
    delimiter = b"--" + boundary.encode("ascii")
    pieces: list[bytes] = []
    for head, (_h, part_body) in zip(heads, parts, strict=True):
        pieces += [delimiter, b"\r\n", head, b"\r\n\r\n", part_body, b"\r\n"]
    pieces += [delimiter, b"--\r\n"]
    return [_with_params(f"Content-Type: multipart/{subtype}", [f'boundary="{boundary}"'])], pieces


def _holds(boundary: bytes, head: bytes, body: bytes) -> bool:
    return boundary in head or (not isinstance(body, Base64Lines) and boundary in body)


def _body_entity(
    content: Content, pk: str, attachments: Sequence[tuple[str, str, bytes]]
) -> tuple[list[str], list[bytes]]:
    """The headers of the message's top entity and the pieces of its body."""
    if content.html_body and content.body:
        entity = _multipart(
            "alternative",
            "alt",
            pk,
            [_text_entity(content.body, "plain"), _text_entity(content.html_body, "html")],
        )
    elif content.html_body:
        entity = _text_entity(content.html_body, "html")
    else:
        entity = _text_entity(content.body, "html" if content.body_is_html else "plain")
    if not attachments:
        return entity[0], [entity[1]]
    parts = [entity, *(_attachment_entity(f, t, d) for f, t, d in attachments)]
    return _multipart_pieces("mixed", "mix", pk, parts)


def build_message(
    content: Content,
    *,
    pk: str,
    client_id: str,
    date_ts: int,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    genro_header: bool = True,
    hostname: str = "localhost",
) -> list[bytes]:
    """The message ready for DATA (contract §4.3), CRLF-terminated, as the pieces that make
    it up, in order: delivery writes them as they are (a gathered write), so that a large
    attachment is never copied into one buffer; b"".join() gives the message.

    `attachments` are (filename, mime type, data), already fetched. Bcc never appears.
    """
    headers = _header_lines(content, pk, client_id, date_ts, hostname, genro_header)
    entity_headers, body = _body_entity(content, pk, attachments)
    headers.append("MIME-Version: 1.0")
    headers.extend(entity_headers)
    return ["\r\n".join(headers).encode("utf-8"), b"\r\n\r\n", *body]


# --- raw messages ----------------------------------------------------------------------


def _scan_header_block(raw: bytes) -> list[tuple[bytes, int, int]]:
    """(lower-case name, start, end) of each header field, continuation lines included.

    The block ends at the first empty line (CRLF or LF), or at the first line that is
    neither a field nor a continuation; nothing after that point is ever looked at.
    """
    fields: list[tuple[bytes, int, int]] = []
    pos, size = 0, len(raw)
    while pos < size:
        nl = raw.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        first = raw[pos]
        if first in (0x20, 0x09) and fields:
            name, start, _ = fields[-1]
            fields[-1] = (name, start, end)
        else:
            match = _RAW_FIELD_RE.match(raw, pos, end)
            if match is None:
                break
            fields.append((match.group(1).lower(), pos, end))
        pos = end
    return fields


def _raw_header_line(name: str, value: str, eol: bytes) -> bytes:
    return _fold(name, value).replace("\r\n", eol.decode("ascii")).encode("utf-8") + eol


def prepare_raw(
    raw: bytes,
    *,
    pk: str,
    client_id: str,
    date_ts: int,
    from_domain: str | None,
    genro_header: bool = True,
    hostname: str = "localhost",
    strip_headers: Sequence[str] = (),
) -> bytes:
    """A raw or SMTP-submitted message made ready to send (contract §4.4, §13).

    Removes Bcc, the tracking headers and `strip_headers` (each with its continuation
    lines), prepends Message-ID and Date when missing and the tracking headers, and keeps
    every other byte, line endings included.
    """
    drop = {b"bcc", *(n.encode("ascii") for n in TRACKING_HEADERS)}
    drop.update(name.strip().lower().encode("ascii") for name in strip_headers)
    first_nl = raw.find(b"\n")
    eol = b"\r\n" if first_nl > 0 and raw[first_nl - 1] == 0x0D else b"\n"
    kept: list[bytes | memoryview] = []
    view = memoryview(raw)
    last = 0
    present: set[bytes] = set()
    for name, start, end in _scan_header_block(raw):
        if name in drop:
            kept.append(view[last:start])
            last = end
        else:
            present.add(name)
    kept.append(view[last:])
    added = [
        _raw_header_line("X-Mail-Proxy-ID", encode_words(_no_crlf("X-Mail-Proxy-ID", pk)), eol)
    ]
    if genro_header:
        value = encode_words(_no_crlf("X-Genro-Mail-ID", client_id))
        added.append(_raw_header_line("X-Genro-Mail-ID", value, eol))
    if b"message-id" not in present:
        domain = _msgid_domain(from_domain, hostname)
        added.append(_raw_header_line("Message-ID", f"<{pk}@{domain}>", eol))
    if b"date" not in present:
        added.append(_raw_header_line("Date", _date_header(date_ts), eol))
    return b"".join([*added, *kept])


def _field_value(raw: bytes, start: int, end: int) -> str:
    line = raw[start:end]
    value = line[line.index(b":") + 1 :]
    return _UNFOLD_RE.sub(b"", value).decode("utf-8", "replace").strip()


def read_control_headers(raw: bytes, names: Sequence[str]) -> dict[str, str]:
    """Unfolded, stripped values of the named headers (first occurrence), by lower-case name."""
    wanted = {name.lower().encode("ascii") for name in names}
    found: dict[str, str] = {}
    for name, start, end in _scan_header_block(raw):
        key = name.decode("ascii")
        if name in wanted and key not in found:
            found[key] = _field_value(raw, start, end)
    return found


def header_value(raw: bytes, name: str) -> str | None:
    """Unfolded, stripped value of the first `name` header, still RFC 2047-encoded."""
    return read_control_headers(raw, [name]).get(name.lower())


def decoded_subject(raw: bytes) -> str | None:
    """The Subject with encoded-words decoded (for listings of SMTP-submitted mail)."""
    value = header_value(raw, "subject")
    if value is None:
        return None
    return str(_default_policy.header_factory("subject", value))


def decode_base64(path: str) -> bytes:
    """Inline attachment data (a `base64:` prefix and missing padding are tolerated).

    Intake decodes it once to refuse bad data; the send decodes it again to get the bytes,
    so both read it with this one function. ValueError on data that is not base64."""
    text = path[len("base64:"):] if path.startswith("base64:") else path
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid attachment: bad base64 data") from None
