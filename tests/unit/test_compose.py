"""Message bytes: MIME building (contract §4.3) and raw-message preparation (§4.4, §13)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage, MIMEPart
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailproxy.compose import (
    build_message,
    decoded_subject,
    encode_words,
    header_value,
    prepare_raw,
    read_control_headers,
)
from mailproxy.model import Content

PK = "0190e1c2-7d4e-7a1b-9c3f-4b5a6c7d8e9f"
DATE_TS = 1767225600  # 2026-01-01 00:00:00 UTC


def _content(**overrides: Any) -> Content:
    fields: dict[str, Any] = {
        "from_addr": "Acme Billing <billing@acme.test>",
        "to": ("alice@example.com",),
        "subject": "Your invoice",
        "body": "Plain text version\n",
    }
    fields.update(overrides)
    return Content(**fields)


def _build(content: Content, **kwargs: Any) -> bytes:
    kwargs.setdefault("pk", PK)
    kwargs.setdefault("client_id", "inv-2026-0042")
    kwargs.setdefault("date_ts", DATE_TS)
    return b"".join(build_message(content, **kwargs))


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def _head(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def _text(part: MIMEPart) -> str:
    """Decoded text of a part, with the canonical CRLF line ends read back as LF."""
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def _assert_wire_form(data: bytes) -> None:
    """CRLF line ends only, no line over 998 octets, 7-bit clean."""
    assert data.count(b"\n") == data.count(b"\r\n")
    assert data.count(b"\r") == data.count(b"\r\n")
    assert data.endswith(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.isascii()


# --- MIME shapes ----------------------------------------------------------------------------


def test_body_only_is_a_single_text_plain_part() -> None:
    data = _build(_content(body="Hello\nsecond line\n"))
    _assert_wire_form(data)
    message = _parse(data)
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert not message.is_multipart()
    assert _text(message) == "Hello\nsecond line\n"


def test_body_flagged_html_is_a_single_text_html_part() -> None:
    message = _parse(_build(_content(body="<p>Hi</p>\n", body_is_html=True)))
    assert message.get_content_type() == "text/html"
    assert _text(message) == "<p>Hi</p>\n"


def test_body_and_html_make_multipart_alternative_text_first() -> None:
    data = _build(_content(body="Plain\n", html_body="<p>HTML</p>\n", body_is_html=True))
    _assert_wire_form(data)
    message = _parse(data)
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [_text(p) for p in parts] == ["Plain\n", "<p>HTML</p>\n"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)


def test_html_only_is_a_single_text_html_part() -> None:
    message = _parse(_build(_content(body="", html_body="<p>Only</p>\n")))
    assert message.get_content_type() == "text/html"
    assert not message.is_multipart()
    assert _text(message) == "<p>Only</p>\n"


def test_attachments_wrap_the_alternative_in_multipart_mixed() -> None:
    pdf = bytes(range(256)) * 40
    data = _build(
        _content(body="Plain\n", html_body="<p>HTML</p>\n"),
        attachments=[("invoice.pdf", "application/pdf", pdf), ("notes.txt", "text/plain", b"a\nb")],
    )
    _assert_wire_form(data)
    message = _parse(data)
    assert message.get_content_type() == "multipart/mixed"
    body, pdf_part, txt_part = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [_text(p) for p in body.iter_parts()] == ["Plain\n", "<p>HTML</p>\n"]
    assert pdf_part.get_content_type() == "application/pdf"
    assert pdf_part.get_filename() == "invoice.pdf"
    assert pdf_part.get_content_disposition() == "attachment"
    assert pdf_part.get_content() == pdf
    assert txt_part.get_payload(decode=True) == b"a\nb"  # attachment bytes are not touched


def test_attachment_with_plain_body_and_bad_mime_type() -> None:
    data = _build(_content(), attachments=[("x.bin", "not a type\r\nX-Evil: 1", b"\x00\x01")])
    message = _parse(data)
    body, attachment = message.iter_parts()
    assert body.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/octet-stream"
    assert b"X-Evil" not in data


def test_non_ascii_filename_uses_rfc2231() -> None:
    name = "fattura è €.pdf"
    data = _build(_content(), attachments=[(name, "application/pdf", b"%PDF")])
    _assert_wire_form(data)
    assert b"filename*=utf-8''fattura%20%C3%A8%20%E2%82%AC.pdf" in data
    attachment = next(iter(_parse(data).iter_attachments()))
    assert attachment.get_filename() == name


def test_long_non_ascii_filename_uses_rfc2231_continuations() -> None:
    name = "relazione trimestrale è " * 8 + ".pdf"
    data = _build(_content(), attachments=[(name, "application/pdf", b"%PDF")])
    _assert_wire_form(data)
    assert b"filename*1*=" in data
    assert max(len(line) for line in _head(data.split(b"--=_mix_")[2]).split(b"\r\n")) <= 78
    attachment = next(iter(_parse(data).iter_attachments()))
    assert attachment.get_filename() == name


def test_rfc822_attachment_is_sent_7bit() -> None:
    inner = b"From: a@x.org\nSubject: inner\n\nhello\n"
    data = _build(_content(), attachments=[("fwd.eml", "message/rfc822", inner)])
    assert b"Content-Type: message/rfc822" in data
    assert b"Content-Transfer-Encoding: 7bit" in data
    _assert_wire_form(data)
    forwarded = list(_parse(data).iter_parts())[1].get_content()
    assert forwarded["Subject"] == "inner"


# --- headers ------------------------------------------------------------------------------


def test_standard_headers_and_no_bcc() -> None:
    data = _build(
        _content(
            to=("alice@example.com", "Bob <bob@example.com>"),
            cc=('"Doe, J" <j@example.org>',),
            bcc=("hidden@example.com",),
            reply_to="Support <support@acme.test>",
            headers=(("Bcc", "other-hidden@example.com"), ("X-Campaign", "jan")),
        )
    )
    message = _parse(data)
    assert message["From"] == "Acme Billing <billing@acme.test>"
    assert [a.addr_spec for a in message["To"].addresses] == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [
        ("Doe, J", "j@example.org")
    ]
    assert message["Reply-To"] == "Support <support@acme.test>"
    assert message["Subject"] == "Your invoice"
    assert message["X-Campaign"] == "jan"
    assert message["MIME-Version"] == "1.0"
    assert b"bcc" not in data.lower()
    assert b"hidden" not in data


def test_generated_message_id_and_date() -> None:
    data = _build(_content())
    message = _parse(data)
    assert message["Message-ID"] == f"<{PK}@acme.test>"
    assert b"\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n" in data
    assert message["Date"].datetime == datetime(2026, 1, 1, tzinfo=UTC)


def test_message_id_uses_hostname_when_sender_has_no_domain() -> None:
    message = _parse(_build(_content(from_addr="Mailer <mailer>"), hostname="relay.local"))
    assert message["Message-ID"] == f"<{PK}@relay.local>"


def test_message_id_domain_of_idn_sender_is_ascii() -> None:
    data = _build(_content(from_addr="Zoë <zoe@bücher.de>"))
    _assert_wire_form(data)
    message = _parse(data)
    assert message["Message-ID"] == f"<{PK}@xn--bcher-kva.de>"
    assert message["From"].addresses[0].addr_spec == "zoe@xn--bcher-kva.de"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("abc@client.test", "<abc@client.test>"), ("<abc@client.test>", "<abc@client.test>")],
)
def test_supplied_message_id_is_used_verbatim(given: str, expected: str) -> None:
    message = _parse(_build(_content(message_id=given)))
    assert message["Message-ID"] == expected


def test_tracking_headers_replace_client_supplied_ones() -> None:
    content = _content(
        headers=(("X-Mail-Proxy-ID", "forged"), ("x-genro-mail-id", "forged"), ("X-Other", "1"))
    )
    data = _build(content)
    message = _parse(data)
    assert message.get_all("X-Mail-Proxy-ID") == [PK]
    assert message.get_all("X-Genro-Mail-ID") == ["inv-2026-0042"]
    assert b"forged" not in data


def test_genro_header_can_be_turned_off() -> None:
    data = _build(_content(), genro_header=False)
    assert _parse(data)["X-Mail-Proxy-ID"] == PK
    assert b"X-Genro-Mail-ID" not in data


def test_extra_header_of_a_standard_name_replaces_it() -> None:
    content = _content(
        headers=(("subject", "Overridden"), ("Date", "Fri, 02 Jan 2026 10:00:00 +0000"))
    )
    message = _parse(_build(content))
    assert message.get_all("Subject") == ["Overridden"]
    assert message.get_all("Date") == ["Fri, 02 Jan 2026 10:00:00 +0000"]


def test_mime_headers_from_the_client_are_ignored() -> None:
    content = _content(
        headers=(
            ("Content-Type", "text/html"),
            ("Content-Transfer-Encoding", "base64"),
            ("MIME-Version", "2.0"),
        )
    )
    message = _parse(_build(content))
    assert message.get_all("Content-Type") == ['text/plain; charset="utf-8"']
    assert message.get_all("Content-Transfer-Encoding") == ["7bit"]
    assert message.get_all("MIME-Version") == ["1.0"]


@pytest.mark.parametrize(
    "content",
    [
        _content(headers=(("X-Note", "a\r\nBcc: evil@x.org"),)),
        _content(headers=(("Bad Name", "x"),)),
        _content(headers=(("Bad:Name", "x"),)),
        _content(subject="Hi\nBcc: evil@x.org"),
        _content(message_id="a@b\r\nX: y"),
    ],
)
def test_header_injection_is_refused(content: Content) -> None:
    with pytest.raises(ValueError, match="invalid header"):
        _build(content)


def test_client_id_with_crlf_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid header"):
        _build(_content(), client_id="id\r\nBcc: evil@x.org")


def test_subject_is_encoded_word_by_word() -> None:
    data = _build(_content(subject="Test Email 🚀"))
    assert b"\r\nSubject: Test Email =?utf-8?b?8J+agA==?=\r\n" in data
    assert _parse(data)["Subject"] == "Test Email 🚀"


def test_adjacent_non_ascii_words_keep_their_space() -> None:
    subject = "Caffè città  and   più spazi è"
    data = _build(_content(subject=subject))
    _assert_wire_form(data)
    line = next(x for x in _head(data).split(b"\r\n") if x.startswith(b"Subject:"))
    assert b" and " in line  # ASCII words stay literal
    assert _parse(data)["Subject"] == subject


def test_non_ascii_display_names_are_encoded_but_not_addresses() -> None:
    data = _build(
        _content(from_addr="Zoë Müller <zoe@acme.test>", to=('"Doe, Jürgen" <j@example.org>',))
    )
    _assert_wire_form(data)
    head = _head(data)
    assert b"From: =?utf-8?b?" in head
    assert b"<zoe@acme.test>" in head
    assert b"<j@example.org>" in head
    message = _parse(data)
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Zoë Müller", "zoe@acme.test")
    recipient = message["To"].addresses[0]
    assert (recipient.display_name, recipient.addr_spec) == ("Doe, Jürgen", "j@example.org")


def test_encode_words_quotes_specials_in_display_names() -> None:
    assert encode_words("Doe, J", phrase=True) == '"Doe, J"'
    assert encode_words('Say "hi"', phrase=True) == '"Say \\"hi\\""'
    assert encode_words("Plain Name", phrase=True) == "Plain Name"
    assert encode_words("Doe, J") == "Doe, J"


def test_long_headers_are_folded_and_unfold_back() -> None:
    subject = " ".join(f"word{i}" for i in range(60)) + " ünïcode " + "x" * 1500
    recipients = tuple(f"Recipient {i} <r{i}@example.com>" for i in range(40))
    data = _build(_content(subject=subject, to=recipients))
    _assert_wire_form(data)
    assert max(len(line) for line in _head(data).split(b"\r\n")) <= 78
    message = _parse(data)
    assert message["Subject"] == subject
    assert [a.addr_spec for a in message["To"].addresses] == [
        f"r{i}@example.com" for i in range(40)
    ]


# --- bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        ("ascii only\n.leading dot\n", "7bit"),
        ("Il caffè è pronto, arrivo subito.\n" * 20, "quoted-printable"),
        ("日本語のテキスト🚀\n" * 20, "base64"),
        ("x" * 5000 + "\nshort\n", "quoted-printable"),
        ("trailing spaces   \n\ttab\n", "7bit"),
        ("nul \x00 byte\n", "quoted-printable"),
    ],
)
def test_bodies_decode_back_exactly(body: str, encoding: str) -> None:
    data = _build(_content(body=body))
    _assert_wire_form(data)
    message = _parse(data)
    assert message["Content-Transfer-Encoding"] == encoding
    assert _text(message) == body


def test_long_html_line_is_kept_under_998_octets() -> None:
    html = "<table>" + "<tr><td>cell</td></tr>" * 500 + "</table>\n"
    data = _build(_content(body="text\n", html_body=html))
    _assert_wire_form(data)
    assert [_text(p) for p in _parse(data).iter_parts()] == ["text\n", html]


def test_line_ends_are_normalised_to_crlf() -> None:
    data = _build(_content(body="a\r\nb\rc\nd"))
    _assert_wire_form(data)
    assert data.endswith(b"\r\n\r\na\r\nb\r\nc\r\nd\r\n")


_ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


@settings(max_examples=300, deadline=None)
@given(subject=_ANY_TEXT, body=_ANY_TEXT, html=_ANY_TEXT, message_id=_ANY_TEXT,
       name=st.sampled_from(["X-Tag", "Keywords", "Comments", "Sender", "Message-ID"]),
       value=_ANY_TEXT,
       filename=_ANY_TEXT, data=st.binary(max_size=300),
       mime=st.one_of(st.sampled_from(["text/plain", "message/rfc822", "application/pdf", ""]),
                      _ANY_TEXT))
def test_every_composed_message_is_in_wire_form(
    subject: str, body: str, html: str, message_id: str, name: str, value: str,
    filename: str, mime: str, data: bytes,
) -> None:
    """build_message promises CRLF line ends only and a final CRLF, which the worker vouches
    for to delivery (no second scan): any input either keeps that promise or is refused.
    (8-bit bytes may remain: a Message-ID or an address header is kept as given.)"""
    content = _content(subject=subject, body=body, html_body=html or None,
                       message_id=message_id or None, headers=((name, value),))
    try:
        message = _build(content, attachments=[(filename, mime, data), ("t.txt", mime, data)])
    except ValueError:
        return
    assert message.count(b"\n") == message.count(b"\r\n") == message.count(b"\r")
    assert message.endswith(b"\r\n")


# Text that quoted-printable can carry as is, or nearly: long lines, the characters that
# need escapes ("=", controls, white space ending a line), dots and spaces at the cuts.
_QP_TEXT = st.text(alphabet=st.sampled_from(list("ab .=\t\n\x01~")), max_size=400).map(
    lambda text: text + "x" * 1000)


@settings(max_examples=300, deadline=None)
@given(body=_QP_TEXT)
def test_quoted_printable_bodies_decode_back_exactly(body: str) -> None:
    """Long ASCII lines go out quoted-printable, cut by soft line breaks into lines of at
    most 76 characters, and decode back to the text (escapes only where they are needed)."""
    data = _build(_content(body=body))
    _assert_wire_form(data)
    message = _parse(data)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert _text(message) == body + "\n"
    encoded = data.split(b"\r\n\r\n", 1)[1]
    assert max(map(len, encoded.split(b"\r\n"))) <= 76
    if "=" not in body:
        assert b"=3D" not in encoded


def test_missing_final_newline_is_added_like_the_email_package() -> None:
    message = _parse(_build(_content(body="no newline")))
    assert _text(message) == "no newline\n"


def test_output_is_deterministic_for_retries() -> None:
    content = _content(html_body="<p>x</p>", attachments=())
    attachments = [("a.txt", "text/plain", b"abc")]
    assert _build(content, attachments=attachments) == _build(content, attachments=attachments)


def test_boundary_never_occurs_in_a_part() -> None:
    trap = f"--=_alt_{PK}\n--=_mix_{PK}\n"
    data = _build(
        _content(body=trap, html_body="<p>x</p>\n"), attachments=[("a", "text/plain", b"")]
    )
    message = _parse(data)
    body, attachment = message.iter_parts()
    assert [_text(p) for p in body.iter_parts()] == [trap, "<p>x</p>\n"]
    assert attachment.get_filename() == "a"


# --- prepare_raw --------------------------------------------------------------------------

RAW = (
    b"From: Sender <sender@acme.test>\r\n"
    b"To: alice@example.com\r\n"
    b"Bcc: hidden@example.com,\r\n"
    b"  other@example.com\r\n"
    b"Subject: =?utf-8?b?8J+agA==?= report\r\n"
    b"\tcontinued\r\n"
    b"X-Mail-Proxy-Priority: high\r\n"
    b"Message-ID: <orig@acme.test>\r\n"
    b"\r\n"
    b".dot-leading line\r\n"
    b"Bcc: in-body@example.com\r\n"
    b"\xff raw 8-bit \xfe\r\n"
    b"no final newline"
)


def test_prepare_raw_changes_only_what_it_must() -> None:
    out = prepare_raw(
        RAW,
        pk=PK,
        client_id="smtp-1",
        date_ts=DATE_TS,
        from_domain="acme.test",
        strip_headers=["x-MAIL-proxy-PRIORITY"],
    )
    expected_added = (
        f"X-Mail-Proxy-ID: {PK}\r\n"
        "X-Genro-Mail-ID: smtp-1\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    ).encode()
    expected_rest = (
        b"From: Sender <sender@acme.test>\r\n"
        b"To: alice@example.com\r\n"
        b"Subject: =?utf-8?b?8J+agA==?= report\r\n"
        b"\tcontinued\r\n"
        b"Message-ID: <orig@acme.test>\r\n"
        b"\r\n"
        b".dot-leading line\r\n"
        b"Bcc: in-body@example.com\r\n"
        b"\xff raw 8-bit \xfe\r\n"
        b"no final newline"
    )
    assert out == expected_added + expected_rest


def test_prepare_raw_adds_message_id_and_keeps_lf_line_ends() -> None:
    raw = (
        b"From: a@acme.test\nBcc: b@x.org\n c@x.org\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\nbody\n"
    )
    out = prepare_raw(raw, pk=PK, client_id="c-1", date_ts=DATE_TS, from_domain="acme.test")
    assert b"\r" not in out
    assert out == (
        f"X-Mail-Proxy-ID: {PK}\nX-Genro-Mail-ID: c-1\nMessage-ID: <{PK}@acme.test>\n".encode()
        + b"From: a@acme.test\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\nbody\n"
    )


def test_prepare_raw_message_id_falls_back_to_hostname() -> None:
    out = prepare_raw(
        b"Subject: x\r\n\r\nbody\r\n",
        pk=PK,
        client_id="c",
        date_ts=DATE_TS,
        from_domain=None,
        hostname="relay.local",
        genro_header=False,
    )
    assert out.startswith(f"X-Mail-Proxy-ID: {PK}\r\nMessage-ID: <{PK}@relay.local>\r\n".encode())
    assert b"X-Genro-Mail-ID" not in out
    assert out.endswith(b"\r\nSubject: x\r\n\r\nbody\r\n")


def test_prepare_raw_replaces_existing_tracking_headers() -> None:
    raw = (
        b"X-Mail-Proxy-ID: client-chosen\r\n"
        b"Message-ID: <m@x>\r\nDate: d\r\n"
        b"x-genro-mail-id: old\r\n  folded-old\r\n"
        b"Subject: s\r\n\r\nb\r\n"
    )
    out = prepare_raw(raw, pk="P", client_id="C", date_ts=0, from_domain="x")
    assert out == (
        b"X-Mail-Proxy-ID: P\r\nX-Genro-Mail-ID: C\r\n"
        b"Message-ID: <m@x>\r\nDate: d\r\nSubject: s\r\n\r\nb\r\n"
    )


def test_prepare_raw_stops_at_a_line_that_is_not_a_header() -> None:
    raw = b"Subject: s\r\nnot a header line\r\nBcc: stays@x.org\r\n\r\nbody\r\n"
    out = prepare_raw(raw, pk="P", client_id="C", date_ts=0, from_domain="x")
    assert out.endswith(raw)


def test_prepare_raw_without_body() -> None:
    out = prepare_raw(
        b"Subject: s\r\nBcc: b@x.org",
        pk="P",
        client_id="C",
        date_ts=0,
        from_domain="x",
        genro_header=False,
    )
    assert out.endswith(b"Subject: s\r\n")
    assert b"Bcc" not in out


def test_prepared_raw_parses_with_new_headers() -> None:
    out = prepare_raw(RAW, pk=PK, client_id="smtp-1", date_ts=DATE_TS, from_domain="acme.test")
    message = _parse(out.replace(b"\xff", b"").replace(b"\xfe", b""))
    assert message["X-Mail-Proxy-ID"] == PK
    assert message["Message-ID"] == "<orig@acme.test>"
    assert message["Bcc"] is None


# --- reading headers of raw messages --------------------------------------------------------


def test_read_control_headers() -> None:
    raw = (
        b"X-Mail-Proxy-ID:  client-7 \r\n"
        b"x-mail-proxy-priority: \r\n  high\r\n"
        b"X-Mail-Proxy-Priority: low\r\n"
        b"\r\n"
        b"X-Mail-Proxy-Batch: in-body\r\n"
    )
    names = ["X-Mail-Proxy-ID", "X-Mail-Proxy-Priority", "X-Mail-Proxy-Batch"]
    assert read_control_headers(raw, names) == {
        "x-mail-proxy-id": "client-7",
        "x-mail-proxy-priority": "high",
    }


def test_header_value_and_decoded_subject() -> None:
    assert header_value(RAW, "subject") == "=?utf-8?b?8J+agA==?= report\tcontinued"
    assert header_value(RAW, "X-Absent") is None
    assert decoded_subject(RAW) == "🚀 report\tcontinued"
    assert decoded_subject(b"From: a@x.org\n\nSubject: body\n") is None
    assert decoded_subject("Subject: Caffè\n\n".encode()) == "Caffè"
