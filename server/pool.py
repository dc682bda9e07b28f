"""Many model servers for one role, as one engine: VLM_BASE_URL or
LLM_BASE_URL listing several (replicas of one model with no balancer of
their own, or behind one that balances connections, not slots).

- Each request goes to the server with the fewest requests in flight for its
  slots (ties in turn): a full server queues a request with nothing written
  back (server/engine.py, server/openai_engine.py), so it is the last resort.
- A server that fails as a server (unreachable, silent, 5xx, not serving the
  model) is taken out: requests go to the others, and it is probed (its
  `ready`) at growing intervals until it answers, then put back. The request
  that failed moves to another server once, unless part of its answer has
  already reached the caller. A refusal of the request itself (too long, an
  image the model cannot take) would be the same anywhere, and stays.
- With every server out, requests still go to them: the failure a caller
  sees is then a server's own, and the first that answers is back at once.
- `pinned()` is a realtime stream's view: it keeps to one server while that
  server is in (its cache of the stream's prompt stays warm), and moves when
  it is taken out.

`Engines` holds the node's two roles. `/ready` and the metrics show each
server (server/health_monitor.py, metrics.MODEL_SERVER_*).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from server import metrics
from server.engines import Chunk, Engine
from server.errors import NodeError, PeerRefused, PeerUnavailable
from server.logs import redact
from server.model_info import ModelInfo
from server.retry import RetryStrategy
from server.tokens import TokenEstimator

log = logging.getLogger(__name__)

PROBE = RetryStrategy(wait=1.0, max_wait=30.0)  # between probes of a server taken out
PROBE_TIMEOUT = 5.0  # seconds a probe may take
MOVES = 1  # other servers a failed request is tried on: a request that fails everywhere should not take out all

T = TypeVar("T")


def server_fault(exc: NodeError) -> bool:
    """Whether a failure says the server is unwell, not that the request was bad: a
    server that is down, silent or failing, or that lacks the model (a replica set up
    wrong). An answer that is not what the API promises is the model's, anywhere."""
    if isinstance(exc, PeerUnavailable):
        return exc.code != "bad_model_answer"
    return isinstance(exc, PeerRefused) and exc.code == "model_missing"


@dataclass(eq=False)
class Server:
    """One model server of a pool, as the pool sees it."""

    index: int
    url: str
    engine: Engine
    slots: int  # requests it answers at once
    in_flight: int = 0
    out: str = ""  # why it was taken out; empty while it is in
    probe: asyncio.Task | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """Its URL as logs and metrics show it: without a password."""
        return redact(self.url)

    @property
    def load(self) -> float:
        return self.in_flight / self.slots


@dataclass
class Pin:
    """The server a realtime stream keeps to; None until its first request."""

    server: Server | None = None


