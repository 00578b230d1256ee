"""Process memory tuning of `serve` (mailproxy.heap)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from mailproxy import heap


@pytest.fixture
def collector_state() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_state")
def test_start_up_objects_leave_the_collectors_view() -> None:
    gc.unfreeze()
    heap.tune_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == heap.GC_YOUNG_THRESHOLD


async def test_the_heap_is_trimmed_once_after_a_burst_of_large_requests() -> None:
    trims: list[float] = []
    loop = asyncio.get_running_loop()
    trimmer = heap.HeapTrimmer(quiet=0.05, trim=lambda: trims.append(loop.time()))
    began = loop.time()

    for _ in range(5):  # a burst: each large request moves the trim later
        trimmer.large_request()
        last = loop.time()
        await asyncio.sleep(0.02)
    assert trims == []
    await asyncio.sleep(0.1)

    assert len(trims) == 1 and trims[0] >= last + 0.045 > began + 0.1
    trimmer.large_request()
    trimmer.close()  # shutting down: nothing runs after
    await asyncio.sleep(0.1)
    assert len(trims) == 1


def test_malloc_trim_is_found_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    trim = heap._malloc_trim()
    assert trim is not None
    trim()  # returns whether memory was released; must not fail


async def test_serve_trims_after_a_large_request_body_not_after_small_ones(
    aiohttp_client: Any,
) -> None:
    from aiohttp import web

    from mailproxy.app import trim_after_large_bodies

    trims: list[int] = []
    trimmer = heap.HeapTrimmer(quiet=0.05, trim=lambda: trims.append(1))

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    app = web.Application(middlewares=[trim_after_large_bodies(trimmer)],
                          client_max_size=4 * heap.LARGE_BODY)
    app.router.add_post("/", echo)
    client = await aiohttp_client(app)

    resp = await client.post("/", data=b"x" * 1000)
    assert (await resp.json())["size"] == 1000
    await asyncio.sleep(0.1)
    assert trims == []
    resp = await client.post("/", data=b"x" * (heap.LARGE_BODY + 1))
    assert resp.status == 200
    await asyncio.sleep(0.1)
    assert trims == [1]
