"""Fault benchmark: the soak's jobs through an Ollama outage, two worker
kills, a PostgreSQL restart and a database outage, while server-sent event
streams follow a share of the jobs and a client keeps calling.

Starts, as their own processes: a private PostgreSQL (EmbeddedPostgres, so
that it may be restarted; never the machine's shared server), a TCP proxy in
front of it for the node's processes (cut for the database outage), the fake
Ollama, the fake posemesh (demo photos), the gRPC server, the bridge and
`--workers` workers. Creates vlm_only jobs over gRPC (each over ONE image, so
one Ollama call per attempt) at `--rate` a second for `--duration` seconds;
a refused CreateJob is tried again under the same idempotency key, as a
client would. Meanwhile, on this schedule (seconds from the first job):

    15           a worker killed (SIGKILL; the one holding most jobs); a new one started
    25           PostgreSQL restarted (pg_ctl restart -m fast)
    30           Ollama stopped for --ollama-outage seconds (60), then started again
    60           another worker killed, and a new one started
    80           the node cut off from PostgreSQL for --db-outage seconds (45), while
                 the jobs held up by Ollama wait (and their event streams with them)

Every `--watch-every`-th job is followed through the bridge's
/api/v1/jobs/{id}/events to its end, and a probe calls ListJobs and /ready
twice a second. Then waits (bounded by `--timeout`) for every job to end and
reads the outcome from the database.

    python -m bench.faults [--rate 10] [--duration 200] [--workers 4]

Prints jobs lost, doubled and failed (target 0 / 0 / 0), the longest wait
(a job from its creation to its end, and a call for its answer), what each
fault cost, the watches' outcomes, and the retry settings the node was given
(JOB_RETRY_FOR is the time budget of the retry policy; a node that does not
know it yet goes by JOB_MAX_ATTEMPTS and JOB_RETRY_WAIT alone). Never fails;
every process it starts is stopped before it returns. The processes' logs
are kept in a temporary directory, named at the end.
"""

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import urlsplit

import grpc
import httpx
import psycopg

from bench.database import percentile
from bench.soak import Node, analyse, image_ids, log_summary
from devpeers.fake_posemesh import DEMO_DOMAIN_ID
from devpeers.ports import free_port, wait_port
from server.config import Settings
from server.embedded_postgres import EmbeddedPostgres, with_database
from server.errors import NodeError
from server.job_status import FINAL
from server.jobs import Job
from server.store import JobStore
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

# When each fault comes, in seconds from the first job.
KILL_FIRST_WORKER_AT = 15.0
POSTGRES_RESTART_AT = 25.0
OLLAMA_DOWN_AT = 30.0
KILL_SECOND_WORKER_AT = 60.0
DATABASE_CUT_AT = 80.0
PROBE_EVERY = 0.5  # seconds between the probe's calls
CALL_TIMEOUT = 30.0  # seconds the probe and the creator give a call
SETTLE = 5.0  # seconds after a fault in which calls are counted as its


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def retry_env(args) -> dict[str, str]:
    """The node's retry settings, so that the Ollama outage is within the
    job's retry budget."""
    return {
        "JOB_RETRY_FOR": str(args.retry_for),
        "JOB_RETRY_WAIT": str(args.retry_wait),
        "JOB_RETRY_MAX_WAIT": str(args.retry_max_wait),
        "JOB_MAX_ATTEMPTS": str(args.max_attempts),
        "JOB_LEASE": str(args.lease),
    }


# --------------------------------------------------------------------------- what happened


@dataclass
class Fault:
    name: str
    start: float
    end: float = 0.0
    note: str = ""


@dataclass
class Call:
    what: str  # "ListJobs" or "/ready"
    start: float
    seconds: float
    outcome: str  # "ok", a gRPC code name, or an HTTP status


@dataclass
class Creation:
    ids: list[str] = field(default_factory=list)
    refused: collections.Counter = field(default_factory=collections.Counter)  # answers tried again
    given_up: int = 0  # never created: the client gave up
    calls: list[Call] = field(default_factory=list)


