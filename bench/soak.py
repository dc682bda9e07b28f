"""Soak benchmark: many jobs through several worker processes against the fake
peers, with a share of Ollama calls failing, while WebSocket streams run.

Starts, as their own processes: the fake Ollama (`--fail-rate`, 1% by
default), the fake posemesh (demo photos), the gRPC server, the bridge and
`--workers` workers. Creates `--jobs` vlm_only jobs over gRPC (each over ONE
image, so one Ollama call per attempt; `--create-concurrency` CreateJob calls
in flight), and meanwhile `--streams` WebSocket clients each send a prompt and
then `--fps` frames a second for `--duration` seconds, reconnecting when the
node closes the socket. Then waits (bounded by `--timeout`) for every job to
end and reads the outcome from the database.

    python -m bench.soak [--jobs 10000] [--workers 4] [--streams 50] [--duration 120]

Prints: jobs lost (must be 0), jobs run more than once (and why), p50/p99
pickup, WebSocket answers and errors, and the memory of each process (current
RSS and peak VmHWM) after warm-up and at the end; flat RSS means no leak.
Never fails; every process it starts is stopped before it returns. The
processes' logs are kept in a temporary directory, named at the end.
"""

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import pairwise

import grpc
import websockets

from bench.database import fresh_store, percentile
from devpeers.fake_posemesh import DEMO_DOMAIN_ID, DEMO_EMAIL, DEMO_PASSWORD
from devpeers.images import solid_jpeg
from devpeers.ports import free_port, wait_port
from server.domain import DomainClient, images_only
from server.job_status import FINAL
from server.store import JobStore
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

# A re-run after one of these is the queue taking a job back from a worker,
# not a retry after the job's own failure.
HANDED_BACK = ("lease_expired", "worker_stopped")
PROMPT = "What is on the shelf?"


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: str
    port: int


def memory(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM of a process, in kB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class Node:
    """The fakes and the node's processes, started and stopped together."""

    def __init__(self, args, postgres_url: str, log_dir: str):
        self.args = args
        self.postgres_url = postgres_url
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.ports = {name: free_port() for name in ("ollama", "posemesh", "grpc", "http", "metrics")}
        self.base_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "JOB_", "WORKER"))},
            "POSTGRES_URL": postgres_url,
            "OLLAMA_HOST": f"http://127.0.0.1:{self.ports['ollama']}",
            "API_URL": f"http://127.0.0.1:{self.ports['posemesh']}/api-svc",
            "DDS_URL": f"http://127.0.0.1:{self.ports['posemesh']}/dds",
            "POSEMESH_EMAIL": DEMO_EMAIL,
            "POSEMESH_PASSWORD": DEMO_PASSWORD,
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.ports["grpc"]),
            "GRPC_TARGET": f"127.0.0.1:{self.ports['grpc']}",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.ports["http"]),
            "METRICS_PORT": str(self.ports["metrics"]),
            "IMAGE_BATCH_SIZE": "1",  # the WebSocket's batch: one frame, one answer
            "JOB_MAX_ATTEMPTS": str(args.max_attempts),
            "JOB_RETRY_WAIT": str(args.retry_wait),
            "LOG_LEVEL": "WARNING",
        }

    def _start(self, name: str, argv: list[str], port: int, env: dict | None = None) -> Proc:
        path = os.path.join(self.log_dir, f"{name}.log")
        with open(path, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *argv], env=env or self.base_env, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd()
            )
        proc = Proc(name, popen, path, port)
        self.procs.append(proc)
        return proc

    async def start(self) -> None:
        a = self.args
        fakes = [
            self._start(
                "fake-ollama",
                [
                    "-m",
                    "devpeers.fake_ollama",
                    "--port",
                    str(self.ports["ollama"]),
                    "--latency",
                    str(a.ollama_latency),
                    "--fail-rate",
                    str(a.fail_rate),
                    # Slots for every stream and every worker's jobs, as a llama-server -np or vLLM
                    # would have; the node's processes are told their share (OLLAMA_NUM_PARALLEL).
                    "--num-parallel",
                    str(a.streams + 16 + a.workers * a.worker_jobs),
                ],
                self.ports["ollama"],
            ),
            self._start(
                "fake-posemesh",
                [
                    "-m",
                    "devpeers.fake_posemesh",
                    "--port",
                    str(self.ports["posemesh"]),
                    "--demo",
                    "--token-ttl",
                    "86400",
                ],
                self.ports["posemesh"],
            ),
        ]
        for p in fakes:
            await wait_port(p.port, p.popen)
        server = self._start(
            "server",
            ["-m", "server.main"],
            self.ports["grpc"],
            {**self.base_env, "OLLAMA_NUM_PARALLEL": str(a.streams + 16)},
        )
        await wait_port(server.port, server.popen)  # migrations done before the workers start
        bridge = self._start("bridge", ["-m", "server.bridge.main"], self.ports["http"])
        workers = []
        for n in range(a.workers):
            port = free_port()
            env = {
                **self.base_env,
                "WORKER_JOBS": str(a.worker_jobs),
                "OLLAMA_NUM_PARALLEL": str(a.worker_jobs),
                "WORKER_HEALTH_PORT": str(port),
            }
            workers.append(self._start(f"worker-{n + 1}", ["-m", "worker.main"], port, env))
        for p in (bridge, *workers):
            await wait_port(p.port, p.popen)

    def memory(self) -> dict[str, dict[str, int] | None]:
        return {p.name: memory(p.popen.pid) for p in self.procs}

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.terminate()
        deadline = time.monotonic() + 40  # a worker gives its running jobs up to 30 s
        for p in reversed(self.procs):
            try:
                p.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)


