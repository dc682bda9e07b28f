"""The original node's REST endpoints for jobs, served as a client of the gRPC
JobService (never of the store): each handler checks the shape of the HTTP
request, makes one call and turns the answer into the original's JSON.

gRPC errors are turned into HTTP answers by the app's handler
(server/bridge/errors.py); what is refused here, before any call, gets the
same `{"error": "<one line>"}` body.

Status codes:
- 200 with the job for create, get, retry and cancel (the original answered
  a create with 200 and the job, and clients check for 200, so no 201), 200
  with a plain JSON array for the list;
- 400 for bad input: malformed JSON, wrong types, unknown fields, bad query
  parameters, and what the node refuses (INVALID_ARGUMENT, and
  FAILED_PRECONDITION such as "No data found" or retrying a running job);
- 401 without the node's token (server/bridge/auth.py), 403 from a web page
  the node does not allow (its origin; server/bridge/auth.py);
- 404 for an unknown or malformed job id; 405 with `Allow` for a method a
  path does not serve; 413 for a body over 1 MiB; 415 for a body that is
  not `Content-Type: application/json` (a browser sends a JSON body to
  another origin only after asking, while a form or text/plain goes without
  a preflight);
- 503 when the node's gRPC server cannot be reached.
"""

import asyncio
import json
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf import json_format, struct_pb2
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.bridge import http_rules
from server.bridge.auth import caller_metadata
from server.bridge.errors import error_response
from server.domain import validate_domain_id, validate_query
from server.errors import BadInput, original_error, shown
from server.job_status import FINAL, Status, status_to_proto
from vlmnode.v1 import jobs_pb2

if TYPE_CHECKING:
    from vlmnode.v1.jobs_pb2_grpc import JobServiceAsyncStub

Handler = Callable[[Request], Awaitable[Response]]
Metadata = tuple[tuple[str, str], ...] | None

MAX_BODY = 1024 * 1024  # bytes of a request body
CALL_TIMEOUT = 60.0  # seconds for a unary call (a create asks the domain server first)
MAX_ID_CHARS = 100  # a job id is a UUID; anything much longer is not one
MAX_DEPTH = 32  # nesting of `query` and `input`
INT32_MAX = 2**31 - 1

FINAL_STATUSES = {status_to_proto(status) for status in FINAL}

CREATE_FIELDS = ("job_type", "query", "domain_id", "input", "idempotency_key", "priority", "max_attempts")
# The original UI's Retry sends the job's domain_id and query back with it.
RETRY_FIELDS = ("job_type", "input", "domain_id", "query")


