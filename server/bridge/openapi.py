"""The bridge's OpenAPI 3.1 document, served at /openapi.json.

Its JobService paths are built from the protos' google.api.http annotations
(server/bridge/http_rules.py), as the REST routes are (server/bridge/rest.py);
what each operation takes and answers is written here once, in OPERATIONS,
as are the component schemas: the original node's JSON, not the protos' JSON
mapping. The other paths (the WebSocket, health, metrics, this document) and
the token and origin checks (server/bridge/auth.py) are described by hand.
tests/test_rest_surface.py checks the document against the routes, and
tests/test_fuzz_openapi.py runs schemathesis against it with every check."""

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server import domain, jobs
from server.bridge import http_rules
from server.job_status import Status

STATUSES = [str(status) for status in Status]
JOB_TYPES = list(jobs.JOB_TYPES)
INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}
MAX_TEXT = jobs.MAX_PROMPT_CHARS  # characters of a prompt or a webhook URL
MAX_FILTER = domain.MAX_FILTER_LEN  # characters of query.name and query.data_type
MAX_OFFSET = 10_000_000  # server/store.py MAX_LIST_OFFSET (the bridge reaches no store; a test compares them)
# server/domain.py FORBIDDEN_CHARS as a class of a JSON Schema pattern (ECMA 262).
FORBIDDEN_IN_FILTERS = "".join("\\" + c if c in "\\[]^-" else c for c in sorted(domain.FORBIDDEN_CHARS))


EMPTY = {"type": "string", "maxLength": 0}  # `?limit=`: as if absent, as the original README writes it


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


NOSNIFF = {"X-Content-Type-Options": {"$ref": "#/components/headers/NoSniff"}}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    return {
        "description": description,
        "headers": {**NOSNIFF, **(headers or {})},
        "content": {"application/json": {"schema": schema}},
    }


def _error(description: str, headers: dict | None = None) -> dict:
    return _json(_ref("Error"), description, headers)


JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The job's id (a UUID). A malformed id is answered like an unknown one: 404.",
    "schema": {"type": "string", "format": "uuid"},
}

API_ERRORS = {
    "401": _error(
        "The node wants a bearer token (AUTH_TOKENS) and none or a wrong one came, or it came in the query "
        "where only a header is accepted.",
        {"WWW-Authenticate": {"description": "`Bearer`.", "required": True, "schema": {"const": "Bearer"}}},
    ),
    "403": _error("The request comes from a web page (its `Origin`) that the node does not allow (ALLOWED_ORIGINS)."),
    "503": _error("The node's gRPC server (or a peer it needs, e.g. its database) is not reachable."),
}
WRITE_ERRORS = {
    "413": _error("The request body is larger than 1 MiB."),
    "415": _error("The request has a body that is not `Content-Type: application/json`."),
}

# What the node strips as blank (Python's str.isspace), spelled out: `\\s` means less to JSON Schema's
# regular expressions (ECMA 262) than to Python's.
SPACE = "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
TEXT = {"type": ["string", "null"], "maxLength": MAX_TEXT, "pattern": "^[^\\u0000]*$", "description": "No NUL."}
NON_BLANK = {**TEXT, "type": "string", "pattern": f"^[^\\u0000]*[^{SPACE}\\u0000][^\\u0000]*$", "description": "Not blank; no NUL."}
PORT = "(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
WEBHOOK_URL = {
    **TEXT,
    "pattern": (
        f"^[{SPACE}]*([hH][tT][tT][pP][sS]?://"
        f"(?![^/?#]*localhost\\.?(:[0-9]*)?([/?#]|[{SPACE}]*$))"  # localhost and names under it: loopback
        f"([A-Za-z0-9-]+\\.)+[A-Za-z][A-Za-z0-9-]*\\.?{PORT}([/?#][^\\u0000{SPACE}]*)?)?[{SPACE}]*$"
    ),
    "description": (
        "Where the result is posted: an http(s) URL; empty: nowhere. The pattern describes URLs with a host "
        "name; a literal address is taken too when it is public. The node sends webhooks only to public "
        "addresses unless WEBHOOK_ALLOW_NETWORKS or WEBHOOK_ALLOW_HOSTS allow more: a literal address or "
        "localhost that is not allowed is refused with 400 (`webhook_refused`) at once; a name is checked "
        "when it is resolved, at each delivery, and a delivery refused there fails the job with "
        "`webhook_refused`."
    ),
}
JOB_ERROR_CODES = "e.g. `webhook_failed`, `webhook_refused`, `bad_model_answer`, `no_images`, `upload_failed`"
UPLOAD_RESULTS = {"type": ["boolean", "null"], "description": "Store the output in the job's domain as well."}
INPUT_SCHEMAS = {"task_timing_v1": "TaskTimingInput", "vlm_only": "VlmOnlyInput"}


