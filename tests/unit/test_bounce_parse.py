"""Bounce parsing (§12.2) over the hand-written corpus in tests/data/bounces."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailproxy.bounces import correlate
from mailproxy.bounces.model import BounceType, MessageRef, ParsedBounce
from mailproxy.bounces.parse import parse

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bounces"
PK = "0193c0de-1111-7222-8333-444455556666"
RCPT = "NoSuch@Example.org"


def corpus(name: str, pk: str = PK, client_id: str = "inv-1", rcpt: str = RCPT) -> bytes:
    raw = (CORPUS / name).read_bytes()
    return (raw.replace(b"{PK}", pk.encode()).replace(b"{CLIENT_ID}", client_id.encode())
            .replace(b"{RCPT}", rcpt.encode()))


# name -> (type, dotted code, words in the reason, X-Mail-Proxy-ID found, from a DSN part)
EXPECTED = {
    "dsn_511.eml": (BounceType.HARD, "5.1.1", "User unknown", True, True),
    "dsn_522_headers_only.eml": (BounceType.HARD, "5.2.2", "Mailbox full", True, True),
    "dsn_422_delayed.eml": (BounceType.SOFT, "4.2.2", "Over quota", False, True),
    "dsn_441_no_answer.eml": (BounceType.SOFT, "4.4.1", "Connection timed out", True, True),
    "postfix_plain.eml": (BounceType.HARD, "5.1.1", "said: 550", True, False),
    "exim.eml": (BounceType.HARD, "5.1.1", "No such user", True, False),
    "exchange.eml": (BounceType.HARD, "5.1.10", "RecipientNotFound", True, False),
    "gmail.eml": (BounceType.HARD, "5.1.1", "does not exist", False, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bounce_styles_are_classified_with_code_reason_and_correlation_keys(name: str) -> None:
    kind, code, words, has_pk, from_dsn = EXPECTED[name]
    [found] = parse(corpus(name))
    assert found.recipient == "nosuch@example.org"  # lower-cased for suppression
    assert (found.type, found.code, found.from_dsn) == (kind, code, from_dsn)
    assert found.reason is not None and words in found.reason
    assert len(found.reason) <= 500 and "\n" not in found.reason
    assert found.pk == (PK if has_pk else None)
    # Our generated Message-ID carries the pk (rule 2) wherever the pk header is missing.
    assert correlate.pk_of_message_id(found.message_id) == PK or found.pk == PK


def test_one_event_per_failed_recipient_and_delivered_ones_are_skipped() -> None:
    found = parse(corpus("dsn_two_recipients.eml"))
    assert [(b.recipient, b.type, b.code) for b in found] == [
        ("nosuch@example.org", BounceType.HARD, "5.1.1"),
        ("second@example.org", BounceType.HARD, "5.7.1"),  # code from Diagnostic-Code
    ]
    assert len({b.fingerprint for b in found}) == 2


@pytest.mark.parametrize("name", ["autoreply.eml", "normal.eml", "malformed.eml",
                                  "dsn_delivered.eml"])
def test_auto_replies_ordinary_mail_and_garbage_are_not_bounces(name: str) -> None:
    assert parse(corpus(name)) == []


def test_fingerprint_is_stable_and_tells_bounces_apart() -> None:
    a = parse(corpus("dsn_511.eml"))[0].fingerprint
    assert parse(corpus("dsn_511.eml"))[0].fingerprint == a
    assert parse(corpus("dsn_522_headers_only.eml"))[0].fingerprint != a
    # Without a Message-ID of its own, a bounce is known by a hash of its bytes.
    raw = corpus("dsn_511.eml").replace(b"Message-Id: <20261201100005.4Q8x1@mx.example.org>\n",
                                        b"")
    other = parse(raw)[0].fingerprint
    assert other.startswith("sha256:") and other != a


def test_status_takes_precedence_over_action_and_bare_codes_count() -> None:
    raw = corpus("dsn_511.eml").replace(b"Action: failed\nStatus: 5.1.1",
                                        b"Action: failed\nStatus: 4.7.0")
    assert parse(raw)[0].type is BounceType.SOFT
    bare = corpus("dsn_511.eml").replace(b"Status: 5.1.1", b"Status: 550")
    [found] = parse(bare)
    assert (found.type, found.code, correlate.digits(found.code)) == (
        BounceType.HARD, "550", "550")


def test_heuristic_bounce_without_a_code_is_soft() -> None:
    raw = (b"From: MAILER-DAEMON@mx.example.org\nTo: bounces@proxy.test\n"
           b"Subject: failure notice\nMessage-ID: <q1@mx>\n\n"
           b"Hi. This is the qmail-send program.\n<gone@example.org>:\n"
           b"Sorry, I couldn't find any host named example.org.\n")
    [found] = parse(raw)
    assert (found.recipient, found.type, found.code) == ("gone@example.org",
                                                         BounceType.SOFT, None)


def ref(pk: str, tenant: str, from_addr: str, *recipients: str) -> MessageRef:
    return MessageRef(seq=1, pk=pk, tenant_id=tenant, client_id="inv-1", account_id="main",
                      status="sent", from_addr=from_addr, recipients=recipients)


def test_client_id_rule_keeps_only_an_unambiguous_match() -> None:
    bounce = ParsedBounce(recipient="x@example.org", type=BounceType.HARD, code="5.1.1",
                          reason=None, fingerprint="f", client_id="inv-1",
                          original_from="Billing <Billing@acme.test>")
    a = ref("p1", "acme", "billing@acme.test", "x@example.org")
    b = ref("p2", "beta", "news@beta.test", "x@example.org")
    assert correlate.choose([a, b], bounce) == a
    c = ref("p3", "gamma", "billing@acme.test", "y@example.org")
    assert correlate.choose([a, c], bounce) == a  # then by Final-Recipient
    twin = ref("p4", "delta", "billing@acme.test", "x@example.org")
    assert correlate.choose([a, twin], bounce) is None  # ambiguous: unmatched


def test_only_our_message_id_form_yields_a_pk() -> None:
    assert correlate.pk_of_message_id(f"<{PK}@acme.test>") == PK
    assert correlate.pk_of_message_id("<client-chosen@acme.test>") is None
    assert correlate.pk_of_message_id(None) is None
    assert correlate.valid_pk(" " + PK.upper()) == PK
    assert correlate.valid_pk("'; DROP TABLE messages") is None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    for found in parse(raw):
        assert found.type in (BounceType.HARD, BounceType.SOFT)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2500))
def test_parse_never_raises_on_damaged_bounces(noise: bytes, at: int) -> None:
    raw = corpus("dsn_511.eml")
    parse(raw[:at] + noise + raw[at:])


@pytest.mark.parametrize(("headers", "event"), [
    ("X-Ricevuta: presa-in-carico\nSubject: PRESA IN CARICO: x", "pec_acceptance"),
    ("Subject: ACCETTAZIONE: x", "pec_acceptance"),
    ("Subject: CONSEGNA: x", "pec_delivery"),
    ("Subject: AVVISO DI MANCATA CONSEGNA: x", "pec_error"),
    ("Subject: MANCATA CONSEGNA: x", "pec_error"),
    ("Subject: AVVISO DI NON ACCETTAZIONE: x\nX-Ricevuta: non-accettazione", "pec_error"),
    ("Subject: Re: CONSEGNA: x", None),
    ("Subject: hello", None),
])
def test_pec_receipt_type_from_x_ricevuta_else_the_subject(headers: str, event: str | None
                                                           ) -> None:
    from mailproxy.bounces.pec import parse_receipt

    found = parse_receipt(f"{headers}\nX-Errore: casella piena\n\nbody\n".encode())
    assert (None if found is None else found.event_type) == event
    if found is not None and event == "pec_error":
        assert found.details == "casella piena"


def test_sent_message_id_is_the_client_one_in_the_form_compose_sends() -> None:
    sent_message_id, message_id_key = correlate.sent_message_id, correlate.message_id_key
    assert sent_message_id({"message_id": " a@b.test "}, None) == "<a@b.test>"
    assert sent_message_id({"message_id": "x@b", "headers": {"MESSAGE-ID": "<h@b>"}},
                           None) == "<h@b>"
    assert sent_message_id({"headers": {"Subject": "s"}}, None) is None
    assert sent_message_id({"message_id": "x@b"}, b"Subject: s\r\n\r\nbody") is None
    assert sent_message_id({}, b"Message-Id: <r@b>\r\n\r\n") == "<r@b>"
    folded = b"X-Message-ID: <no@b>\nMessage-ID:\n\t<f@b>\n\nMessage-ID: <body@b>\n"
    assert sent_message_id({}, folded) == "<f@b>"  # the header field, unfolded
    assert sent_message_id({}, b"Subject: s\r\n\r\nMessage-ID: <body@b>\r\n") is None
    assert message_id_key("<" + "a" * 1000 + "@b>") is None  # too long to index
    assert message_id_key("<>") is None and message_id_key(5) is None