def log_summary(path: str) -> tuple[int, int, int, str]:
    """Warning lines, error lines, tracebacks and the first error line of a process log."""
    warnings = errors = tracebacks = 0
    first = ""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "Traceback" in line:
                    tracebacks += 1
                if " WARNING " in line or "WARNING" in line[:40]:
                    warnings += 1
                elif " ERROR " in line or "ERROR" in line[:40] or " CRITICAL " in line:
                    errors += 1
                    first = first or line.strip()[:200]
    except OSError:
        pass
    return warnings, errors, tracebacks, first


# --------------------------------------------------------------------------- jobs


@dataclass
class Creation:
    ids: list[str] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    retried_calls: int = 0
    seconds: list[float] = field(default_factory=list)
    done_at: float = 0.0


async def create_jobs(
    target: str,
    image_ids: list[str],
    first: int,
    count: int,
    concurrency: int,
    max_attempts: int,
    result: Creation,
    deadline: float,
) -> None:
    """CreateJob `count` vlm_only jobs, `concurrency` calls in flight, each over one image."""
    numbers = iter(range(first, first + count))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        async def one(n: int) -> None:
            request = jobs_pb2.CreateJobRequest(
                job_type="vlm_only", domain_id=DEMO_DOMAIN_ID, idempotency_key=f"soak-{n}", max_attempts=max_attempts
            )
            request.query.update({"ids": [image_ids[n % len(image_ids)]]})
            request.input.update({"vlm_prompt": "Describe the image"})
            for attempt in range(5):  # the idempotency key makes a repeated call safe
                start = time.perf_counter()
                try:
                    response = await stub.CreateJob(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and attempt < 4:
                        result.retried_calls += 1
                        await asyncio.sleep(0.5)
                        continue
                    result.errors[f"{exc.code().name}: {exc.details()[:120]}"] += 1
                    return
                result.seconds.append(time.perf_counter() - start)
                result.ids.append(response.job.id)
                return

        async def lane() -> None:
            for n in numbers:
                if time.monotonic() > deadline:
                    return
                await one(n)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    result.done_at = time.monotonic()


async def image_ids(node: Node) -> list[str]:
    env = node.base_env
    async with DomainClient(
        env["API_URL"], env["DDS_URL"], client_id="vlm-node-soak", email=DEMO_EMAIL, password=DEMO_PASSWORD
    ) as domain:
        items = await domain.list_items(DEMO_DOMAIN_ID, {"ids": []})
    return sorted(i.id for i in images_only(items))  # the demo domain holds a log and a manifest too


async def wait_jobs(store: JobStore, total: int, deadline: float, progress) -> dict[str, int]:
    while True:
        counts = await store.count_by_status()
        progress(counts)
        if sum(counts.get(s, 0) for s in FINAL) >= total or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(1)


@dataclass
class JobFigures:
    in_db: int = 0
    by_status: collections.Counter = field(default_factory=collections.Counter)
    missing: int = 0  # created over gRPC, absent from the database
    unexpected: int = 0  # in the database, never returned by CreateJob
    bad_output: int = 0  # completed without exactly one response
    pickup: list[float] = field(default_factory=list)
    runtime: list[float] = field(default_factory=list)  # first running to final
    multi_run: int = 0  # ran more than once
    rerun_failure: int = 0  # ... after a transient error of its own
    rerun_handed_back: int = 0  # ... after the queue took it back (lease, worker stop)
    rerun_unexplained: int = 0  # ... with no pending step between two runs
    duplicate_final: int = 0  # reached a final status more than once
    attempts: collections.Counter = field(default_factory=collections.Counter)
    retry_codes: collections.Counter = field(default_factory=collections.Counter)
    fail_codes: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)