def PIPELINE(job_type: str) -> dict:  # noqa: N802 (a schema, like the constants beside it)
    """input.job_type within a job whose pipeline is `job_type` by default."""
    return {"type": ["string", "null"], "enum": [job_type, "", None],
            "description": "The pipeline that runs, as the original worker read it; absent: the job's type."}

# The operation of each JobService RPC, keyed by its name; its method and path
# come from the RPC's google.api.http annotation (server/bridge/http_rules.py),
# and _rpc_paths adds what every one has: its operationId, the path's
# parameters, the refusals of a body (with one) and of /api/.
OPERATIONS: dict[str, dict] = {
    "ListJobs": {
        "summary": "List jobs, newest first",
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "description": "1 to 1000; absent or empty means 100; 0 answers an empty list, as the original did.",
                "schema": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 1000}, EMPTY]},
            },
            {
                "name": "offset",
                "in": "query",
                "description": "Absent or empty: 0.",
                "schema": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}, EMPTY]},
            },
            {
                "name": "status",
                "in": "query",
                "description": "Absent or empty: any.",
                "schema": {"type": "string", "enum": [*STATUSES, ""]},
            },
            {
                "name": "job_type",
                "in": "query",
                "description": "Absent or empty: any.",
                "schema": {"type": "string", "enum": [*JOB_TYPES, ""]},
            },
        ],
        "responses": {
            "200": _json({"type": "array", "items": _ref("Job")}, "The jobs (a plain array)."),
            "400": _error("A bad query parameter."),
        },
    },
    "CreateJob": {
        "summary": "Create a job",
        "description": (
            "The domain query is checked at once: a query matching no data (or a domain the node "
            'cannot read) is refused with 400 "No data found". A repeated create with the same '
            "idempotency_key returns the first job. Answered with 200 (as the original did), not 201."
        ),
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CreateJob")}}},
        "responses": {
            "200": _json(_ref("Job"), "The job, pending."),
            "400": _error(
                "Malformed JSON, a wrong field, a webhook_url the node does not send to, or no data "
                "found for the query."
            ),
        },
    },
    "GetJob": {
        "summary": "Get one job",
        "responses": {
            "200": _json(_ref("Job"), "The job."),
            "404": _error("No such job."),
        },
    },
    "RetryJob": {
        "summary": "Retry a finished job with a new input",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RetryJob")}}},
        "responses": {
            "200": _json(_ref("Job"), "The job, pending again."),
            "400": _error("Bad body, job_type not the job's, or the job is not finished."),
            "404": _error("No such job."),
        },
    },
    "CancelJob": {
        "summary": "Cancel a job",
        "description": (
            "A pending job is cancelled at once; a running one becomes cancelling and stops at its "
            "next step. The body is empty (no Content-Type needed) or {}."
        ),
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
        },
        "responses": {
            "200": _json(_ref("Job"), "The job, cancelling or cancelled."),
            "400": _error("The job is already finished, or a bad body."),
            "404": _error("No such job."),
        },
    },
    "WatchJob": {
        "summary": "Follow a job as Server-Sent Events",
        "description": (
            "One `event: job` with the job (components.schemas.Job) as `data` now and at every change "
            "of status; the stream ends after a final status (completed, failed, cancelled). A comment "
            "line (`: ping`) is sent every 15 s while nothing changes. Should the node fail mid-stream, "
            'an `event: error` with {"error": ...} (components.schemas.Error) ends the stream. '
            "EventSource cannot set headers, so the token "
            "may come as `?access_token=`."
        ),
        "security": [{}, {"bearer": []}, {"accessToken": []}],
        "responses": {
            "200": {
                "description": "The event stream.",
                "headers": {
                    **NOSNIFF,
                    "Cache-Control": {"required": True, "schema": {"const": "no-cache"}},
                },
                "content": {
                    "text/event-stream": {
                        # One event (OpenAPI 3.1 has `schema` describe each; 3.2 calls it itemSchema):
                        # `event:` names it, `data:` holds its JSON. `: ping` comments are no events.
                        "schema": {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["event", "data"],
                                    "properties": {
                                        "event": {"const": name},
                                        "data": {
                                            "type": "string",
                                            "contentMediaType": "application/json",
                                            "contentSchema": _ref(schema),
                                        },
                                    },
                                }
                                for name, schema in (("job", "Job"), ("error", "Error"))
                            ]
                        },
                    }
                },
            },
            "404": _error("No such job (answered before the stream starts)."),
            "502": _error("The node ended the watch without sending the job."),
        },
    },
}
PATH_PARAMETERS = {"id": JOB_ID}  # each variable of the rules' paths
PATH_ITEM_METHODS = ("get", "put", "post", "delete", "patch")  # as OpenAPI orders a path's operations


