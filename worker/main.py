"""`python -m worker.main`: a worker process."""

import asyncio
import signal

from server import logs
from server.config import Settings, load


async def _run(settings: Settings) -> None:
    from server import images
    from server.ops_http import OpsServer
    from server.peers import check_engines, domain_client, engines
    from server.store import JobStore
    from worker.pipelines import Peers
    from worker.runner import Worker

    images.set_decode_slots(settings.image_decode_slots)
    store = JobStore(settings.postgres_url, max_size=4)
    await store.open()
    peers = Peers(settings=settings, engines=engines(settings), domain=domain_client(settings))
    try:
        await check_engines(peers.engines, "vlm-node-worker")
        worker = Worker(store, peers)

        async def health() -> dict:
            await store.ping()
            return {"worker": worker.id, "jobs_running": len(worker.running)}

        ops = OpsServer(settings.http_host, settings.worker_health_port, health)
        ops.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        try:
            await worker.run()
        finally:
            await ops.stop()
    finally:
        await peers.engines.aclose()
        if peers.domain is not None:
            await peers.domain.aclose()
        await store.close()


def main() -> None:
    settings = load("vlm-node-worker", need_postgres=True)
    logs.setup(settings.log_level)
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