class Pool:
    """The servers of one role (or of both, when both roles are on the same Ollamas), as one Engine."""

    def __init__(self, role: str, servers: Sequence[tuple[str, Engine, int]],
                 tokens: dict[str, TokenEstimator], *, probe: RetryStrategy = PROBE):
        assert servers, "a pool has a server"
        self.role = role  # "VLM", "LLM", or "VLM+LLM"
        self.servers = [Server(i, url, engine, slots) for i, (url, engine, slots) in enumerate(servers)]
        self._tokens = tokens  # shared by every server's engine: one model, one tokenizer
        self.probe = probe
        self._turn = 0
        for server in self.servers:
            metrics.MODEL_SERVER_UP.labels(role, server.shown).set(1)
            metrics.MODEL_SERVER_IN_FLIGHT.labels(role, server.shown).set(0)

    @property
    def tokens(self) -> Mapping[str, TokenEstimator]:
        return self._tokens

    def pinned(self) -> "Pinned":
        return Pinned(self)

    # -- choosing ----------------------------------------------------------------------
    def _choose(self, tried: Sequence[Server], pin: Pin | None) -> Server | None:
        """The server for the next request: the pinned one while it is in, else the
        least loaded of those in (of all, when none is), skipping those `tried`."""
        untried = [s for s in self.servers if s not in tried]
        live = [s for s in untried if not s.out]
        if pin and pin.server in live:
            return pin.server
        candidates = live or untried
        if not candidates:
            return None
        n = len(self.servers)
        chosen = min(candidates, key=lambda s: (s.load, (s.index - self._turn) % n))
        self._turn += 1
        if pin:
            pin.server = chosen
        return chosen

    @contextlib.contextmanager
    def _busy(self, server: Server) -> Iterator[None]:
        server.in_flight += 1
        gauge = metrics.MODEL_SERVER_IN_FLIGHT.labels(self.role, server.shown)
        gauge.inc()
        try:
            yield
        finally:
            server.in_flight -= 1
            gauge.dec()

    async def _call(self, ask: Callable[[Engine], Awaitable[T]], pin: Pin | None = None, *, answer: bool = True) -> T:
        """`ask` of the chosen server; on a server's failure, of another. `answer`: it
        takes a slot, and counts in the server's load (a model's description does not)."""
        tried: list[Server] = []
        while True:
            server = self._choose(tried, pin)
            assert server is not None  # one is left untried (checked below)
            tried.append(server)
            try:
                with self._busy(server) if answer else contextlib.nullcontext():
                    result = await ask(server.engine)
                self._put_back(server)  # an answer is as good as a probe's
                return result
            except NodeError as exc:
                if not server_fault(exc):
                    raise
                self._take_out(server, exc)
                if len(tried) > MOVES or len(tried) == len(self.servers):
                    raise

    # -- in and out --------------------------------------------------------------------
    def _take_out(self, server: Server, exc: NodeError) -> None:
        if server.out:
            server.out = exc.message
            return
        server.out = exc.message
        if len(self.servers) > 1:  # one server's state is the role's, which the health monitor says
            log.warning("the %s's server at %s is taken out: %s; requests go to the others until it answers a probe",
                        self.role, server.shown, exc.message)
        metrics.MODEL_SERVER_UP.labels(self.role, server.shown).set(0)
        metrics.MODEL_SERVER_TAKEN_OUT.labels(self.role, server.shown).inc()
        if server.probe is None or server.probe.done():
            server.probe = asyncio.create_task(self._probe(server), name=f"probe {server.shown}")

    def _put_back(self, server: Server) -> None:
        if not server.out:
            return
        server.out = ""
        if len(self.servers) > 1:
            log.info("the %s's server at %s answers again and is back in", self.role, server.shown)
        metrics.MODEL_SERVER_UP.labels(self.role, server.shown).set(1)
        if server.probe is not None and server.probe is not asyncio.current_task():
            server.probe.cancel()

    async def _probe(self, server: Server) -> None:
        failures = 0
        while server.out:
            failures += 1
            await asyncio.sleep(self.probe.delay(failures))
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await server.engine.ready()
            except (NodeError, TimeoutError) as exc:
                server.out = getattr(exc, "message", "") or f"no answer to a probe within {PROBE_TIMEOUT:g} s"
                continue
            self._put_back(server)

    # -- the Engine's methods ------------------------------------------------------------
    async def describe(self, model: str, pin: Pin | None = None) -> ModelInfo:
        return await self._call(lambda e: e.describe(model), pin, answer=False)

    async def window(self, model: str) -> int:
        return await self._call(lambda e: e.window(model), answer=False)

    async def fits(self, model: str, prompt: str, images: int = 0, *, answer_tokens: int | None = None,
                   pin: Pin | None = None) -> bool:
        return await self._call(lambda e: e.fits(model, prompt, images, answer_tokens=answer_tokens), pin,
                                answer=False)

    async def caption(self, image_jpeg: bytes, prompt: str, *, options: dict | None = None) -> str:
        return await self._call(lambda e: e.caption(image_jpeg, prompt, options=options))

    async def complete_json(
        self, prompt: str, schema: dict, *, model: str | None = None, options: dict | None = None
    ) -> dict:
        return await self._call(lambda e: e.complete_json(prompt, schema, model=model, options=options))

    async def stream(
        self, prompt: str, images: Sequence[bytes] = (), *, model: str | None = None, options: dict | None = None,
        pin: Pin | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """As an engine's; a server failing before the first chunk, another server's."""
        tried: list[Server] = []
        while True:
            server = self._choose(tried, pin)
            assert server is not None
            tried.append(server)
            answered = False
            try:
                with self._busy(server):
                    async with contextlib.aclosing(
                        server.engine.stream(prompt, images, model=model, options=options)
                    ) as chunks:
                        async for chunk in chunks:
                            answered = True
                            yield chunk
                self._put_back(server)
                return
            except NodeError as exc:
                if not server_fault(exc):
                    raise
                self._take_out(server, exc)
                if answered or len(tried) > MOVES or len(tried) == len(self.servers):
                    raise

    async def ready(self) -> None:
        """Asks every server now, putting back those that answer and taking out those
        that do not; raises unless one answers."""
        failures = await self._each(lambda s: s.engine.ready())
        if len(failures) == len(self.servers):
            raise self._none(failures)

    async def check_models(self, pull: bool | None = None) -> list[str]:
        """Each server's models (pulled where it can); a server that fails is
        taken out and probed back, but a model unfit for its work anywhere stops
        the process, as for one server (peers.check_engines)."""
        pulled: dict[Server, list[str]] = {}

        async def check(server: Server) -> None:
            pulled[server] = await server.engine.check_models(pull)

        failures = await self._each(check)
        for exc in failures.values():
            if exc.code == "model_unsuitable":
                raise exc
        if len(failures) == len(self.servers):
            raise self._none(failures)
        return sorted({model for models in pulled.values() for model in models})

    async def _each(self, ask: Callable[[Server], Awaitable[object]]) -> dict[Server, NodeError]:
        """`ask` of every server at once: those failing as servers taken out, the others put back."""
        outcomes = await asyncio.gather(*(ask(s) for s in self.servers), return_exceptions=True)
        failures: dict[Server, NodeError] = {}
        for server, outcome in zip(self.servers, outcomes, strict=True):
            if isinstance(outcome, NodeError):
                failures[server] = outcome
                if server_fault(outcome):
                    self._take_out(server, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                self._put_back(server)
        return failures

    def _none(self, failures: dict[Server, NodeError]) -> NodeError:
        """One server's failure as it is; several said in one line."""
        if len(failures) == 1:
            return next(iter(failures.values()))
        said = "; ".join(f"{s.shown}: {e.message}" for s, e in failures.items())
        first = next(iter(failures.values()))
        return type(first)(f"none of the {role_name(self.role)}'s {len(failures)} servers answers ({said})",
                           code=first.code)

    async def aclose(self) -> None:
        for server in self.servers:
            if server.probe is not None:
                server.probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server.probe
            await server.engine.aclose()


def role_name(role: str) -> str:
    return role.replace("+", " and ")


class Pinned:
    """One realtime stream's view of a pool: every request of the stream goes to
    the same server while it is in (server/realtime.py takes one per stream)."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self._pin = Pin()

    @property
    def server(self) -> Server | None:
        return self._pin.server

    @property
    def tokens(self) -> Mapping[str, TokenEstimator]:
        return self.pool.tokens

    def pinned(self) -> "Pinned":
        return Pinned(self.pool)

    async def describe(self, model: str) -> ModelInfo:
        return await self.pool.describe(model, self._pin)

    async def window(self, model: str) -> int:
        return await self.pool.window(model)

    async def fits(self, model: str, prompt: str, images: int = 0, *, answer_tokens: int | None = None) -> bool:
        return await self.pool.fits(model, prompt, images, answer_tokens=answer_tokens, pin=self._pin)

    def stream(
        self, prompt: str, images: Sequence[bytes] = (), *, model: str | None = None, options: dict | None = None
    ) -> AsyncGenerator[Chunk, None]:
        return self.pool.stream(prompt, images, model=model, options=options, pin=self._pin)

    async def caption(self, image_jpeg: bytes, prompt: str, *, options: dict | None = None) -> str:
        return await self.pool.caption(image_jpeg, prompt, options=options)

    async def complete_json(
        self, prompt: str, schema: dict, *, model: str | None = None, options: dict | None = None
    ) -> dict:
        return await self.pool.complete_json(prompt, schema, model=model, options=options)

    async def ready(self) -> None:
        await self.pool.ready()

    async def check_models(self, pull: bool | None = None) -> list[str]:
        return await self.pool.check_models(pull)

    async def aclose(self) -> None:
        """The pool is the node's: a stream ending does not close it."""


@dataclass(frozen=True)
class Engines:
    """The node's two roles: the VLM (realtime streams, captions) and the LLM (a
    job's structured answer), each on its servers; the same pool when both are
    on the same Ollamas."""

    vlm: Pool
    llm: Pool

    @property
    def distinct(self) -> list[Pool]:
        return [self.vlm] if self.llm is self.vlm else [self.vlm, self.llm]

    def servers(self) -> Iterator[tuple[str, Server]]:
        """Every model server, with the role(s) it serves."""
        for pool in self.distinct:
            for server in pool.servers:
                yield pool.role, server

    async def ready(self) -> None:
        for pool in self.distinct:
            await pool.ready()

    async def check_models(self) -> list[str]:
        return [model for pool in self.distinct for model in await pool.check_models()]

    async def aclose(self) -> None:
        for pool in self.distinct:
            await pool.aclose()