def _operation_id(rpc: str) -> str:
    return rpc[0].lower() + rpc[1:]


def _rpc_paths(rules: tuple[http_rules.HttpRule, ...]) -> dict[str, dict]:
    """The document's paths of `rules`, one operation from OPERATIONS for each."""
    rpcs = {rule.rpc for rule in rules}
    if rpcs != set(OPERATIONS):
        raise ValueError(f"RPCs without an OpenAPI operation: {sorted(rpcs - set(OPERATIONS))}; "
                         f"operations of no RPC: {sorted(set(OPERATIONS) - rpcs)}")
    paths: dict[str, dict] = {}
    for rule in sorted(rules, key=lambda rule: PATH_ITEM_METHODS.index(rule.method)):
        operation = OPERATIONS[rule.rpc]
        if ("requestBody" in operation) != rule.body:
            raise ValueError(f"{rule.rpc}: the operation's requestBody and the annotation's body disagree")
        item = paths.setdefault(rule.path, {"parameters": [PATH_PARAMETERS[name] for name in rule.variables]})
        item[rule.method] = {
            "operationId": _operation_id(rule.rpc),
            **operation,
            "responses": {**operation["responses"], **(WRITE_ERRORS if rule.body else {}), **API_ERRORS},
        }
    for item in paths.values():
        if not item["parameters"]:
            del item["parameters"]
    # In the annotations' order of paths.
    return {path: paths[path] for path in dict.fromkeys(rule.path for rule in rules)}


# The paths that are no JobService RPC: the WebSocket, health, metrics and this document.
OTHER_PATHS: dict[str, dict] = {
    "/api/v1/ws": {
        "get": {
            "operationId": "realtimeInference",
            "summary": "Realtime image inference (WebSocket)",
            "description": (
                "Upgrade to a WebSocket. Binary messages are images, a text message is the prompt; answers "
                "are binary messages, each one JSON object as Ollama streams it (model, created_at, response, "
                "done; on the last done_reason, Ollama's counts, frames and frames_dropped), or with "
                '`?format=text` JSON text messages {"response": "...", "done": false|true}. Images before '
                "any prompt are kept (the newest batch) and answered when it comes. A bad image gets "
                '{"error": "...", "done": false} and the stream goes on; an error that ends it, '
                '{"error": "...", "done": true} before the close. The server pings every '
                "10 s. `?num_predict=` limits the answer length. A browser offers the subprotocols "
                '["vlmnode", "bearer.<token>"] (or the token as `?access_token=`); the bridge picks '
                "`vlmnode`, never echoes the token. A plain GET without the upgrade is answered 426."
            ),
            "security": [{}, {"bearer": []}, {"accessToken": []}],
            "parameters": [
                {
                    "name": "num_predict",
                    "in": "query",
                    "description": "0 (the model's own limit) to 8192; a bad value closes the socket with 1008.",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 8192},
                },
                {
                    "name": "format",
                    "in": "query",
                    "description": "How answers are sent: binary (the original's, by default) or text; "
                    "another value closes the socket with 1008.",
                    "schema": {"type": "string", "enum": ["binary", "text"], "default": "binary"},
                },
            ],
            "responses": {
                "101": {"description": "Switching to the WebSocket protocol."},
                "426": _error(
                    "Not a WebSocket upgrade.",
                    {"Upgrade": {"required": True, "schema": {"const": "websocket"}}},
                ),
                "401": API_ERRORS["401"],
                "403": API_ERRORS["403"],
            },
        },
    },
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Liveness: the bridge is up",
            "security": [],
            "responses": {
                "200": _json(
                    {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                    "Alive.",
                )
            },
        },
    },
    "/ready": {
        "get": {
            "operationId": "ready",
            "summary": "Readiness: the node's gRPC server, its database and Ollama all serve",
            "security": [],
            "responses": {
                "200": _json(_ref("Readiness"), "Ready."),
                "503": _json(_ref("Readiness"), "Not ready: `checks` says what is not serving."),
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "The bridge process's Prometheus metrics",
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "headers": NOSNIFF,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        },
    },}