async def analyse(store: JobStore, created: list[str]) -> JobFigures:
    """Every job's row and status history, through the store's own queries."""
    fig = JobFigures()
    rows = []
    offset = 0
    while True:
        page = await store.list_jobs(limit=1000, offset=offset)
        rows.extend(page)
        if len(page) < 1000:
            break
        offset += 1000
    fig.in_db = len(rows)
    db_ids = {str(r.id) for r in rows}
    wanted = set(created)
    fig.missing = len(wanted - db_ids)
    fig.unexpected = len(db_ids - wanted)
    if fig.missing:
        fig.examples["missing"] = next(iter(wanted - db_ids))

    lanes = asyncio.Semaphore(6)

    async def events(row):
        async with lanes:
            return row, await store.job_events(row.id)

    for row, history in await asyncio.gather(*(events(r) for r in rows)):
        jid = str(row.id)
        fig.by_status[str(row.status)] += 1
        fig.attempts[row.attempts] += 1
        if row.status == "completed" and len((row.output or {}).get("responses") or []) != 1:
            fig.bad_output += 1
            fig.examples.setdefault("bad_output", jid)
        if row.status == "failed":
            fig.fail_codes[(row.error or {}).get("code", "?")] += 1
            fig.examples.setdefault("failed", jid)
        runs = [n for n, e in enumerate(history) if e.status == "running"]
        finals = [e for e in history if e.status in FINAL]
        if len(finals) > 1:
            fig.duplicate_final += 1
            fig.examples.setdefault("duplicate_final", jid)
        if runs:
            first_run = history[runs[0]]["at"]
            fig.pickup.append((first_run - row.created_at).total_seconds())
            if finals:
                fig.runtime.append((finals[-1]["at"] - first_run).total_seconds())
        if len(runs) > 1:
            fig.multi_run += 1
            for prev, cur in pairwise(runs):
                between = [e for e in history[prev + 1 : cur] if e.status == "pending"]
                code = (between[-1]["error"] or {}).get("code") if between else None
                if not between:
                    fig.rerun_unexplained += 1
                    fig.examples.setdefault("rerun_unexplained", jid)
                elif code in HANDED_BACK:
                    fig.rerun_handed_back += 1
                    fig.examples.setdefault(f"rerun_{code}", jid)
                else:
                    fig.retry_codes[code or "?"] += 1
            # The job counts as retried for its own error only when every re-run followed one.
            causes = []
            for prev, cur in pairwise(runs):
                between = [e for e in history[prev + 1 : cur] if e.status == "pending"]
                causes.append((between[-1]["error"] or {}).get("code") if between else None)
            if all(c is not None and c not in HANDED_BACK for c in causes):
                fig.rerun_failure += 1
    return fig


# --------------------------------------------------------------------------- WebSocket streams


@dataclass
class Streams:
    connections: int = 0
    connect_errors: int = 0
    frames_sent: int = 0
    answers: int = 0
    frames_answered: int = 0
    frames_dropped: int = 0
    notices: int = 0
    error_messages: collections.Counter = field(default_factory=collections.Counter)
    closes: collections.Counter = field(default_factory=collections.Counter)
    latency: list[float] = field(default_factory=list)


