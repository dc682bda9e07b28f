"""Streamed text for a reader that may fall behind: each chunk as it comes to
a reader that keeps up, the backlog as one chunk to one that does not."""

import asyncio
import contextlib
import dataclasses

import pytest

from server.coalesce import coalesced
from server.engine import Chunk


class Source:
    """Yields the chunks it is fed; records whether it was closed."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def feed(self, *items):
        for item in items:
            self.queue.put_nowait(item)

    async def chunks(self):
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed = True


async def test_a_reader_that_keeps_up_gets_each_chunk():
    source = Source()
    async with contextlib.aclosing(coalesced(source.chunks())) as chunks:
        for item in [Chunk("a", False), Chunk(" red", False), Chunk(" image", False)]:
            source.feed(item)
            assert await anext(chunks) == item
        source.feed(Chunk("", True), None)
        assert await anext(chunks) == Chunk("", True)
        with pytest.raises(StopAsyncIteration):
            await anext(chunks)
    assert source.closed


async def test_a_reader_that_falls_behind_gets_the_backlog_at_once():
    source = Source()
    async with contextlib.aclosing(coalesced(source.chunks())) as chunks:
        source.feed(Chunk("a", False))
        assert await anext(chunks) == Chunk("a", False)
        source.feed(Chunk(" red", False), Chunk(" image", False))
        await asyncio.sleep(0.01)  # the reader is busy sending "a"
        assert await anext(chunks) == Chunk(" red image", False)
        last = Chunk("", True, created_at="2026-12-02T10:00:01Z", done_reason="stop", metrics={"eval_count": 5})
        source.feed(Chunk(",", False, created_at="2026-12-02T10:00:00Z"), Chunk(" mostly", False), last, None)
        await asyncio.sleep(0.01)
        # The last chunk's time, reason and counts, with all the text.
        assert [c async for c in chunks] == [dataclasses.replace(last, text=", mostly")]


async def test_an_error_comes_after_the_text_before_it():
    source = Source()
    source.feed(Chunk("a", False), Chunk(" red", False), ConnectionError("Ollama went away"))
    chunks = coalesced(source.chunks())
    await asyncio.sleep(0.01)
    assert await anext(chunks) == Chunk("a red", False)
    with pytest.raises(ConnectionError, match="went away"):
        await anext(chunks)
    assert source.closed


async def test_closing_early_closes_the_source_at_once():
    source = Source()
    chunks = coalesced(source.chunks())
    source.feed(Chunk("a", False))
    assert await anext(chunks) == Chunk("a", False)
    await chunks.aclose()  # the client went away mid-answer
    assert source.closed


async def test_cancelling_the_reader_closes_the_source():
    source = Source()

    async def read():
        async for _ in coalesced(source.chunks()):
            pass

    reader = asyncio.create_task(read())
    source.feed(Chunk("a", False))
    await asyncio.sleep(0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert source.closed
