"""Address list parsing and syntax checks (contract §4.2, §4.5)."""

from __future__ import annotations

import pytest

from mailproxy.addresses import (
    check_address,
    needs_smtputf8,
    parse_address_list,
    split_address,
)

# --- parse_address_list -------------------------------------------------------------------


def test_string_list_keeps_quoted_comma_in_display_name() -> None:
    value = '"Doe, J" <j@example.org>, b@x.org'
    assert parse_address_list(value) == ['"Doe, J" <j@example.org>', "b@x.org"]


def test_string_list_drops_empty_entries_and_strips() -> None:
    assert parse_address_list(" a@x.org ,, Carol <c@x.org>, ") == ["a@x.org", "Carol <c@x.org>"]


def test_string_list_comma_inside_comment_and_escaped_quote() -> None:
    value = 'a@x.org (Doe, J), "A \\"q, r\\"" <b@x.org>, c@x.org'
    assert parse_address_list(value) == [
        "a@x.org (Doe, J)",
        '"A \\"q, r\\"" <b@x.org>',
        "c@x.org",
    ]


def test_unquoted_comma_splits_display_name() -> None:
    # Without quotes the comma is a separator, as in RFC 5322; the halves then fail the check.
    assert parse_address_list("Doe, J <j@example.org>") == ["Doe", "J <j@example.org>"]


def test_list_is_taken_item_by_item() -> None:
    value = ["Doe, J <j@example.org>", "  ", "b@x.org "]
    assert parse_address_list(value) == ["Doe, J <j@example.org>", "b@x.org"]


@pytest.mark.parametrize(
    "value",
    [
        "a@x.org\r\nBcc: evil@x.org",
        "a@x.org\nb@x.org",
        '"Name\r" <a@x.org>',
        ["a@x.org", "b@x.org\r"],
        ["Evil\n <a@x.org>"],
    ],
)
def test_crlf_anywhere_is_rejected(value: str | list[str]) -> None:
    with pytest.raises(ValueError, match="CR/LF"):
        parse_address_list(value)


def test_non_string_item_is_rejected() -> None:
    with pytest.raises(ValueError):
        parse_address_list(["a@x.org", 42])  # type: ignore[list-item]


def test_unterminated_quote_is_rejected() -> None:
    with pytest.raises(ValueError, match="unterminated"):
        parse_address_list('"Doe, J <j@example.org>, b@x.org')


# --- split_address ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("a@x.org", ("", "a@x.org")),
        ("<a@x.org>", ("", "a@x.org")),
        ("Acme Billing <billing@acme.test>", ("Acme Billing", "billing@acme.test")),
        ('"Doe, J" <j@example.org>', ("Doe, J", "j@example.org")),
        ('"A \\"B\\"" <a@x.org>', ('A "B"', "a@x.org")),
        ("  Zoë  < z@x.org > ", ("Zoë", "z@x.org")),
        ("a@x.org (Old Style)", ("Old Style", "a@x.org")),
        ('"odd>name" <"q>x"@x.org>', ("odd>name", '"q>x"@x.org')),
    ],
)
def test_split_address(item: str, expected: tuple[str, str]) -> None:
    assert split_address(item) == expected


@pytest.mark.parametrize(
    "item",
    ["", "   ", "Name <a@x.org", "Name a@x.org>", "<>", "<a@x.org> trailing", "<<a@x.org>>"],
)
def test_split_address_rejects_malformed(item: str) -> None:
    with pytest.raises(ValueError):
        split_address(item)


@pytest.mark.parametrize(
    "item", ["Name <a@x.org>\r\nBcc: b@x.org", "Na\nme <a@x.org>", "a@x.org\r"]
)
def test_split_address_rejects_crlf(item: str) -> None:
    with pytest.raises(ValueError, match="CR/LF"):
        split_address(item)