@dataclass
class Watches:
    opened: int = 0
    refused_at_open: collections.Counter = field(default_factory=collections.Counter)  # tried again
    final: int = 0  # ended after the job's final status, with no error
    errors: collections.Counter = field(default_factory=collections.Counter)
    broke_off: int = 0  # ended (or the connection did) before a final status
    never_opened: int = 0
    final_status: dict[str, str] = field(default_factory=dict)  # job id -> last status seen
    pings: int = 0
    spans: list[tuple[float, float, str]] = field(default_factory=list)  # opened, ended, how


# --------------------------------------------------------------------------- the client side


async def create_jobs(target: str, images: list[str], args, start: float, out: Creation, watch) -> None:
    """`--rate` CreateJob calls a second for `--duration` seconds, each tried
    again while the node refuses it (the same idempotency key: no doubles)."""
    total = int(args.rate * args.duration)
    run = uuid.uuid4().hex[:6]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        async def one(n: int) -> None:
            request = jobs_pb2.CreateJobRequest(
                job_type="vlm_only", domain_id=DEMO_DOMAIN_ID, idempotency_key=f"faults-{run}-{n}"
            )
            request.query.update({"ids": [images[n % len(images)]]})
            request.input.update({"vlm_prompt": "Describe the image"})
            give_up = time.monotonic() + args.create_patience
            pause = 0.5  # seconds, doubling to 2 s, as a client that is told "try again" should
            while True:
                t0 = time.monotonic()
                try:
                    response = await stub.CreateJob(request, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    out.calls.append(Call("CreateJob", t0, time.monotonic() - t0, exc.code().name))
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
                        time.monotonic() < give_up
                    ):
                        out.refused[f"{exc.code().name}: {(exc.details() or '')[:80]}"] += 1
                        await asyncio.sleep(pause * random.uniform(0.5, 1))
                        pause = min(pause * 2, 2.0)
                        continue
                    out.given_up += 1
                    return
                out.calls.append(Call("CreateJob", t0, time.monotonic() - t0, "ok"))
                out.ids.append(response.job.id)
                if n % args.watch_every == 0:
                    watch(response.job.id)
                return

        tasks = []
        for n in range(total):
            await asyncio.sleep(max(start + n / args.rate - time.monotonic(), 0))
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)


async def follow(http: httpx.AsyncClient, job_id: str, out: Watches, deadline: float) -> None:
    """One client of the job's event stream, from its creation to its end;
    opened again only when refused at open (503: the node says try again)."""
    while time.monotonic() < deadline:
        try:
            async with http.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
                if response.status_code != 200:
                    out.refused_at_open[response.status_code] += 1
                    await asyncio.sleep(1)
                    continue
                out.opened += 1
                opened = time.monotonic()
                name, data, last, error = None, [], None, None
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        out.pings += 1
                    elif line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        data.append(line.removeprefix("data: "))
                    elif line == "" and name:
                        body = json.loads("\n".join(data))
                        if name == "job":
                            last = body["status"]
                        else:
                            error = body.get("error", name)
                        name, data = None, []
        except httpx.HTTPError as exc:
            out.broke_off += 1
            out.errors[f"connection: {type(exc).__name__}"] += 1
            out.spans.append((opened, time.monotonic(), "error"))
            return
        if last is not None:
            out.final_status[job_id] = last
        if error is not None:
            out.errors[error[:80]] += 1
            how = "error"
        elif last in FINAL:
            out.final += 1
            how = "final"
        else:
            out.broke_off += 1
            how = "broke off"
        out.spans.append((opened, time.monotonic(), how))
        return
    out.never_opened += 1


