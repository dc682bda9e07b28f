"""`python -m server.main`: the gRPC server process."""

import asyncio

from server import logs
from server.config import load


def main() -> None:
    settings = load("vlm-node-server", need_postgres=True)
    logs.setup(settings.log_level)
    from server.grpc_server import serve

    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
