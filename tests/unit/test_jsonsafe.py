"""jsonsafe: the nesting limit is exact whatever else the body holds; text checks and scrub."""

from __future__ import annotations

import json

import pytest

from mailproxy import jsonsafe

LIMIT = jsonsafe.MAX_DEPTH


def _nested(depth: int) -> bytes:
    """`depth` nested arrays beside enough other brackets to defeat the count shortcut."""
    return b'{"pad":[' + b"[]," * 100 + b"[]], \"deep\":" + b"[" * (depth - 1) \
        + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("depth", [2, LIMIT - 1, LIMIT])
def test_up_to_the_limit_is_accepted(depth: int) -> None:
    assert isinstance(jsonsafe.load(_nested(depth)), dict)


@pytest.mark.parametrize("depth", [LIMIT + 1, 500, 50_000])
def test_beyond_the_limit_is_too_deep(depth: int) -> None:
    with pytest.raises(jsonsafe.TooDeep):
        jsonsafe.load(_nested(depth))


def test_invalid_json_stays_a_value_error() -> None:
    with pytest.raises(ValueError) as caught:
        jsonsafe.load(b'{"a": ')
    assert not isinstance(caught.value, jsonsafe.TooDeep)


def _reference(raw: bytes) -> object:
    """What the standard library makes of a body, as jsonsafe.load did before orjson."""
    def refuse(name: str) -> object:
        raise ValueError(name)

    def finite(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise ValueError(text)
        return value

    try:
        return ("value", json.loads(raw, parse_constant=refuse, parse_float=finite))
    except ValueError as exc:
        return ("error", type(exc), str(exc) if isinstance(exc, json.JSONDecodeError) else "")


_BODIES = [
    b'{"messages": [{"id": "a", "to": ["x@example.com"], "priority": 2}]}',
    b'{"deferred_ts": 123456789012345678901234567890}',  # beyond 64 bits: a float to orjson
    b'[-9223372036854775809, 18446744073709551615]',
    b'{"deferred_ts": 1767225600.5, "n": [1.0, 1e5, -0.0]}',
    b'{"a": "\\ud800", "b": "\\u0000", "c": "\\ud83d\\ude00"}',
    b'{"a": "\xed\xa0\x80"}',  # a surrogate in UTF-8 bytes: orjson refuses it
    b'\xef\xbb\xbf{"bom": true}',
    b'\xff\xfe[\x001\x00]\x00',  # UTF-16
    b'{"a": 1, "a": 2}', b'"text"', b"3", b"1.5", b"null", b" \t[1]\n",
    b'{"a": ', b"[1,]", b"[01]", b"NaN", b"[1e400]", b'"a\tb"', b"", b"   ", b'{"a":"\xff"}',
]


@pytest.mark.parametrize("raw", _BODIES)
def test_a_body_reads_as_the_standard_library_reads_it(raw: bytes) -> None:
    """orjson is only a faster way to the same value: the same value, or the same error."""
    expected = _reference(raw)
    try:
        got: object = ("value", jsonsafe.load(raw))
    except ValueError as exc:
        got = ("error", type(exc), str(exc) if isinstance(exc, json.JSONDecodeError) else "")
    assert got == expected
    if expected[0] == "value":  # types too: 1 is not 1.0, an exact int stays one
        assert repr(got) == repr(expected)


def test_unstorable_text_is_found_with_its_path() -> None:
    value = json.loads(json.dumps({"messages": [{"a": "ok"}, {"b": ["ok", "x\ud800"]}]}))
    assert jsonsafe.unstorable_path(value) == ("messages", 1, "b", 1)
    assert jsonsafe.describe(("messages", 1, "b", 1)) == "messages[1].b[1]"
    assert jsonsafe.unstorable_path({"k\x00": 1}) == ("k\ufffd",)
    assert jsonsafe.unstorable_path({"fine": "caf\u00e9 \U0001f600"}) is None


def test_the_pre_check_sees_every_unstorable_escape_and_only_those() -> None:
    assert jsonsafe.may_hold_unstorable(json.dumps("\ud800").encode())
    assert jsonsafe.may_hold_unstorable(json.dumps("a\x00").encode())
    assert not jsonsafe.may_hold_unstorable(json.dumps("caf\u00e9").encode())


def test_scrub_makes_every_string_storable() -> None:
    scrubbed = jsonsafe.scrub({"\udc00": ["a\ud800", "b\x00", 3]})
    assert jsonsafe.unstorable_path(scrubbed) is None
    json.dumps(scrubbed, ensure_ascii=False).encode("utf-8")