async def probe(target: str, http: httpx.AsyncClient, stop: asyncio.Event, out: list[Call]) -> None:
    """ListJobs and /ready, twice a second, each call timed."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        async def list_jobs() -> None:
            t0 = time.monotonic()
            try:
                await stub.ListJobs(jobs_pb2.ListJobsRequest(limit=1), timeout=CALL_TIMEOUT)
                outcome = "ok"
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
            out.append(Call("ListJobs", t0, time.monotonic() - t0, outcome))

        async def ready() -> None:
            t0 = time.monotonic()
            try:
                outcome = str((await http.get("/ready", timeout=CALL_TIMEOUT)).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            out.append(Call("/ready", t0, time.monotonic() - t0, outcome))

        while not stop.is_set():
            await asyncio.gather(list_jobs(), ready(), asyncio.sleep(PROBE_EVERY))


# --------------------------------------------------------------------------- the faults


class Faults:
    def __init__(self, node: Node, pg: EmbeddedPostgres, proxy: subprocess.Popen, store: JobStore, args):
        self.node, self.pg, self.proxy, self.store, self.args = node, pg, proxy, store, args
        self.done: list[Fault] = []
        self.killed = 0

    def proc(self, name: str):
        return next(p for p in reversed(self.node.procs) if p.name == name)

    async def kill_worker(self) -> None:
        """Kills the live worker that holds the most jobs now."""
        running = await self.store.list_jobs(limit=1000, status="running")
        workers = [p for p in self.node.procs if p.name.startswith("worker-") and p.popen.poll() is None]

        def held(p) -> list[Job]:
            return [j for j in running if f"-{p.popen.pid}-" in (j.worker_id or "")]

        victim = max(workers, key=lambda p: len(held(p)))
        fault = Fault(f"{victim.name} killed", time.monotonic())
        holding = held(victim)
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait(10)
        self.killed += 1
        port = free_port()
        a = self.args
        env = {**self.node.base_env, "WORKER_JOBS": str(a.worker_jobs), "OLLAMA_NUM_PARALLEL": str(a.worker_jobs),
               "WORKER_HEALTH_PORT": str(port)}
        self.node._start(f"worker-{a.workers + self.killed}", ["-m", "worker.main"], port, env)
        fault.end = time.monotonic()
        fault.note = f"it held {len(holding)} job(s); worker-{a.workers + self.killed} started"
        self.done.append(fault)
        log(f"{fault.name}: {fault.note}")

    async def ollama_outage(self) -> None:
        ollama = self.proc("fake-ollama")
        fault = Fault(f"Ollama down {self.args.ollama_outage:g} s", time.monotonic())
        ollama.popen.terminate()
        ollama.popen.wait(10)
        log("Ollama stopped")
        await asyncio.sleep(self.args.ollama_outage)
        again = self.node._start("fake-ollama", list(ollama.popen.args[1:]), ollama.port)
        await wait_port(again.port, again.popen)
        fault.end = time.monotonic()
        self.done.append(fault)
        log("Ollama started again")

    async def postgres_restart(self) -> None:
        fault = Fault("PostgreSQL restarted", time.monotonic())
        try:
            await asyncio.to_thread(self.pg.restart)
        except NotImplementedError as exc:
            fault.note = f"skipped: {exc}"
        fault.end = time.monotonic()
        fault.note = fault.note or f"pg_ctl restart took {fault.end - fault.start:.1f} s"
        self.done.append(fault)
        log(f"{fault.name}: {fault.note}")

    async def database_outage(self) -> None:
        fault = Fault(f"database cut off {self.args.db_outage:g} s", time.monotonic())
        self.proxy.send_signal(signal.SIGUSR1)
        log("the node's processes are cut off from PostgreSQL")
        await asyncio.sleep(self.args.db_outage)
        self.proxy.send_signal(signal.SIGUSR2)
        fault.end = time.monotonic()
        self.done.append(fault)
        log("the node's processes reach PostgreSQL again")

    async def run(self, start: float) -> None:
        a = self.args

        async def at(offset: float, action) -> None:
            await asyncio.sleep(max(start + offset * a.schedule_scale - time.monotonic(), 0))
            await action()

        plan = [at(KILL_FIRST_WORKER_AT, self.kill_worker),
                at(KILL_SECOND_WORKER_AT, self.kill_worker),
                at(POSTGRES_RESTART_AT, self.postgres_restart)]
        if a.ollama_outage > 0:
            plan.append(at(OLLAMA_DOWN_AT, self.ollama_outage))
        if a.db_outage > 0:
            plan.append(at(DATABASE_CUT_AT, self.database_outage))
        await asyncio.gather(*plan)


# --------------------------------------------------------------------------- the report


def secs(values: list[float], p: float) -> str:
    return f"{percentile(values, p):.2f} s" if values else "n/a"


def calls_in(calls: list[Call], start: float, end: float) -> list[Call]:
    return [c for c in calls if start <= c.start <= end]


def first_ok_after(calls: list[Call], what: str, t: float, ok: str) -> float | None:
    """Seconds from `t` to the end of the first call of `what` started after
    it that answered `ok`."""
    later = [c for c in calls if c.what == what and c.start >= t and c.outcome == ok]
    return min((c.start + c.seconds for c in later), default=None) - t if later else None


def fmt(seconds: float | None) -> str:
    return f"{seconds:.2f} s" if seconds is not None else "never"


async def wait_all(store: JobStore, created: Creation, creator: asyncio.Task, deadline: float, start: float) -> None:
    last_note = 0.0
    while True:
        try:
            counts = await store.count_by_status()
        except NodeError:  # the store's: the database away, as this benchmark makes it
            counts = {}
        ended = sum(counts.get(s, 0) for s in FINAL)
        if time.monotonic() - last_note >= 10:
            last_note = time.monotonic()
            log(f"{time.monotonic() - start:5.0f} s: created {len(created.ids)}, {({str(s): n for s, n in sorted(counts.items())})}")
        if (creator.done() and ended >= len(created.ids)) or time.monotonic() > deadline:
            return
        await asyncio.sleep(1)


async def faults(args) -> None:
    log_dir = tempfile.mkdtemp(prefix="vlmnode-faults-")
    pg = EmbeddedPostgres()
    admin = pg.start()
    pg_port = urlsplit(admin).port
    if pg_port is None or pg._pgserver is not None:
        pg.stop()
        sys.exit("bench.faults needs PostgreSQL's server binaries (pg_ctl) to restart a private server")
    name = f"vlmnode_faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    direct = with_database(admin, name)
    proxy_port = free_port()
    proxy_log = open(os.path.join(log_dir, "tcp-proxy.log"), "wb")
    proxy = subprocess.Popen(
        [sys.executable, "-m", "devpeers.tcp_proxy", "--port", str(proxy_port), "--upstream", f"127.0.0.1:{pg_port}"],
        stdout=proxy_log, stderr=subprocess.STDOUT,
    )
    store = JobStore(direct, max_size=4)
    node = None
    try:
        await wait_port(proxy_port, proxy)
        await store.open()
        node_args = SimpleNamespace(
            streams=0, workers=args.workers, worker_jobs=args.worker_jobs, ollama_latency=args.ollama_latency,
            fail_rate=args.fail_rate, max_attempts=args.max_attempts, retry_wait=args.retry_wait,
        )
        node = Node(node_args, with_database(f"postgresql://postgres@127.0.0.1:{proxy_port}/postgres", name), log_dir)
        node.base_env.update(retry_env(args))
        t0 = time.monotonic()
        await node.start()
        log(f"{len(node.procs)} processes up in {time.monotonic() - t0:.1f} s; logs in {log_dir}")
        images = await image_ids(node)
        target = node.base_env["GRPC_TARGET"]
        created, watches, probes = Creation(), Watches(), []
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ports['http']}", trust_env=False,
                                     timeout=httpx.Timeout(CALL_TIMEOUT, read=None), limits=limits) as http:
            start = time.monotonic()
            deadline = start + args.timeout
            followers: list[asyncio.Task] = []

            def watch(job_id: str) -> None:
                followers.append(asyncio.create_task(follow(http, job_id, watches, deadline)))

            stop_probe = asyncio.Event()
            prober = asyncio.create_task(probe(target, http, stop_probe, probes))
            creator = asyncio.create_task(create_jobs(target, images, args, start, created, watch))
            plan = Faults(node, pg, proxy, store, args)
            schedule = asyncio.create_task(plan.run(start))
            await wait_all(store, created, creator, deadline, start)
            jobs_done_at = time.monotonic()
            await schedule
            await creator
            try:
                await asyncio.wait_for(asyncio.gather(*followers), max(deadline - time.monotonic(), 1))
            except TimeoutError:
                pass
            stop_probe.set()
            await prober
            alive = {p.name: p.popen.poll() for p in node.procs}
            log("analysing the jobs")
            fig = await analyse(store, created.ids)
            rows = {str(r.id): r for r in await store.list_jobs(limit=1000)}
            offset = 1000
            while len(rows) == offset:
                rows.update({str(r.id): r for r in await store.list_jobs(limit=1000, offset=offset)})
                offset += 1000
    finally:
        log("stopping the processes")
        if node is not None:
            node.stop()
        proxy.terminate()
        proxy.wait(10)
        proxy_log.close()
        await store.close()
        pg.stop()
    logs = {p.name: log_summary(p.log_path) for p in node.procs}
    report(args, plan, created, watches, probes, fig, rows, start, jobs_done_at, alive, logs, log_dir)


def report(args, plan, created, watches, probes, fig, rows, start, jobs_done_at, alive, logs, log_dir) -> None:
    a = args
    known = {f.name for f in dataclasses.fields(Settings)}
    ended = fig.by_status["completed"] + fig.by_status["failed"] + fig.by_status["cancelled"]
    lost = len(created.ids) - ended
    doubled = fig.duplicate_final + fig.bad_output
    waits = {jid: (r.updated_at - r.created_at).total_seconds() for jid, r in rows.items()
             if r.status in FINAL}
    longest_job = max(waits.items(), key=lambda kv: kv[1], default=("-", 0.0))
    every_call = probes + created.calls
    longest_call = max(every_call, key=lambda c: c.seconds, default=None)

    print(
        f"faults: {len(created.ids)} vlm_only jobs (one image, one Ollama call each) at {a.rate:g}/s for "
        f"{a.duration:g} s, {a.workers} workers x {a.worker_jobs} jobs, fake Ollama {a.ollama_latency * 1000:.0f} ms"
        f"{f' with {a.fail_rate:.0%} of calls failing' if a.fail_rate else ''}"
    )
    settings = " ".join(f"{k}={v}" for k, v in retry_env(a).items())
    budget = "known to this node" if "job_retry_for" in known else "NOT known to this node yet: attempts and waits decide"
    print(f"retry settings given to the node: {settings} (JOB_RETRY_FOR {budget})")
    print(f"jobs ({jobs_done_at - start:.0f} s from the first job until all ended or the {a.timeout:g} s limit):")
    print(f"  JOBS LOST:    {lost}   (acknowledged by CreateJob and not ended; target 0)")
    print(f"  JOBS DOUBLED: {doubled}   (a final status twice {fig.duplicate_final}, completed without exactly "
          f"one response {fig.bad_output}; target 0)")
    print(f"  JOBS FAILED:  {fig.by_status['failed']}   {dict(fig.fail_codes) if fig.fail_codes else ''}(target 0)")
    print(f"  LONGEST WAIT: {longest_job[1]:.1f} s from creation to end (job {longest_job[0]}); p50 "
          f"{secs(list(waits.values()), 50)}, p99 {secs(list(waits.values()), 99)}")
    if longest_call:
        print(f"                {longest_call.seconds:.2f} s for a call's answer ({longest_call.what}, "
              f"{longest_call.outcome}, {longest_call.start - start:.0f} s in)")
    print(f"  completed {fig.by_status['completed']}; in the database {fig.in_db} (missing {fig.missing}, never "
          f"acknowledged {fig.unexpected}); creates given up by the client {created.given_up}")
    print(f"  run more than once {fig.multi_run}: taken back by the queue (lease, worker stopped) "
          f"{fig.rerun_handed_back}, retried after their own error {fig.rerun_failure} "
          f"{dict(fig.retry_codes) if fig.retry_codes else ''}, unexplained {fig.rerun_unexplained}")
    print(f"  attempts per job: {dict(sorted(fig.attempts.items()))}")
    print(f"  CreateJob refused and tried again: {sum(created.refused.values())}")
    for error, n in created.refused.most_common(4):
        print(f"    {n} x {error}")
    print("faults (calls: the probe's ListJobs and /ready twice a second, and every CreateJob):")
    done = sorted(plan.done, key=lambda f: f.start)
    for n, f in enumerate(done):
        until = min([f.end + SETTLE] + [g.start for g in done[n + 1:]])
        during = collections.defaultdict(list)
        for c in calls_in(every_call, f.start, until):
            during[f"{c.what} {c.outcome}"].append(c.seconds)
        print(f"  {f.start - start:5.0f} s  {f.name}{': ' + f.note if f.note else ''}")
        print(f"          calls from it until {SETTLE:g} s after, or the next fault (answer, how many, the longest "
              "wait for it):")
        print("            " + ", ".join(f"{k} {len(v)} ({max(v):.2f} s)" for k, v in sorted(during.items())))
        if f.name.startswith(("database", "PostgreSQL")):
            listed = first_ok_after(probes, "ListJobs", f.end, "ok")
            ready = first_ok_after(probes, "/ready", f.end, "200")
            print(f"          after it: ListJobs answered again within {fmt(listed)}, /ready 200 within {fmt(ready)}")
    w = watches
    print(f"event streams (every {a.watch_every}th job, through the bridge):")
    print(f"  opened {w.opened}; ended after the final status {w.final}; ended with an error "
          f"{sum(w.errors.values())}; broke off before the end {w.broke_off}; never opened {w.never_opened}; "
          f"refused at open and opened again {dict(w.refused_at_open)}; keep-alive pings {w.pings}")
    for error, n in w.errors.most_common(4):
        print(f"    {n} x {error}")
    for f in plan.done:
        if f.name.startswith(("database", "PostgreSQL", "Ollama")):
            across = collections.Counter(how for opened, ended, how in w.spans if opened < f.start and ended > f.end)
            print(f"  open across '{f.name}': {sum(across.values())}, of which ended after the final status "
                  f"{across['final']}, with an error {across['error']}, broke off {across['broke off']}")
    wrong = [jid for jid, status in w.final_status.items() if jid in rows and rows[jid]["status"] != status]
    print(f"  last status seen differs from the database's: {len(wrong)}{' e.g. ' + wrong[0] if wrong else ''}")
    print("processes (exit status before the stop: None = running, -9 = killed; warning/error lines and tracebacks):")
    for name, (warnings, errors, tracebacks, first) in logs.items():
        print(f"  {name:14s} {str(alive.get(name)):5s} warnings {warnings:5d}  errors {errors:4d}  "
              f"tracebacks {tracebacks:3d}  {first}")
    for what, jid in fig.examples.items():
        print(f"  example {what}: {jid}")
    print(f"  logs: {log_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10, help="jobs created a second")
    parser.add_argument("--duration", type=float, default=200, help="seconds jobs are created for")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worker-jobs", type=int, default=4, help="WORKER_JOBS of each worker")
    parser.add_argument("--ollama-latency", type=float, default=0.3, help="seconds the fake Ollama takes")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of Ollama answers that are HTTP 500")
    parser.add_argument("--ollama-outage", type=float, default=60, help="seconds Ollama is down")
    parser.add_argument("--db-outage", type=float, default=45, help="seconds the node is cut off from PostgreSQL")
    parser.add_argument("--watch-every", type=int, default=10, help="follow every n-th job's event stream")
    parser.add_argument("--retry-for", type=float, default=300, help="JOB_RETRY_FOR: seconds a job's failures are retried")
    parser.add_argument("--retry-wait", type=float, default=1, help="JOB_RETRY_WAIT: seconds before the first retry")
    parser.add_argument("--retry-max-wait", type=float, default=10, help="JOB_RETRY_MAX_WAIT: longest wait between tries")
    parser.add_argument("--max-attempts", type=int, default=100, help="JOB_MAX_ATTEMPTS")
    parser.add_argument("--lease", type=float, default=10, help="JOB_LEASE: a killed worker's jobs come back after it")
    parser.add_argument("--create-patience", type=float, default=120, help="seconds a client tries one CreateJob")
    parser.add_argument("--schedule-scale", type=float, default=1.0, help="multiplies the faults' times (a short trial)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the run may take at most")
    args = parser.parse_args()
    asyncio.run(faults(args))


if __name__ == "__main__":
    main()
