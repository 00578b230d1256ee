"""DATA content read in blocks (mailproxy.ingress.smtp_data) from a real StreamReader with
aiosmtpd's stream limit, fed the way a socket would: in pieces of any size."""

from __future__ import annotations

import asyncio
import itertools
import tracemalloc
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from mailproxy.ingress.smtp_data import LINE_TOO_LONG, TOO_MUCH_DATA, DataRead, read_data

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit, also its StreamReader limit
NEXT = b"MAIL FROM:<next@acme.test>\r\n"


def stuffed(lines: list[bytes]) -> bytes:
    """The wire form of content lines: a dot added to each line that starts with one."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


async def read(wire: bytes, cuts: Sequence[int] = (), size_limit: int | None = None
               ) -> tuple[DataRead, bytes]:
    """What read_data returns for `wire` fed in pieces cut at `cuts`, and what it left in
    the stream for the session (fed at once after the content)."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(wire)), len(wire)]

    async def feed() -> None:
        for start, end in itertools.pairwise(bounds):
            reader.feed_data(wire[start:end])
            await asyncio.sleep(0)
        reader.feed_data(NEXT)
        reader.feed_eof()

    feeding = asyncio.create_task(feed())
    result = await read_data(reader, size_limit, LINE_LIMIT)
    await feeding
    return result, await reader.read()


def run(wire: bytes, cuts: Sequence[int] = (), size_limit: int | None = None
        ) -> tuple[DataRead, bytes]:
    return asyncio.run(read(wire, cuts, size_limit))


def test_content_ends_at_the_lone_dot_and_the_next_command_stays_in_the_stream() -> None:
    got, rest = run(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert got == DataRead(b"Subject: x\r\n\r\nbody\r\n")
    assert rest == NEXT


def test_an_empty_message_is_the_lone_dot_alone() -> None:
    assert run(b".\r\n") == (DataRead(b""), NEXT)


def test_leading_dots_lose_one_dot_and_a_line_ending_in_a_dot_is_content() -> None:
    lines = [b".starts", b"..two", b"ends with a dot.", b".", b"mid . dot", b"bare\n.lf"]
    got, rest = run(stuffed([b"Subject: d", b"", *lines]))
    assert got.content == b"Subject: d\r\n\r\n" + b"".join(line + b"\r\n" for line in lines)
    assert rest == NEXT


def test_a_line_over_the_limit_is_500_and_the_stream_stays_in_step() -> None:
    wire = stuffed([b"Subject: long", b"", b"x" * 1000, b"after"])
    assert run(wire) == (DataRead(b"", LINE_TOO_LONG), NEXT)
    assert run(stuffed([b"y" * 999]))[0].content == b"y" * 999 + b"\r\n"  # 1001 with CRLF


def test_an_endless_line_is_dropped_as_it_arrives_without_a_size_limit() -> None:
    """Memory stays bounded by what arrives at a time, not by the line (aiosmtpd's rule)."""
    wire = b"Subject: x\r\n\r\n" + b"w" * 3_000_000 + b"\r\nend\r\n.\r\n"
    tracemalloc.start()
    try:
        got = run(wire, list(range(0, len(wire), 16_384)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == (DataRead(b"", LINE_TOO_LONG), NEXT)
    assert peak < 1_000_000  # the wire itself is held by the test, outside the trace


def test_content_over_the_size_limit_is_552_and_read_to_its_end() -> None:
    wire = stuffed([b"z" * 900] * 30)
    assert run(wire, list(range(0, len(wire), 700)), size_limit=10_000) == (
        DataRead(b"", TOO_MUCH_DATA), NEXT)
    assert run(wire, size_limit=len(wire) - 3)[0].refusal is None  # exactly at the limit


# Any bytes but a CRLF (a CR is always followed by a space): bare CRs and LFs stay.
_LINE = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"\r "))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.one_of(_LINE, st.sampled_from([b".", b"..", b".x", b"a.", b"", b"a\n.b"])),
                      max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=12))
def test_any_content_in_any_pieces_reads_back_exactly(lines: list[bytes], cuts: list[int]
                                                        ) -> None:
    got, rest = run(stuffed(lines), cuts)
    assert got == DataRead(b"".join(line + b"\r\n" for line in lines))
    assert rest == NEXT
