"""The bridge's OpenAPI 3.1 document, served at /openapi.json. Written by hand
to match server/bridge/rest.py (and the WebSocket and health endpoints);
tests/test_bridge_rest.py checks that it lists every REST route."""

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

STATUSES = ["pending", "running", "completing", "uploading", "completed", "failed", "cancelling", "cancelled"]
JOB_TYPES = ["task_timing_v1", "vlm_only"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The job's id (a UUID). A malformed id is answered like an unknown one: 404.",
    "schema": {"type": "string", "format": "uuid"},
}

COMMON_ERRORS = {
    "503": _error("The node's gRPC server (or a peer it needs) is not reachable."),
}

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "VLM Node",
        "version": "1.0.0",
        "description": (
            "The HTTP bridge of VLM Node: the original node's REST and WebSocket endpoints, served as a "
            "client of the gRPC API (vlmnode.v1.JobService, vlmnode.v1.InferenceService). Every error is "
            'answered with one JSON body, {"error": "<message>"}.'
        ),
    },
    "paths": {
        "/api/v1/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "1 to 1000; absent or 0 means 100.",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 1000},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": STATUSES}},
                    {"name": "job_type", "in": "query", "schema": {"type": "string", "enum": JOB_TYPES}},
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Job")}, "The jobs (a plain array)."),
                    "400": _error("A bad query parameter."),
                    **COMMON_ERRORS,
                },
            },
            "post": {
                "operationId": "createJob",
                "summary": "Create a job",
                "description": (
                    "The domain query is checked at once: a query matching no data is refused with 400 "
                    '"No data found". A repeated create with the same idempotency_key returns the first job. '
                    "Answered with 200 (as the original did), not 201."
                ),
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CreateJob")}}},
                "responses": {
                    "200": _json(_ref("Job"), "The job, pending."),
                    "400": _error("Malformed JSON, a wrong field, or no data found for the query."),
                    "413": _error("The request body is larger than 1 MiB."),
                    **COMMON_ERRORS,
                },
            },
        },
        "/api/v1/jobs/{id}": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getJob",
                "summary": "Get one job",
                "responses": {
                    "200": _json(_ref("Job"), "The job."),
                    "404": _error("No such job."),
                    **COMMON_ERRORS,
                },
            },
            "put": {
                "operationId": "retryJob",
                "summary": "Retry a finished job with a new input",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RetryJob")}}},
                "responses": {
                    "200": _json(_ref("Job"), "The job, pending again."),
                    "400": _error("Bad body, job_type not the job's, or the job is not finished."),
                    "404": _error("No such job."),
                    "413": _error("The request body is larger than 1 MiB."),
                    **COMMON_ERRORS,
                },
            },
        },
        "/api/v1/jobs/{id}/cancel": {
            "parameters": [JOB_ID],
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job",
                "description": (
                    "A pending job is cancelled at once; a running one becomes cancelling and stops at its "
                    "next step. The body is empty or {}."
                ),
                "responses": {
                    "200": _json(_ref("Job"), "The job, cancelling or cancelled."),
                    "400": _error("The job is already finished, or a bad body."),
                    "404": _error("No such job."),
                    **COMMON_ERRORS,
                },
            },
        },
        "/api/v1/jobs/{id}/events": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "watchJob",
                "summary": "Follow a job as Server-Sent Events",
                "description": (
                    "One `event: job` with the job as `data` now and at every change of status; the stream "
                    "ends after a final status (completed, failed, cancelled). A comment line (`: ping`) is "
                    "sent every 15 s while nothing changes. Should the node fail mid-stream, an "
                    '`event: error` with {"error": ...} ends the stream.'
                ),
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "404": _error("No such job (answered before the stream starts)."),
                    **COMMON_ERRORS,
                },
            },
        },
        "/api/v1/ws": {
            "get": {
                "operationId": "realtimeInference",
                "summary": "Realtime image inference (WebSocket)",
                "description": (
                    "Upgrade to a WebSocket. Binary messages are images, a text message is the prompt; answers "
                    'are JSON text messages {"response": "...", "done": false|true}. The server pings every '
                    "10 s. `?num_predict=` limits the answer length."
                ),
                "parameters": [{"name": "num_predict", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"101": {"description": "Switching to the WebSocket protocol."}},
            },
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the bridge is up",
                "responses": {"200": {"description": "Alive."}},
            },
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: the node's gRPC server answers its health check",
                "responses": {
                    "200": {"description": "Ready."},
                    "503": _error("Not ready."),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {}}}},
            },
        },
    },
    "components": {
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
                            "task_timing_v1: logs, temporal_output and the structured result; "
                            "vlm_only: {responses: [{image_id, timestamp, response}]}. Null until there is one."
                        ),
                    },
                    "error": {
                        "oneOf": [{"type": "null"}, _ref("JobError")],
                    },
                    "created_at": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."},
                    "updated_at": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."},
                    "attempts": {"type": "integer"},
                    "max_attempts": {"type": "integer"},
                    "priority": {"type": "integer"},
                },
            },
            "JobError": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "Query": {
                "type": "object",
                "description": "Which of the domain's data the job reads.",
                "properties": {
                    "ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                    "name": {"type": "string"},
                    "data_type": {"type": "string"},
                },
            },
            "Input": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "prompt": {"type": "string", "description": "The LLM's instruction (task_timing_v1)."},
                    "vlm_prompt": {"type": "string", "description": "The VLM's prompt for each image."},
                    "webhook_url": {"type": "string", "description": "Where the result is posted; empty: nowhere."},
                },
            },
            "CreateJob": {
                "type": "object",
                "required": ["job_type", "query", "domain_id", "input"],
                "additionalProperties": False,
                "properties": {
                    "job_type": {"type": "string", "enum": JOB_TYPES},
                    "query": _ref("Query"),
                    "domain_id": {"type": "string", "format": "uuid"},
                    "input": _ref("Input"),
                    "idempotency_key": {"type": "string", "maxLength": 200},
                    "priority": {"type": "integer", "description": "Higher runs first; default 0."},
                    "max_attempts": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 100,
                        "description": "0 or absent: the node's default.",
                    },
                },
            },
            "RetryJob": {
                "type": "object",
                "required": ["job_type", "input"],
                "additionalProperties": False,
                "properties": {
                    "job_type": {"type": "string", "enum": JOB_TYPES, "description": "Must be the job's type."},
                    "input": _ref("Input"),
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string", "description": "One readable line."}},
            },
        },
    },
}


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(SPEC)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
