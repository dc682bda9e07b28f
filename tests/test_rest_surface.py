"""The REST surface is described once: the protos' google.api.http annotations
name each JobService route, and both the bridge's routes and its OpenAPI
document are built from them. These tests drive the bridge app in-process
over a JobService stub that records which RPC each request calls (and
answers UNAVAILABLE), so no node is needed."""

import re
import uuid

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from starlette.routing import Route

from server import domain, store
from server.bridge import openapi, rest
from server.bridge.app import create_app
from server.bridge.http_rules import JOB_SERVICE, http_rules

# Bodies that get past the bridge's own checks to the RPC (any domain: the stub reads none).
BODIES = {
    "CreateJob": {"job_type": "vlm_only", "query": {"ids": []}, "domain_id": str(uuid.uuid4()),
                  "input": {"vlm_prompt": "What colour?"}},
    "RetryJob": {"job_type": "vlm_only", "input": {"vlm_prompt": "What colour?"}},
}


def _unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details="the recording stub answers nothing")


class _FailingWatch:
    async def read(self):
        raise _unavailable()

    def cancel(self) -> None:
        pass


class RecordingStub:
    """Stands for the JobService and Health stubs: notes each RPC called, and fails it UNAVAILABLE."""

    def __init__(self):
        self.called: list[str] = []

    def __getattr__(self, rpc: str):
        def call(request, **kwargs):
            self.called.append(rpc)
            if rpc == "WatchJob":
                return _FailingWatch()

            async def fail():
                raise _unavailable()

            return fail()

        return call


@pytest.fixture
async def bridge():
    app = create_app("127.0.0.1:1")
    app.state.jobs = app.state.health = stub = RecordingStub()  # the lifespan, which would set them, is not run
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        yield app, http, stub


def _served(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


async def test_every_annotation_is_a_route_that_calls_its_rpc(bridge):
    _, http, stub = bridge
    for rule in JOB_SERVICE:
        stub.called.clear()
        body = BODIES.get(rule.rpc, {}) if rule.body else None
        response = await http.request(rule.method.upper(), _served(rule.path), json=body)
        assert response.status_code == 503, (rule, response.text)
        assert stub.called == [rule.rpc], rule


def test_every_rest_route_is_an_annotation():
    annotated = {(rule.path, rule.method.upper()) for rule in JOB_SERVICE}
    served = {(route.path, method) for route in rest.routes for method in route.methods - {"HEAD"}}
    assert served == annotated


async def test_the_document_lists_every_route_and_every_operation_is_served(bridge):
    app, http, _ = bridge
    paths = openapi.SPEC["paths"]
    api_routes = [route for route in app.routes if isinstance(route, Route) and route.path.startswith("/api/")]
    assert {route.path for route in api_routes} >= {rule.path for rule in JOB_SERVICE} | {"/api/v1/ws"}
    for route in api_routes:
        assert {method.lower() for method in route.methods - {"HEAD"}} == set(paths[route.path]) - {"parameters"}, route.path
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            body = {} if "requestBody" in operation else None
            response = await http.request(method.upper(), _served(path), json=body)
            assert response.status_code not in (404, 405), (method, path, response.status_code, response.text)


def test_the_document_is_built_from_the_annotations():
    paths = openapi.SPEC["paths"]
    for rule in JOB_SERVICE:
        item = paths[rule.path]
        operation = item[rule.method]
        assert operation["operationId"] == rule.rpc[0].lower() + rule.rpc[1:]
        parameters = item.get("parameters", [])
        assert [p["name"] for p in parameters] == rule.variables, rule
        assert all(p["in"] == "path" and p["required"] for p in parameters), rule
        assert ("requestBody" in operation) == rule.body, rule
        assert {"401", "403", "503"} <= set(operation["responses"]), rule
        assert ({"413", "415"} <= set(operation["responses"])) == rule.body, rule
    operation_ids = [op["operationId"] for item in paths.values() for key, op in item.items() if key != "parameters"]
    assert len(operation_ids) == len(set(operation_ids))


def test_the_document_holds_the_limits_the_node_checks():
    assert openapi.MAX_OFFSET == store.MAX_LIST_OFFSET
    query = openapi.SPEC["components"]["schemas"]["Query"]["properties"]
    assert query["ids"]["maxItems"] == domain.MAX_IDS
    pattern = re.compile(openapi.SPEC["components"]["schemas"]["QueryFilter"]["pattern"])
    refused = {chr(c) for c in range(0x20, 0x7F) if not pattern.match(f"a{chr(c)}b")}
    assert refused == domain.FORBIDDEN_CHARS


def _service(path: str, *, custom: bool = False, additional: bool = False):
    """A one-method service in a pool of its own, whose method has this annotation."""
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3",
                                              dependency=["google/api/annotations.proto"])
    file.message_type.add(name="M")
    method = file.service.add(name="S").method.add(name="Get", input_type=".t.M", output_type=".t.M")
    rule = method.options.Extensions[annotations_pb2.http]
    if custom:
        rule.custom.kind, rule.custom.path = "HEAD", path
    else:
        rule.get = path
    if additional:
        rule.additional_bindings.add(get=path + "/again")
    pool.Add(file)
    return pool.FindServiceByName("t.S")


def test_an_annotation_the_bridge_cannot_serve_stops_it():
    assert [(r.method, r.path, r.variables) for r in http_rules(_service("/x/{name}/y"))] == [
        ("get", "/x/{name}/y", ["name"])]
    for service, match in [
        (_service("/x/{name=things/*}"), "not one whole segment"),
        (_service("/x/**"), "not one whole segment"),
        (_service("/x", custom=True), "only one"),
        (_service("/x", additional=True), "only one"),
    ]:
        with pytest.raises(ValueError, match=match):
            http_rules(service)
