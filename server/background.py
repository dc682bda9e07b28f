"""A duty that runs in the background of a process for as long as it lives
(the job watcher, the health monitor, the job rescuer)."""

import asyncio


class BackgroundDuty:
    name = "duty"

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
