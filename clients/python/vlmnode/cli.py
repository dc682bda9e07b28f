"""The `vlmnode` command: batch jobs and realtime streams from a shell.

    vlmnode jobs submit --domain ID --prompt "When ...?" --vlm-prompt "Describe the image"
    vlmnode jobs list [--status STATUS] [--type TYPE] [--limit N] [--offset N]
    vlmnode jobs get|cancel|watch ID
    vlmnode jobs retry ID [--prompt ...] [--input JSON]
    vlmnode stream DIR --prompt "What is on the shelf?"

Global options (before or after the command): --target HOST:PORT (default
$VLMNODE_TARGET or localhost:50051), --token (default $VLMNODE_TOKEN),
--ca-file PEM, --tls, --timeout SECONDS, --json.

Results go to stdout, progress and errors to stderr. Exit codes: 0 done,
1 a watched job failed or was cancelled (or another error), 2 bad input,
3 not found, 4 the node (or a peer it needs) is unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# grpc's own log lines (a failed TLS handshake, ...) would repeat our one-line
# errors less readably. It reads this once, on import: keep this above any
# import of grpc.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from vlmnode._client import Client  # noqa: E402
from vlmnode._connection import DEFAULT_TARGET, TARGET_ENV  # noqa: E402
from vlmnode._errors import InvalidArgumentError, VlmNodeError  # noqa: E402
from vlmnode._progress import Progress  # noqa: E402
from vlmnode._types import AnswerChunk, Job, Notice  # noqa: E402
from vlmnode._wire import IMAGE_SUFFIXES, STATUSES, folder_images, new_idempotency_key  # noqa: E402

TOKEN_ENV = "VLMNODE_TOKEN"
JOB_TYPES = ("task_timing_v1", "vlm_only")

EXIT_OK = 0
EXIT_FAILED = 1  # a watched job ended failed or cancelled; an unexpected error
EXIT_BAD_INPUT = 2  # also argparse's code for a bad command line
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    "INVALID_ARGUMENT": EXIT_BAD_INPUT,
    "FAILED_PRECONDITION": EXIT_BAD_INPUT,
    "OUT_OF_RANGE": EXIT_BAD_INPUT,
    "RESOURCE_EXHAUSTED": EXIT_BAD_INPUT,
    "NOT_FOUND": EXIT_NOT_FOUND,
    "UNAVAILABLE": EXIT_UNREACHABLE,
    "DEADLINE_EXCEEDED": EXIT_UNREACHABLE,
}


# Output.


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False), flush=True)


def _time(job: Job) -> str:
    return job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else "-"


def _print_job(job: Job) -> None:
    rows = [
        ("id", job.id),
        ("type", job.job_type),
        ("status", job.status),
        ("domain", job.domain_id),
        ("created", job.created_at.isoformat() if job.created_at else "-"),
        ("updated", job.updated_at.isoformat() if job.updated_at else "-"),
        ("attempts", f"{job.attempts} (at most {job.max_attempts})"),
        ("query", json.dumps(job.query, ensure_ascii=False)),
        ("input", json.dumps(job.input, ensure_ascii=False)),
    ]
    if job.error:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    for name, value in rows:
        print(f"{name + ':':<10}{value}")
    if job.output is not None:
        print("output:")
        print(json.dumps(job.output, ensure_ascii=False, indent=2))


def _print_short(job: Job, as_json: bool) -> None:
    if as_json:
        _print_json(job.to_dict())
    else:
        print(f"{job.id}  {job.status}")


def _print_table(jobs: Sequence[Job]) -> None:
    rows = [("ID", "STATUS", "TYPE", "CREATED (UTC)", "ATTEMPTS")]
    rows += [(j.id, j.status, j.job_type, _time(j), f"{j.attempts}/{j.max_attempts}") for j in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


# Reading options.


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{option} must be a JSON object")
    return value


def _input(args: argparse.Namespace) -> dict[str, Any]:
    """--input, with --prompt, --vlm-prompt and --webhook-url laid over it."""
    value = _json_object(args.input, "--input")
    for field in ("prompt", "vlm_prompt", "webhook_url"):
        if getattr(args, field) is not None:
            value[field] = getattr(args, field)
    return value


def _query(args: argparse.Namespace) -> dict[str, Any]:
    query = _json_object(args.query, "--query") if args.query else {"ids": []}
    if args.ids is not None:
        query["ids"] = [i.strip() for i in args.ids.split(",") if i.strip()]
    if args.name is not None:
        query["name"] = args.name
    if args.data_type is not None:
        query["data_type"] = args.data_type
    return query


# Commands.


def jobs_submit(node: Client, args: argparse.Namespace) -> int:
    key = args.idempotency_key or new_idempotency_key()
    try:
        job = node.create_job(
            args.type,
            args.domain,
            input=_input(args),
            query=_query(args),
            idempotency_key=key,
            priority=args.priority,
            max_attempts=args.max_attempts,
        )
    except VlmNodeError as exc:
        if exc.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise
        # The node may have made the job without our hearing of it: the same
        # key again gets that job rather than a second one.
        hint = f"; the job may exist all the same: submit again with --idempotency-key {key} to get it, never two"
        raise type(exc)(exc.message + hint, code=exc.code, details=exc.details) from None
    if args.watch:
        return _watch(node, job.id, args.json)
    if args.json:
        _print_json(job.to_dict())
    else:
        print(job.id)
    return EXIT_OK


def jobs_list(node: Client, args: argparse.Namespace) -> int:
    jobs = node.list_jobs(status=args.status, job_type=args.type, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json([job.to_dict() for job in jobs])
    elif jobs:
        _print_table(jobs)
    else:
        print("no jobs", file=sys.stderr)
    return EXIT_OK


def jobs_get(node: Client, args: argparse.Namespace) -> int:
    job = node.get_job(args.id)
    if args.json:
        _print_json(job.to_dict())
    else:
        _print_job(job)
    return EXIT_OK


def jobs_retry(node: Client, args: argparse.Namespace) -> int:
    changes = _input(args)
    current = node.get_job(args.id)
    job = node.retry_job(args.id, {**current.input, **changes}, job_type=current.job_type)
    _print_short(job, args.json)
    return EXIT_OK


def jobs_cancel(node: Client, args: argparse.Namespace) -> int:
    job = node.cancel_job(args.id)
    _print_short(job, args.json)
    return EXIT_OK


def jobs_watch(node: Client, args: argparse.Namespace) -> int:
    return _watch(node, args.id, args.json)


def _watch(node: Client, job_id: str, as_json: bool) -> int:
    progress = Progress(enabled=not as_json)
    last: Job | None = None
    try:
        for job in node.watch_job(job_id):
            last = job
            if as_json:
                _print_json(job.to_dict())
            attempt = f" (attempt {job.attempts})" if job.status == "running" else ""
            progress.update(f"job {job.id}: {job.status}{attempt}")
    finally:
        progress.finish()
    if last is None:
        raise VlmNodeError(f"the node ended the watch of job {job_id} without a word")
    if not as_json:
        _print_job(last)
    if last.status == "completed":
        return EXIT_OK
    if last.status == "failed" and last.error:
        print(f"vlmnode: job {last.id} failed: {last.error.code}: {last.error.message}", file=sys.stderr)
    elif last.status in ("failed", "cancelled"):
        print(f"vlmnode: job {last.id} {last.status}", file=sys.stderr)
    else:  # the stream ended before a final status
        print(f"vlmnode: the watch ended while job {last.id} was {last.status}", file=sys.stderr)
    return EXIT_FAILED


class _StreamCounts:
    def __init__(self, total: int) -> None:
        self.total, self.sent, self.answers, self.dropped = total, 0, 0, 0

    def __str__(self) -> str:
        return f"frames sent {self.sent}/{self.total}, answers {self.answers}, dropped {self.dropped}"


class _AnswerPrinter:
    """Writes answers to stdout: as text the moment each chunk comes, or as
    one JSON line per whole answer. On a terminal shared with the status
    line, the line is held off while an answer is half written."""

    def __init__(self, as_json: bool, progress: Progress) -> None:
        self.as_json = as_json
        self.progress = progress
        self.terminal = progress if sys.stdout.isatty() and not as_json else None
        self.parts: list[str] = []

    def chunk(self, chunk: AnswerChunk, status: str) -> None:
        """Writes a chunk; `status` is the status line once the answer is done."""
        if self.as_json:
            self.parts.append(chunk.text)
            if chunk.done:
                text, self.parts = "".join(self.parts), []
                _print_json(
                    {
                        "answer_id": chunk.answer_id,
                        "text": text,
                        "frame_ids": chunk.frame_ids,
                        "frames_dropped": chunk.frames_dropped,
                    }
                )
            return
        if self.terminal:
            self.terminal.hold()
        self.parts.append(chunk.text)
        sys.stdout.write(chunk.text + ("\n" if chunk.done else ""))
        sys.stdout.flush()
        if chunk.done:
            self.parts = []
            self.progress.update(status)
            if self.terminal:
                self.terminal.release()

    def notice(self, notice: Notice) -> None:
        if self.as_json:
            _print_json({"notice": notice.message, "frame_ids": notice.frame_ids})
            return
        self.end_line()
        print(f"node: {notice.message} ({', '.join(notice.frame_ids)})", file=sys.stderr, flush=True)

    def end_line(self) -> None:
        """Ends a half-written answer (the stream stopped in its middle)."""
        if self.parts and not self.as_json:
            print(flush=True)
            self.parts = []


def stream(node: Client, args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        raise InvalidArgumentError(f"{args.dir} is not a folder")
    paths = folder_images(folder)
    if not paths:
        raise InvalidArgumentError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.dir}")
    counts = _StreamCounts(len(paths))
    progress = Progress(enabled=not args.json)
    printer = _AnswerPrinter(args.json, progress)

    def frames() -> Iterator[Path]:
        # Runs on grpc's sending thread; paced as a camera would send them.
        for n, path in enumerate(paths):
            if n and args.interval > 0:
                time.sleep(args.interval)
            counts.sent += 1
            progress.update(str(counts))
            yield path

    answers = node.infer(
        frames(),
        args.prompt,
        model=args.model,
        batch_size=args.batch_size,
        num_predict=args.num_predict,
        temperature=args.temperature,
    )
    try:
        for item in answers:
            if isinstance(item, Notice):
                printer.notice(item)
                continue
            if item.done:
                counts.answers += 1
                counts.dropped = item.frames_dropped
            printer.chunk(item, str(counts))
    finally:
        printer.end_line()
        progress.finish()
    return EXIT_OK


# The command line.


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name; only the
    top level sets defaults, so a later one is not overwritten by them."""
    parser = argparse.ArgumentParser(add_help=False)
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=default(os.environ.get(TARGET_ENV) or DEFAULT_TARGET),
        help=f"the node's gRPC address (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token", default=default(os.environ.get(TOKEN_ENV)), help=f"bearer token (default: ${TOKEN_ENV})"
    )
    group.add_argument("--ca-file", metavar="PEM", default=default(None), help="CA certificates; implies --tls")
    group.add_argument("--tls", action="store_true", default=default(False), help="use TLS with the system's roots")
    group.add_argument(
        "--timeout", type=float, metavar="SECONDS", default=default(30.0), help="deadline of each call (default: 30)"
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON (one object per line)")
    return parser


def _input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="input.prompt: the question for the LLM over the timeline")
    parser.add_argument("--vlm-prompt", dest="vlm_prompt", help="input.vlm_prompt: what to ask about each image")
    parser.add_argument("--webhook-url", dest="webhook_url", help="input.webhook_url: where to post the result")
    parser.add_argument("--input", metavar="JSON", help="the whole input as a JSON object (the flags above win)")


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="vlmnode",
        description="Talk to a VLM Node: batch jobs over a domain's photos, realtime streams of frames.",
        parents=[_global_options(defaults=True)],
        epilog="exit codes: 0 done, 1 job failed or cancelled, 2 bad input, 3 not found, 4 node unreachable",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{jobs,stream}")

    jobs = commands.add_parser("jobs", help="submit, list, get, retry, cancel and watch batch jobs")
    actions = jobs.add_subparsers(dest="action", required=True, metavar="{submit,list,get,retry,cancel,watch}")

    submit = actions.add_parser("submit", parents=[common], help="queue a job; prints its id")
    submit.add_argument("--domain", required=True, metavar="ID", help="the posemesh domain id")
    submit.add_argument("--type", choices=JOB_TYPES, default="task_timing_v1", help="default: task_timing_v1")
    _input_options(submit)
    submit.add_argument("--ids", metavar="ID,ID", help="query.ids: the domain data to use (default: all)")
    submit.add_argument("--name", help="query.name")
    submit.add_argument("--data-type", dest="data_type", help="query.data_type")
    submit.add_argument("--query", metavar="JSON", help="the whole query as a JSON object (the flags above win)")
    submit.add_argument("--idempotency-key", dest="idempotency_key", default="", metavar="KEY",
                        help="the same key again gets the same job (default: a new UUID, kept for the retries)")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first")
    submit.add_argument("--max-attempts", dest="max_attempts", type=int, default=0, metavar="N")
    submit.add_argument("--watch", action="store_true", help="then follow the job to its end")
    submit.set_defaults(run=jobs_submit)

    listing = actions.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--type", choices=JOB_TYPES)
    listing.add_argument("--limit", type=int, default=0, help="at most this many (default: 100)")
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(run=jobs_list)

    for name, run, text in (
        ("get", jobs_get, "one job in full"),
        ("cancel", jobs_cancel, "stop a job (a running one at its next step)"),
        ("watch", jobs_watch, "follow a job's status to its end; exit 1 unless it completes"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("id", metavar="ID")
        action.set_defaults(run=run)

    retry = actions.add_parser(
        "retry", parents=[common], help="run a finished job again, its input changed by the flags given"
    )
    retry.add_argument("id", metavar="ID")
    _input_options(retry)
    retry.set_defaults(run=jobs_retry)

    streaming = commands.add_parser(
        "stream", parents=[common], help="send a folder's images in name order, print the answers as they stream"
    )
    streaming.add_argument("dir", metavar="DIR", help="a folder of JPEG or PNG images")
    streaming.add_argument("--prompt", required=True, help="what to ask about the frames")
    streaming.add_argument("--model", default="", help="default: the node's VLM_MODEL")
    streaming.add_argument("--batch-size", dest="batch_size", type=int, default=0, metavar="N",
                           help="frames per answer (default: the node's IMAGE_BATCH_SIZE)")
    streaming.add_argument("--num-predict", dest="num_predict", type=int, default=0, metavar="N",
                           help="longest answer in tokens")
    streaming.add_argument("--temperature", type=float)
    streaming.add_argument("--interval", type=float, default=0.0, metavar="SECONDS",
                           help="pause between frames, as a camera would (default: none)")
    streaming.set_defaults(run=stream)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Client(
            args.target, token=args.token, tls=args.tls or None, ca_file=args.ca_file, timeout=args.timeout
        ) as node:
            return int(args.run(node, args))
    except VlmNodeError as exc:
        print(f"vlmnode: {exc.message}", file=sys.stderr)
        return EXIT_CODES.get(exc.code, EXIT_FAILED)
    except KeyboardInterrupt:
        print("vlmnode: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`vlmnode jobs list | head`): not an error.
        # Point stdout at /dev/null so that Python's own last flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
