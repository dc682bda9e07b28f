"""The REST route of each JobService RPC, as its protos declare it: the
`google.api.http` annotation on each method of protos/vlmnode/v1/jobs.proto,
read from the generated descriptors. The bridge's routes (server/bridge/rest.py)
and the paths of its OpenAPI document (server/bridge/openapi.py) are both built
from these, so a route is declared in one place, the proto.

Only what the bridge can serve as written is taken: one binding per RPC, a
method and a path whose variables are whole segments (`{id}`, which Starlette
matches as Google's HTTP mapping does). Anything else stops the bridge at
import, rather than leave an RPC without its route."""

import re
from dataclasses import dataclass

from google.api import annotations_pb2
from google.protobuf.descriptor import ServiceDescriptor

from vlmnode.v1 import jobs_pb2

SEGMENT_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
ANY_VARIABLE = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True)
class HttpRule:
    rpc: str  # the method's name in its service: "CreateJob"
    method: str  # lower case, as OpenAPI writes it: "post"
    path: str  # "/api/v1/jobs/{id}"
    body: bool  # the request has a body (`body: "*"`)

    @property
    def variables(self) -> list[str]:
        """The path's variables, in order: ["id"]."""
        return SEGMENT_VARIABLE.findall(self.path)


def http_rules(service: ServiceDescriptor) -> tuple[HttpRule, ...]:
    rules = []
    for method in service.methods:
        options = method.GetOptions()
        where = f"{service.full_name}.{method.name}"
        if not options.HasExtension(annotations_pb2.http):
            raise ValueError(f"{where} has no google.api.http annotation")
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb in (None, "custom") or rule.additional_bindings:
            raise ValueError(f"{where}: only one get, put, post, delete or patch binding is served")
        path = getattr(rule, verb)
        if "*" in path or len(ANY_VARIABLE.findall(path)) != len(SEGMENT_VARIABLE.findall(path)):
            raise ValueError(f"{where}: path {path!r} has a variable that is not one whole segment")
        rules.append(HttpRule(rpc=method.name, method=verb, path=path, body=bool(rule.body)))
    return tuple(rules)


JOB_SERVICE = http_rules(jobs_pb2.DESCRIPTOR.services_by_name["JobService"])