class BadRequest(Exception):
    """Refused before any gRPC call."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def refusing_bad_requests(handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return error_response(exc.status, exc.message)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


# Jobs as JSON, as the original sent them.


def status_name(value: int) -> str:
    try:
        return jobs_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()
    except ValueError:
        return "unspecified"


def _timestamp(job: jobs_pb2.Job, field: str) -> str | None:
    return getattr(job, field).ToJsonString() if job.HasField(field) else None


def _struct(job: jobs_pb2.Job, field: str) -> dict[str, Any] | None:
    # Numbers come back as floats (a Struct holds doubles); they are left so.
    return json_format.MessageToDict(getattr(job, field)) if job.HasField(field) else None


def job_to_json(job: jobs_pb2.Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": status_name(job.status),
        "job_type": job.job_type,
        "domain_id": job.domain_id,
        "query": _struct(job, "query") or {},
        "input": _struct(job, "input") or {},
        "output": _struct(job, "output"),
        "error": original_error(job.error.code, job.error.message) if job.HasField("error") else None,
        "created_at": _timestamp(job, "created_at"),
        "updated_at": _timestamp(job, "updated_at"),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
    }


# Reading requests.


def _jobs(request: Request) -> "JobServiceAsyncStub":
    return request.app.state.jobs


def _job_id(request: Request) -> str:
    job_id = request.path_params["id"]
    if len(job_id) > MAX_ID_CHARS:
        raise BadRequest(f"job {job_id[:40]!r}... not found", 404)
    return job_id


JSON_ONLY = "Content-Type must be application/json"
JSON_WHITESPACE = b" \t\r\n"  # what JSON calls whitespace (bytes.strip() would take \f and \v too)


def _json_content_type(request: Request) -> bool | None:
    """True for a JSON body, False for anything else, None when unsaid."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def _read_body(request: Request) -> bytes:
    if _json_content_type(request) is False:
        raise BadRequest(JSON_ONLY, 415)
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(length) > MAX_BODY:
            raise BadRequest(f"request body is larger than {MAX_BODY} bytes", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise BadRequest(f"request body is larger than {MAX_BODY} bytes", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client went away while sending the request body") from None
    body = b"".join(chunks)
    if body and _json_content_type(request) is None:  # a body without its type: no preflight either
        raise BadRequest(JSON_ONLY, 415)
    return body


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


async def _read_object(request: Request, fields: tuple[str, ...], *, allow_empty: bool = False) -> dict[str, Any]:
    body = await _read_body(request)
    if not body.strip(JSON_WHITESPACE):
        if allow_empty:
            return {}
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    try:  # JSON may escape a lone surrogate, which is no text protobuf can carry
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("request body holds text that is not valid Unicode") from None
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, not {_json_type(value)}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise BadRequest(
            f"unknown field(s) in request body: {', '.join(map(shown, unknown))}; expected {', '.join(fields) or 'none'}"
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _string(body: dict, field: str, *, required: bool = False) -> str:
    value = body.get(field)
    if value is None:
        if required:
            raise BadRequest(f"{field} is required")
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string, not {_json_type(value)}")
    return value


def _int32(body: dict, field: str) -> int:
    value = body.get(field)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be an integer, not {_json_type(value)}")
    if not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise BadRequest(f"{field} is out of range")
    return value


def _check_value(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"{path} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_value(item, f"{path}.{shown(key)}", depth + 1)  # a caller's key: may hold a line break
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{path} is a number out of range")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise BadRequest(f"{path} is a number out of range")


def _object(body: dict, field: str, target: struct_pb2.Struct) -> None:
    """Copies body[field], a JSON object, into `target`; absent or null leaves it unset."""
    value = body.get(field)
    if value is None:
        return
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object, not {_json_type(value)}")
    _check_value(value, field, 1)
    target.update(value)


def _query_int(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or not raw.isascii():  # digits only: no sign, no spaces, no other scripts' digits
        raise BadRequest(f"{name} must be a non-negative integer, got {raw[:40]!r}")
    value = int(raw)
    if value > INT32_MAX:
        raise BadRequest(f"{name} is out of range, got {raw[:40]}")
    return value


# Handlers.


@refusing_bad_requests
async def list_jobs(request: Request) -> Response:
    limit = _query_int(request, "limit")
    offset = _query_int(request, "offset")
    status = request.query_params.get("status") or ""
    if status and status not in set(Status):
        raise BadRequest(f"unknown status {status[:40]!r}; expected one of {', '.join(Status)}")
    job_type = request.query_params.get("job_type") or ""
    if len(job_type) > 100:
        raise BadRequest(f"unknown job_type {job_type[:40]!r}...")
    if limit == 0 and request.query_params.get("limit"):
        return JSONResponse([])  # as the original answered LIMIT 0 (an absent limit is the default page)
    response = await _jobs(request).ListJobs(
        jobs_pb2.ListJobsRequest(
            limit=limit,
            offset=offset,
            status=status_to_proto(Status(status)) if status else jobs_pb2.JOB_STATUS_UNSPECIFIED,
            job_type=job_type,
        ),
        timeout=CALL_TIMEOUT,
        metadata=caller_metadata(),
    )
    # A plain array, as the original answered.
    return JSONResponse([job_to_json(job) for job in response.jobs])


@refusing_bad_requests
async def create_job(request: Request) -> Response:
    body = await _read_object(request, CREATE_FIELDS)
    message = jobs_pb2.CreateJobRequest(
        job_type=_string(body, "job_type", required=True),
        domain_id=_string(body, "domain_id"),
        idempotency_key=_string(body, "idempotency_key"),
        priority=_int32(body, "priority"),
        max_attempts=_int32(body, "max_attempts"),
    )
    _object(body, "query", message.query)
    _object(body, "input", message.input)
    response = await _jobs(request).CreateJob(message, timeout=CALL_TIMEOUT, metadata=caller_metadata())
    # 200, not 201: the original answered a create with 200 and the job.
    return JSONResponse(job_to_json(response.job))


@refusing_bad_requests
async def get_job(request: Request) -> Response:
    response = await _jobs(request).GetJob(jobs_pb2.GetJobRequest(id=_job_id(request)), timeout=CALL_TIMEOUT, metadata=caller_metadata())
    return JSONResponse(job_to_json(response.job))


def _same_images(job: jobs_pb2.Job, body: dict) -> None:
    """A retry runs over the job's own domain and query: a `domain_id` or
    `query` sent with it must say the same (the original UI sends them back
    as the job has them; its query with `ids` alone). What differs is
    refused, not silently ignored."""
    try:
        if body.get("domain_id") not in (None, "") and validate_domain_id(body["domain_id"]) != job.domain_id.lower():
            raise BadRequest("a retry runs over the job's own domain: domain_id differs from the job's; create a new job")
        if body.get("query") is None:
            return
        sent, own = validate_query(body["query"]), validate_query(_struct(job, "query") or {"ids": []})
    except BadInput as exc:
        raise BadRequest(exc.message) from None
    differ = ["ids"] if set(sent.ids) != set(own.ids) else []
    differ += [key for key in ("name", "data_type") if getattr(sent, key) not in (None, getattr(own, key))]
    if differ:
        raise BadRequest(f"a retry runs over the job's own query: query.{', query.'.join(differ)} differs from the job's; create a new job")


@refusing_bad_requests
async def retry_job(request: Request) -> Response:
    job_id = _job_id(request)
    body = await _read_object(request, RETRY_FIELDS)
    message = jobs_pb2.RetryJobRequest(id=job_id, job_type=_string(body, "job_type", required=True))
    _object(body, "input", message.input)
    if body.get("domain_id") not in (None, "") or body.get("query") is not None:
        job = (await _jobs(request).GetJob(jobs_pb2.GetJobRequest(id=job_id), timeout=CALL_TIMEOUT,
                                           metadata=caller_metadata())).job
        _same_images(job, body)
    response = await _jobs(request).RetryJob(message, timeout=CALL_TIMEOUT, metadata=caller_metadata())
    return JSONResponse(job_to_json(response.job))


@refusing_bad_requests
async def cancel_job(request: Request) -> Response:
    job_id = _job_id(request)
    await _read_object(request, (), allow_empty=True)  # nothing, or {}
    response = await _jobs(request).CancelJob(jobs_pb2.CancelJobRequest(id=job_id), timeout=CALL_TIMEOUT, metadata=caller_metadata())
    return JSONResponse(job_to_json(response.job))


def _event(job: jobs_pb2.Job) -> str:
    return f"event: job\ndata: {json.dumps(job_to_json(job), separators=(',', ':'))}\n\n"


SSE_RESUME_FOR = 30.0  # seconds an event stream goes on watching again after its watch broke off UNAVAILABLE
SSE_RESUME_WAIT = 0.5  # seconds before the first new watch; doubles up to SSE_RESUME_MAX_WAIT
SSE_RESUME_MAX_WAIT = 4.0  # seconds


class _Watch:
    """The gRPC watch behind an event stream. The node's WatchJob rides out
    a database outage itself; when the watch breaks off all the same
    (UNAVAILABLE: the node restarting, or its database away for longer than
    it waits) the stream watches again."""

    def __init__(self, jobs: "JobServiceAsyncStub", job_id: str, metadata: Metadata):
        self.jobs = jobs
        self.request = jobs_pb2.WatchJobRequest(id=job_id)
        self.metadata = metadata
        self.call = self._open()

    def _open(self):
        return self.jobs.WatchJob(self.request, metadata=self.metadata)

    def reopen(self) -> None:
        self.call.cancel()
        self.call = self._open()

    def cancel(self) -> None:
        self.call.cancel()


async def _events(watch: _Watch, first: jobs_pb2.WatchJobResponse, ping_interval: float) -> AsyncGenerator[str, None]:
    loop = asyncio.get_running_loop()
    pending: asyncio.Future | None = None
    try:
        yield _event(first.job)
        last = first.job
        broke_at: float | None = None  # when the watch broke off, while it is watched again
        wait = SSE_RESUME_WAIT
        while last.status not in FINAL_STATUSES:
            # One read outstanding at a time: cancelling a read cancels the call,
            # so pings are sent while waiting rather than by timing the read out.
            pending = asyncio.ensure_future(watch.call.read())
            while not (await asyncio.wait({pending}, timeout=ping_interval))[0]:
                yield ": ping\n\n"
            read, pending = pending, None
            try:
                message = read.result()
            except grpc.aio.AioRpcError as exc:
                broke_at = broke_at if broke_at is not None else loop.time()
                if exc.code() != grpc.StatusCode.UNAVAILABLE or loop.time() - broke_at >= SSE_RESUME_FOR:
                    raise
                yield ": ping\n\n"  # a keep-alive while the job is watched again
                await asyncio.sleep(wait)
                wait = min(wait * 2, SSE_RESUME_MAX_WAIT)
                watch.reopen()
                continue
            if message is grpc.aio.EOF:
                return
            broke_at, wait = None, SSE_RESUME_WAIT
            if message.job == last:  # a new watch starts with the job as it is: sent only when it changed
                continue
            yield _event(message.job)
            last = message.job
    except grpc.aio.AioRpcError as exc:
        error = {"error": exc.details() or exc.code().name.lower()}
        yield f"event: error\ndata: {json.dumps(error, separators=(',', ':'))}\n\n"
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
        watch.cancel()


class EventStream(StreamingResponse):
    """Server-Sent Events following a job; the gRPC call ends with the response,
    however it ends (the last event, or the HTTP client going away)."""

    def __init__(self, watch: _Watch, first: jobs_pb2.WatchJobResponse, ping_interval: float):
        self.events = _events(watch, first, ping_interval)
        super().__init__(
            self.events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.watch.cancel()
            await self.events.aclose()


@refusing_bad_requests
async def job_events(request: Request) -> Response:
    watch = _Watch(_jobs(request), _job_id(request), caller_metadata())
    try:
        # The first message before answering, so an unknown job is a plain 404
        # and a node whose database is down a plain 503.
        first = await watch.call.read()
    except BaseException:
        watch.cancel()
        raise
    if first is grpc.aio.EOF:
        watch.cancel()
        return error_response(502, "the node ended the watch without sending the job")
    return EventStream(watch, first, request.app.state.sse_ping_interval)


# The handler of each JobService RPC. Its method and path are the RPC's
# google.api.http annotation (server/bridge/http_rules.py); its OpenAPI
# operation is server/bridge/openapi.py's OPERATIONS under the same name.
HANDLERS: dict[str, Handler] = {
    "CreateJob": create_job,
    "ListJobs": list_jobs,
    "GetJob": get_job,
    "RetryJob": retry_job,
    "CancelJob": cancel_job,
    "WatchJob": job_events,
}


def _by_method(handlers: dict[str, Handler]) -> Handler:
    """One endpoint for all the methods of a path, so that a 405 names them all in `Allow`."""

    async def endpoint(request: Request) -> Response:
        method = "get" if request.method == "HEAD" else request.method.lower()
        return await handlers[method](request)

    return endpoint


def _routes(rules: tuple[http_rules.HttpRule, ...]) -> list[Route]:
    rpcs = {rule.rpc for rule in rules}
    if rpcs != set(HANDLERS):
        raise ValueError(f"RPCs without a REST handler: {sorted(rpcs - set(HANDLERS))}; "
                         f"handlers of no RPC: {sorted(set(HANDLERS) - rpcs)}")
    by_path: dict[str, dict[str, Handler]] = {}
    for rule in rules:
        if rule.method in by_path.setdefault(rule.path, {}):
            raise ValueError(f"{rule.rpc}: {rule.method.upper()} {rule.path} is another RPC's route too")
        by_path[rule.path][rule.method] = HANDLERS[rule.rpc]
    return [Route(path, _by_method(handlers), methods=[method.upper() for method in handlers])
            for path, handlers in by_path.items()]


routes = _routes(http_rules.JOB_SERVICE)
