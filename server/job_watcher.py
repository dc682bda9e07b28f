"""Fans the store's status notifications out to WatchJob streams: one LISTEN
connection per server process, however many watchers."""

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from server.background import BackgroundDuty
from server.store import JOB_EVENTS_CHANNEL, JobStore

log = logging.getLogger(__name__)


class JobWatcher(BackgroundDuty):
    name = "job-watcher"

    def __init__(self, store: JobStore):
        super().__init__()
        self.store = store
        self._subscribers: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self.listening = asyncio.Event()  # set once notifications reach us

    async def run(self) -> None:
        async for payload in self.store.listen(JOB_EVENTS_CHANNEL):
            if not payload:  # (re)connected: changes may have been missed
                self.listening.set()
                for events in self._subscribers.values():
                    for event in events:
                        event.set()
                continue
            job_id, _, _status = payload.partition(" ")
            for event in self._subscribers.get(uuid.UUID(job_id), ()):
                event.set()

    @property
    def watching(self) -> int:
        """How many watches are open."""
        return sum(len(events) for events in self._subscribers.values())

    @contextmanager
    def subscribe(self, job_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever the job may have changed."""
        event = asyncio.Event()
        self._subscribers[job_id].add(event)
        try:
            yield event
        finally:
            self._subscribers[job_id].discard(event)
            if not self._subscribers[job_id]:
                del self._subscribers[job_id]
