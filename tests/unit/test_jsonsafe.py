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