SPEC: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "VLM Node",
        "version": "1.0.0",
        "description": (
            "The HTTP bridge of VLM Node: the original node's REST and WebSocket endpoints, served as a "
            "client of the gRPC API (vlmnode.v1.JobService, vlmnode.v1.InferenceService). Every error is "
            'answered with one JSON body, {"error": "<message>"}, and every answer carries '
            "`X-Content-Type-Options: nosniff`. A method a path does not serve is answered 405 with `Allow` "
            "naming the ones it does (components.responses.MethodNotAllowed). Requests from a web page carry "
            "`Origin`: pages the node does not allow get 403 under /api/, allowed ones get CORS headers "
            "(preflights included: 204). Request bodies are JSON (`Content-Type: application/json`), at most "
            "1 MiB, nested at most 32 levels."
        ),
    },
    "security": [{}, {"bearer": []}],
    "paths": {**_rpc_paths(http_rules.JOB_SERVICE), **OTHER_PATHS},
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Wanted on /api/ when the node has tokens (AUTH_TOKENS); else the node is open.",
            },
            "accessToken": {
                "type": "apiKey",
                "in": "query",
                "name": "access_token",
                "description": "The token where a browser cannot set headers: event streams and the WebSocket only.",
            },
        },
        "headers": {
            "NoSniff": {"required": True, "schema": {"const": "nosniff"}},
        },
        "responses": {
            "MethodNotAllowed": _error(
                "A method the path does not serve.",
                {"Allow": {"required": True, "description": "The methods the path serves.", "schema": {"type": "string"}}},
            ),
        },
        "schemas": {
            "Job": {
                "type": "object",
                "required": [
                    "id",
                    "status",
                    "job_type",
                    "domain_id",
                    "query",
                    "input",
                    "output",
                    "error",
                    "created_at",
                    "updated_at",
                    "attempts",
                    "max_attempts",
                    "priority",
                ],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": STATUSES},
                    "job_type": {"type": "string", "enum": JOB_TYPES},
                    "domain_id": {"type": "string", "format": "uuid"},
                    "query": _ref("Query"),
                    "input": _ref("Input"),
                    "output": {
                        "type": ["object", "null"],
                        "description": (
                            "task_timing_v1: logs, temporal_output (the reply in words), task, timeline, skipped, "
                            "decision; vlm_only: {responses: [{image_id, timestamp, response, taken_at}], skipped}; "
                            "with input.upload_results, uploaded: {id, name, data_type, size}. Null until there is one."
                        ),
                    },
                    "error": {"oneOf": [{"type": "null"}, _ref("JobError")]},
                    "created_at": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."},
                    "updated_at": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."},
                    "attempts": {"type": "integer", "minimum": 0},
                    "max_attempts": {"type": "integer", "minimum": 1},
                    "priority": {"type": "integer", **INT32},
                },
            },
            "JobError": {
                "type": "object",
                "required": ["code", "reason", "message"],
                "properties": {
                    "code": {"type": "integer", "enum": [100, 200, 400],
                             "description": "The original node's: 400 no images, 200 webhook failed, 100 any other."},
                    "reason": {"type": "string", "description": f"Stable, for programs: {JOB_ERROR_CODES}."},
                    "message": {"type": "string", "description": "One line, for people."},
                },
            },
            "Query": {
                "type": "object",
                "description": "Which of the domain's data the job reads.",
                "required": ["ids"],
                "additionalProperties": False,
                "properties": {
                    "ids": {
                        "type": "array",
                        "maxItems": domain.MAX_IDS,
                        "items": {"type": "string", "format": "uuid"},
                        "description": "[]: all the domain's data.",
                    },
                    "name": {"$ref": "#/components/schemas/QueryFilter"},
                    "data_type": {"$ref": "#/components/schemas/QueryFilter"},
                },
            },
            "QueryFilter": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_FILTER,
                "pattern": f"^[^{FORBIDDEN_IN_FILTERS}\\u0000-\\u001f\\u007f]+$",
                "description": "Leave it out to match any.",
            },
            "Input": {
                "type": "object",
                "description": "A job's input as stored.",
                "additionalProperties": False,
                "properties": {"prompt": TEXT, "vlm_prompt": TEXT, "webhook_url": WEBHOOK_URL,
                               "job_type": {"type": ["string", "null"], "enum": [*JOB_TYPES, "", None]},
                               "upload_results": UPLOAD_RESULTS},
            },
            "TaskTimingInput": {
                "type": "object",
                "required": ["prompt", "vlm_prompt"],
                "additionalProperties": False,
                "properties": {
                    "prompt": {**NON_BLANK, "description": "The LLM's instruction."},
                    "vlm_prompt": {**NON_BLANK, "description": "The VLM's prompt for each image."},
                    "webhook_url": WEBHOOK_URL,
                    "job_type": PIPELINE("task_timing_v1"),
                    "upload_results": UPLOAD_RESULTS,
                },
            },
            "VlmOnlyInput": {
                "type": "object",
                "description": "The VLM's prompt comes from vlm_prompt or, when that is empty, from prompt.",
                "additionalProperties": False,
                "properties": {"prompt": TEXT, "vlm_prompt": TEXT, "webhook_url": WEBHOOK_URL,
                               "job_type": PIPELINE("vlm_only"), "upload_results": UPLOAD_RESULTS},
                "anyOf": [
                    {"required": ["vlm_prompt"], "properties": {"vlm_prompt": NON_BLANK}},
                    {
                        "required": ["prompt"],
                        "properties": {"prompt": NON_BLANK, "vlm_prompt": {"type": ["string", "null"], "maxLength": 0}},
                    },
                ],
            },
            "CreateJob": {
                # The pipeline, and so the input's schema: input.job_type when given, else the job's type.
                "oneOf": [
                    {"allOf": [_ref("CreateJobFields"), {"properties": {
                        "job_type": {"const": job_type},
                        "input": _ref(INPUT_SCHEMAS[pipeline]) if pipeline == job_type else {
                            "allOf": [_ref(INPUT_SCHEMAS[pipeline]), {"required": ["job_type"],
                                                                       "properties": {"job_type": {"const": pipeline}}}]},
                    }}]}
                    for job_type in JOB_TYPES for pipeline in JOB_TYPES
                ],
            },
            "CreateJobFields": {
                "type": "object",
                "required": ["job_type", "query", "domain_id", "input"],
                "additionalProperties": False,
                "properties": {
                    "job_type": {"type": "string", "enum": JOB_TYPES},
                    "query": _ref("Query"),
                    "domain_id": {"type": "string", "format": "uuid"},
                    "input": {"type": "object"},
                    "idempotency_key": {
                        "type": ["string", "null"],
                        "maxLength": 200,
                        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
                        "description": "Printable text; a repeated create with the same key returns the first job.",
                    },
                    "priority": {"type": ["integer", "null"], **INT32, "description": "Higher runs first; default 0."},
                    "max_attempts": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "maximum": 100,
                        "description": "0 or absent: the node's default.",
                    },
                },
            },
            "RetryJob": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["job_type", "input"],
                        "additionalProperties": False,
                        "properties": {
                            "job_type": {"const": job_type, "description": "Must be the job's type."},
                            "input": _ref(schema),
                        },
                    }
                    for job_type, schema in (("task_timing_v1", "TaskTimingInput"), ("vlm_only", "VlmOnlyInput"))
                ],
            },
            "Readiness": {
                "type": "object",
                "required": ["status", "checks"],
                "properties": {
                    "status": {"enum": ["ready", "not ready"]},
                    "checks": {
                        "type": "object",
                        "description": "grpc, postgres, ollama: serving, not_serving, unreachable, ...",
                        "additionalProperties": {"type": "string"},
                    },
                    "model_servers": {
                        "type": "array",
                        "description": "Each model server: serving, or not_serving while it is taken out after "
                                       "failing (the node is ready while each role has one serving).",
                        "items": {
                            "type": "object",
                            "required": ["role", "url", "status"],
                            "properties": {
                                "role": {"enum": ["VLM", "LLM", "VLM+LLM"]},
                                "url": {"type": "string"},
                                "status": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "additionalProperties": False,
                "properties": {"error": {"type": "string", "description": "One readable line."}},
            },
        },
    },
}


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(SPEC)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
