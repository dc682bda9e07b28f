"""A TCP proxy that can be cut, to take a peer (PostgreSQL) away from the
node as a network partition or a dead host would, and give it back.

`cut()` closes the listening port (new connections are refused) and resets
every connection through the proxy; `restore()` listens on the same port
again. In a test it runs in the test's event loop; as a process

    python -m devpeers.tcp_proxy --port 6543 --upstream 127.0.0.1:5432

it is cut by SIGUSR1 and restored by SIGUSR2 (a benchmark's control), and
stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


class CuttableProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self._server: asyncio.Server | None = None
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def cut_off(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._pipe(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pipe = (writer, up_writer)
        self._pipes.add(pipe)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:  # one side gone: both go, as a TCP connection would
                for w in pipe:
                    w.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._pipes.discard(pipe)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for pipe in list(self._pipes):
            for w in pipe:
                w.transport.abort()
        await asyncio.sleep(0)

    async def restore(self) -> None:
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        if self._tasks:  # the pipes end once their connections are reset
            await asyncio.wait(set(self._tasks), timeout=5)


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = CuttableProxy(host or "127.0.0.1", int(port), port=args.port)
    await proxy.start()
    print(f"tcp proxy on 127.0.0.1:{proxy.port} to {args.upstream}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(proxy.cut()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(proxy.restore()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A TCP proxy that SIGUSR1 cuts and SIGUSR2 restores.")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (127.0.0.1)")
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
