"""A duty that runs in the background of a process for as long as it lives
(the job watcher, the health monitor, the job rescuer)."""

import asyncio
import logging

log = logging.getLogger(__name__)


class BackgroundDuty:
    name = "duty"

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        # On Python 3.11 a library's asyncio.wait_for can swallow a cancel
        # that lands as its inner call completes; cancel until the task ends.
        while self._task and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1)
        if self._task and not self._task.cancelled() and (exc := self._task.exception()):
            log.error("%s had stopped on an error: %r", self.name, exc)