# --- check_address ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("o'brien+tag@mail.example.com", "o'brien+tag@mail.example.com"),
        ("a.b-c_d@x-y.example", "a.b-c_d@x-y.example"),
        ('"john doe"@example.org', '"john doe"@example.org'),
        ('"a@b\\"c"@example.org', '"a@b\\"c"@example.org'),
        ("root@localhost", "root@localhost"),
        ("Alice@Example.COM", "Alice@example.com"),
        ("user@[192.0.2.1]", "user@[192.0.2.1]"),
        ("user@[ipv6:2001:db8::1]", "user@[IPv6:2001:db8::1]"),
        ("user@bücher.de", "user@xn--bcher-kva.de"),
        ("user@BÜcher.DE", "user@xn--bcher-kva.de"),
        ("user@例え.テスト", "user@xn--r8jz45g.xn--zckzah"),
        ("user@例え。テスト", "user@xn--r8jz45g.xn--zckzah"),
    ],
)
def test_valid_addresses_are_normalised(addr: str, expected: str) -> None:
    assert check_address(addr) == expected


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("alice.example.com", "missing @"),
        ("@example.com", "empty local part"),
        ("alice@", "empty domain"),
        (".alice@example.com", "invalid local part"),
        ("alice.@example.com", "invalid local part"),
        ("al..ice@example.com", "invalid local part"),
        ("al ice@example.com", "invalid local part"),
        ("a@b@example.com", "invalid local part"),
        ('"unterminated@example.com', "invalid local part"),
        ("alice@-example.com", "invalid domain"),
        ("alice@example-.com", "invalid domain"),
        ("alice@exa_mple.com", "invalid domain"),
        ("alice@example..com", "invalid domain"),
        ("alice@example.com.", "invalid domain"),
        ("alice@" + "a" * 64 + ".com", "invalid domain"),
        ("alice@exa mple.com", "invalid domain"),
        ("alice@[300.1.1.1]", "invalid IP literal"),
        ("alice@[1.2.3]", "invalid IP literal"),
        ("alice@[IPv6:zz::1]", "invalid IP literal"),
        ("alice@bü..de", "invalid internationalised domain"),
        ("jürgen@example.de", "non-ASCII local part"),
        ("alice@example.com\r\n", "CR/LF"),
        ("alice@exam\nple.com", "CR/LF"),
    ],
)
def test_invalid_addresses_are_rejected(addr: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_address(addr)


def test_label_of_63_characters_is_accepted() -> None:
    addr = "alice@" + "a" * 63 + ".com"
    assert check_address(addr) == addr


def test_total_length_limit_is_254() -> None:
    domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 40])  # 232 characters
    fits = "x" * (254 - 1 - len(domain)) + "@" + domain
    assert len(fits) == 254
    assert check_address(fits) == fits
    with pytest.raises(ValueError, match="too long"):
        check_address("x" + fits)


def test_length_limit_applies_after_idna_conversion() -> None:
    # 249 characters as written, 256 once the domain is in IDNA form.
    addr = "x" * 235 + "@bücher.de.com"
    assert len(addr) == 249
    with pytest.raises(ValueError, match="too long"):
        check_address(addr)


def test_utf8_local_part_needs_the_flag() -> None:
    assert check_address("jürgen@bücher.de", allow_utf8_local=True) == "jürgen@xn--bcher-kva.de"
    assert check_address('"jü rgen"@x.de', allow_utf8_local=True) == '"jü rgen"@x.de'
    with pytest.raises(ValueError, match="non-ASCII local part"):
        check_address("jürgen@x.de")


def test_utf8_flag_does_not_relax_other_rules() -> None:
    with pytest.raises(ValueError, match="invalid local part"):
        check_address("jü..rgen@x.de", allow_utf8_local=True)
    with pytest.raises(ValueError, match="invalid local part"):
        check_address("jü\u0085rgen@x.de", allow_utf8_local=True)
    with pytest.raises(ValueError, match="invalid domain"):
        check_address("jürgen@-x.de", allow_utf8_local=True)


def test_needs_smtputf8() -> None:
    assert needs_smtputf8("jürgen@x.de")
    assert not needs_smtputf8("user@xn--bcher-kva.de")
    assert not needs_smtputf8("user@example.com")