async def stream(url: str, frames: list[bytes], fps: float, stop_at: float, out: Streams, offset: float) -> None:
    """One glasses app: prompt, then frames at `fps` until `stop_at`; reconnects when closed."""
    await asyncio.sleep(offset)  # spread the streams over one frame interval
    while time.monotonic() < stop_at:
        sent: dict[str, float] = {}
        dropped = 0
        try:
            async with websockets.connect(url, max_size=2**22, open_timeout=20) as ws:
                out.connections += 1

                async def send(sent: dict[str, float] = sent) -> None:  # this connection's
                    await ws.send(PROMPT)
                    n = 0
                    next_at = time.monotonic()
                    while time.monotonic() < stop_at:
                        n += 1
                        sent[str(n)] = time.monotonic()
                        await ws.send(frames[n % len(frames)])
                        out.frames_sent += 1
                        next_at += 1 / fps
                        await asyncio.sleep(max(next_at - time.monotonic(), 0))
                    # Let the last answers come back, then close.
                    grace = time.monotonic() + 10
                    while len(sent) > 0 and time.monotonic() < grace:
                        await asyncio.sleep(0.1)
                    await ws.close()

                sender = asyncio.create_task(send())
                try:
                    async for message in ws:
                        try:
                            answer = json.loads(message)
                        except ValueError:
                            answer = None
                        if not isinstance(answer, dict):
                            out.notices += 1
                            continue
                        if "error" in answer:
                            out.error_messages[str(answer["error"])[:100]] += 1
                            continue
                        if answer.get("done"):
                            now = time.monotonic()
                            out.answers += 1
                            for fid in answer.get("frames") or []:
                                out.frames_answered += 1
                                if fid in sent:
                                    out.latency.append(now - sent.pop(fid))
                            if answer.get("frames_dropped", 0) > dropped:
                                out.frames_dropped += answer["frames_dropped"] - dropped
                                dropped = answer["frames_dropped"]
                            # Answers come in order: older frames still waiting were dropped.
                            newest = max((int(f) for f in answer.get("frames") or [] if f.isdigit()), default=0)
                            for fid in [f for f in sent if int(f) < newest]:
                                del sent[fid]
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                code = ws.close_code
                out.closes[str(code)] += 1
        except websockets.ConnectionClosed as exc:
            out.closes[str(exc.rcvd.code if exc.rcvd else "no close frame")] += 1
        except (TimeoutError, OSError, websockets.InvalidHandshake) as exc:
            out.connect_errors += 1
            out.error_messages[f"connect: {type(exc).__name__}: {exc}"[:100]] += 1
            await asyncio.sleep(1)
        else:
            continue
        await asyncio.sleep(0.2)  # closed by the node: the app reconnects


# --------------------------------------------------------------------------- report


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.1f} ms" if values else "n/a"


def secs(values: list[float], p: float) -> str:
    return f"{percentile(values, p):.2f} s" if values else "n/a"


def mb(kb: int | None) -> str:
    return f"{kb / 1024:7.1f}" if kb is not None else "    n/a"


def ratio(a: int | None, b: int | None) -> str:
    return f"{b / a:5.2f}" if a and b else "  n/a"


# --------------------------------------------------------------------------- main


