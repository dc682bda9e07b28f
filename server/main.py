"""`python -m server.main`: the gRPC server process."""

import asyncio
import sys

from server import logs
from server.config import ConfigError, Settings


def main() -> None:
    try:
        settings = Settings.from_env()
        if not settings.postgres_url:
            raise ConfigError("POSTGRES_URL is required (or use `make run`, which starts a private PostgreSQL)")
    except ConfigError as exc:
        sys.exit(f"vlm-node-server: {exc}")
    logs.setup(settings.log_level)
    from server.grpc_server import serve

    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
