"""PEC receipts (§8.3): the receipt type and its correlation keys from the headers. Pure."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from email.header import decode_header, make_header
from email.message import Message

from mailproxy.bounces.model import PecReceipt
from mailproxy.jsonsafe import scrub

MAX_DETAILS = 500
RECEIPT_TYPES = {
    "accettazione": "pec_acceptance",
    "presa-in-carico": "pec_acceptance",
    "avvenuta-consegna": "pec_delivery",
    "mancata-consegna": "pec_error",
    "non-accettazione": "pec_error",
}
# Subject prefixes of the receipts, for providers that leave out X-Ricevuta.
_SUBJECTS = (
    ("non accettazione", "non-accettazione"),
    ("accettazione", "accettazione"),
    ("presa in carico", "presa-in-carico"),
    ("avvenuta consegna", "avvenuta-consegna"),
    ("consegna", "avvenuta-consegna"),
    ("mancata consegna", "mancata-consegna"),
    ("avviso di mancata consegna", "mancata-consegna"),
)


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    try:
        text = str(make_header(decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        text = str(value)
    text = " ".join(text.split())
    return text or None


def receipt_kind(msg: Message) -> str | None:
    """X-Ricevuta, else the subject prefix: the receipt name, or None (not a receipt)."""
    named = (_header(msg, "X-Ricevuta") or "").lower()
    if named in RECEIPT_TYPES:
        return named
    subject = (_header(msg, "Subject") or "").lower()
    # Longest prefixes first, so "mancata consegna" is not read as "consegna".
    for prefix, kind in sorted(_SUBJECTS, key=lambda p: -len(p[0])):
        if re.match(rf"^\s*{re.escape(prefix)}\s*:", subject):
            return kind
    return None


def parse_receipt(raw: bytes) -> PecReceipt | None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    kind = receipt_kind(msg)
    if kind is None:
        return None
    event_type = RECEIPT_TYPES[kind]
    details = _header(msg, "X-Errore") if event_type == "pec_error" else None
    details = (details or _header(msg, "Subject") or kind)[:MAX_DETAILS]
    own = _header(msg, "Message-ID")
    base = "mid:" + own.lower() if own else "sha256:" + hashlib.sha256(raw).hexdigest()
    # Text from outside, stored as is: never a NUL or lone surrogate the database refuses.
    return PecReceipt(event_type=event_type, details=scrub(details), fingerprint=scrub(base),
                      message_id=scrub(_header(msg, "X-Riferimento-Message-ID")),
                      client_id=scrub(_header(msg, "X-Genro-Mail-ID")))
