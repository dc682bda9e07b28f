"""Streamed text for a reader that may fall behind.

A model can produce tokens faster than a busy node sends them on: each token
as its own message then costs a write on every hop (gRPC, the bridge, the
WebSocket) and the backlog only grows. `coalesced` hands the reader each
chunk as it comes while it keeps up, and everything that arrived while it was
busy as one chunk when it does not. Nothing waits to be merged: a chunk is
never held back for one that might follow.
"""

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator

from server.engines import Chunk


async def coalesced(source: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    """The chunks of `source`, the ones that queued up while the reader was
    away joined into one: the last of them (its time, its done and counts)
    with all their text. An error of `source` comes after the text before it.
    Closing this closes `source` at once."""
    pending: list[Chunk] = []
    arrived = asyncio.Event()
    ended = False
    error: Exception | None = None

    async def pull() -> None:
        nonlocal ended, error
        try:
            async with contextlib.aclosing(source):
                async for item in source:
                    pending.append(item)
                    arrived.set()
        except Exception as exc:  # handed to the reader, after the text before it
            error = exc
        finally:
            ended = True
            arrived.set()

    puller = asyncio.create_task(pull())
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            if pending:
                joined = dataclasses.replace(pending[-1], text="".join(chunk.text for chunk in pending))
                pending.clear()
                yield joined
            if ended and not pending:
                if error is not None:
                    raise error
                return
    finally:
        puller.cancel()
        await asyncio.wait({puller})  # the source is closed before we return