async def soak(args) -> None:
    log_dir = tempfile.mkdtemp(prefix="vlmnode-soak-")
    frames = [solid_jpeg(c, size=(320, 240)) for c in ("red", "green", "blue", "yellow")]
    async with fresh_store(max_size=8) as store:
        node = Node(args, store.url, log_dir)
        try:
            t0 = time.monotonic()
            await node.start()
            log(f"{len(node.procs)} processes up in {time.monotonic() - t0:.1f} s; logs in {log_dir}")
            ids = await image_ids(node)
            if not ids:
                raise RuntimeError("the fake posemesh has no images")
            target = node.base_env["GRPC_TARGET"]
            url = f"ws://127.0.0.1:{node.ports['http']}/api/v1/ws"

            # Warm-up: a few jobs and answers through every code path, then the first memory sample.
            warm = min(max(args.jobs // 100, 20), 200, args.jobs)
            creation = Creation()
            await create_jobs(
                target,
                ids,
                0,
                warm,
                min(args.create_concurrency, warm),
                args.max_attempts,
                creation,
                time.monotonic() + 120,
            )
            warm_streams = Streams()
            stop_at = time.monotonic() + 5  # every stream at once, so the start sample has seen that load
            await asyncio.gather(
                *(
                    stream(url, frames, args.fps, stop_at, warm_streams, i / args.streams / args.fps)
                    for i in range(args.streams)
                )
            )
            await wait_jobs(store, len(creation.ids), time.monotonic() + 120, lambda c: None)
            await asyncio.sleep(1)
            mem_start = node.memory()
            log(f"warm-up: {len(creation.ids)} jobs, {warm_streams.answers} WebSocket answers")

            # The soak.
            start = time.monotonic()
            deadline = start + args.timeout
            streams = Streams()
            stop_at = start + args.duration
            creator = asyncio.create_task(
                create_jobs(
                    target, ids, warm, args.jobs - warm, args.create_concurrency, args.max_attempts, creation, deadline
                )
            )
            clients = asyncio.gather(
                *(
                    asyncio.wait_for(
                        stream(url, frames, args.fps, stop_at, streams, i / args.streams / args.fps), args.duration + 60
                    )
                    for i in range(args.streams)
                ),
                return_exceptions=True,
            )
            peak = {"pending": 0, "rss": {}}
            last_note = [0.0]

            def progress(counts: dict[str, int]) -> None:
                peak["pending"] = max(peak["pending"], counts.get("pending", 0))
                for name, m in node.memory().items():
                    if m:
                        peak["rss"][name] = max(peak["rss"].get(name, 0), m["VmRSS"])
                if time.monotonic() - last_note[0] >= 10:
                    last_note[0] = time.monotonic()
                    log(
                        f"{time.monotonic() - start:6.0f} s: created {len(creation.ids)}/{args.jobs}, "
                        f"{({str(s): n for s, n in sorted(counts.items())})}, ws answers {streams.answers}, "
                        f"closes {dict(streams.closes)}"
                    )

            async def monitor() -> dict[str, int]:
                while not creator.done():
                    progress(await store.count_by_status())
                    await asyncio.sleep(1)
                return await wait_jobs(store, len(creation.ids), deadline, progress)

            await monitor()
            jobs_done_at = time.monotonic()
            await creator
            while not clients.done():  # the streams may outlast the jobs: keep sampling
                progress(await store.count_by_status())
                await asyncio.sleep(1)
            await clients
            await asyncio.sleep(2)  # let the processes settle back to idle
            mem_end = node.memory()
            soak_seconds = jobs_done_at - start
            alive = {p.name: p.popen.poll() for p in node.procs}
            log("analysing the jobs")
            fig = await analyse(store, creation.ids)
        finally:
            log("stopping the processes")
            node.stop()
        logs = {p.name: log_summary(p.log_path) for p in node.procs}

    # ----------------------------------------------------------------- the figures
    a = args
    created = len(creation.ids)
    ended = fig.by_status["completed"] + fig.by_status["failed"]
    lost = created - ended
    print(
        f"soak: {a.jobs} vlm_only jobs (one image, one Ollama call each), {a.workers} workers x {a.worker_jobs} "
        f"jobs, fake Ollama {a.ollama_latency * 1000:.0f} ms with {a.fail_rate:.0%} of calls failing; "
        f"{a.streams} WebSocket streams at {a.fps:g} frames/s for {a.duration:g} s"
    )
    print(f"jobs ({soak_seconds:.0f} s from the end of warm-up until all ended or the {a.timeout:g} s limit):")
    print(
        f"  created:        {created}   (create errors {sum(creation.errors.values())}, calls retried "
        f"{creation.retried_calls}; CreateJob p50 {ms(creation.seconds, 50)}, p99 {ms(creation.seconds, 99)})"
    )
    for error, n in creation.errors.most_common(5):
        print(f"    {n} x {error}")
    print(
        f"  completed:      {fig.by_status['completed']}   failed: {fig.by_status['failed']}"
        f"   {dict(fig.fail_codes) if fig.fail_codes else ''}"
    )
    others = {s: n for s, n in fig.by_status.items() if s not in ("completed", "failed")}
    print(
        f"  JOBS LOST:      {lost}   (created - completed - failed; must be 0)"
        f"{'   not ended: ' + str(others) if others else ''}"
    )
    print(
        f"  in the database {fig.in_db}: missing {fig.missing}, never created over gRPC {fig.unexpected}; "
        f"completed without exactly one response {fig.bad_output}; reached a final status twice "
        f"{fig.duplicate_final}"
    )
    print(
        f"  JOBS RUN TWICE: {fig.multi_run - fig.rerun_failure}   (run more than once other than to retry their own "
        f"error: re-runs after the queue took a job back {fig.rerun_handed_back}, with no pending step between "
        f"two runs {fig.rerun_unexplained})"
    )
    print(
        f"  attempts > 1:   {fig.multi_run} ({fig.multi_run / max(fig.in_db, 1):.2%}), of which after a transient "
        f"error of their own {fig.rerun_failure}"
    )
    print(f"    attempts per job: {dict(sorted(fig.attempts.items()))}; retry causes: {dict(fig.retry_codes)}")
    print(
        f"  pickup (created -> first running): p50 {secs(fig.pickup, 50)}  p99 {secs(fig.pickup, 99)}  "
        f"max {max(fig.pickup, default=0):.2f} s   (peak backlog {peak['pending']} pending; creation ran "
        f"{(creation.done_at - start):.0f} s)"
    )
    print(f"  run time (first running -> end): p50 {ms(fig.runtime, 50)}  p99 {ms(fig.runtime, 99)}")
    print(f"  throughput: {(ended - warm) / max(soak_seconds, 0.001):.1f} jobs/s over the soak (warm-up jobs: {warm})")
    s = streams
    unanswered = s.frames_sent - s.frames_answered - s.frames_dropped
    print(f"WebSocket ({a.streams} streams, {a.duration:g} s):")
    print(
        f"  answers {s.answers} ({s.answers / a.duration:.1f}/s), frames sent {s.frames_sent}, answered "
        f"{s.frames_answered}, dropped while busy {s.frames_dropped}, never answered {unanswered} "
        f"({unanswered / max(s.frames_sent, 1):.2%})"
    )
    print(f"  answer latency (frame sent -> last chunk): p50 {ms(s.latency, 50)}  p99 {ms(s.latency, 99)}")
    print(
        f"  connections {s.connections} (reconnects {s.connections - a.streams}), connect errors "
        f"{s.connect_errors}, notices {s.notices}, close codes {dict(s.closes)}"
    )
    for error, n in s.error_messages.most_common(5):
        print(f"    {n} x error: {error}")
    print("memory (MB; start = after warm-up, idle; end = after all jobs ended and the streams closed, idle):")
    print(
        f"  {'process':14s} {'RSS start':>9s} {'RSS end':>9s} {'end/start':>9s} {'RSS peak':>9s}"
        f" {'HWM start':>9s} {'HWM end':>9s} {'end/start':>9s}"
    )
    for name in mem_start:
        m0, m1 = mem_start[name] or {}, mem_end.get(name) or {}
        print(
            f"  {name:14s} {mb(m0.get('VmRSS'))}   {mb(m1.get('VmRSS'))}     {ratio(m0.get('VmRSS'), m1.get('VmRSS'))}"
            f"   {mb(peak['rss'].get(name))}   {mb(m0.get('VmHWM'))}   {mb(m1.get('VmHWM'))}     "
            f"{ratio(m0.get('VmHWM'), m1.get('VmHWM'))}"
        )
    print("processes (exit status before the stop: None = running; warning/error lines and tracebacks in the logs):")
    for name, (warnings, errors, tracebacks, first) in logs.items():
        print(
            f"  {name:14s} {str(alive.get(name)):5s} warnings {warnings:5d}  errors {errors:4d}  "
            f"tracebacks {tracebacks:3d}  {first}"
        )
    for what, jid in fig.examples.items():
        print(f"  example {what}: {jid}")
    print(f"  logs: {log_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--duration", type=float, default=120, help="seconds the WebSocket streams run")
    parser.add_argument("--fps", type=float, default=2, help="frames a second per stream")
    parser.add_argument("--worker-jobs", type=int, default=8, help="WORKER_JOBS of each worker")
    parser.add_argument("--fail-rate", type=float, default=0.01, help="share of Ollama answers that are HTTP 500")
    parser.add_argument("--ollama-latency", type=float, default=0.02, help="seconds the fake Ollama takes")
    parser.add_argument("--max-attempts", type=int, default=5, help="max_attempts of each job")
    parser.add_argument("--retry-wait", type=float, default=0.05, help="JOB_RETRY_WAIT")
    parser.add_argument("--create-concurrency", type=int, default=32, help="CreateJob calls in flight")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the soak may take at most")
    args = parser.parse_args()
    asyncio.run(soak(args))


if __name__ == "__main__":
    main()
