"""Our errors' answers: one table (server/errors.py ANSWERS), read by the
gRPC services and, through the status, by the bridge's HTTP answers."""

import grpc
import pytest

from server.bridge.errors import HTTP_STATUS
from server.errors import (
    ANSWERS,
    DATABASE_UNAVAILABLE,
    BadInput,
    DatabaseFault,
    DatabaseUnavailable,
    NodeError,
    PeerRefused,
    PeerUnavailable,
    answer_for,
)
from server.grpc_errors import status_for
from worker.upload import UploadFailed

S = grpc.StatusCode


def test_a_grpc_status_has_one_http_answer():
    for kind, answer in ANSWERS.items():
        assert HTTP_STATUS[answer.grpc] == answer.http, kind
    # The bridge's answers, as they have been (tests/test_bridge_rest.py shows them in use).
    assert HTTP_STATUS == {
        S.INTERNAL: 500, S.INVALID_ARGUMENT: 400, S.FAILED_PRECONDITION: 400, S.OUT_OF_RANGE: 400,
        S.NOT_FOUND: 404, S.ALREADY_EXISTS: 409, S.RESOURCE_EXHAUSTED: 413, S.UNAUTHENTICATED: 401,
        S.PERMISSION_DENIED: 403, S.UNAVAILABLE: 503, S.DEADLINE_EXCEEDED: 504,
    }


@pytest.mark.parametrize("exc, status, message", [
    (BadInput("No data found", code="no_images"), S.INVALID_ARGUMENT, "No data found"),
    (PeerRefused("no such model"), S.FAILED_PRECONDITION, "no such model"),
    (PeerUnavailable("Ollama is not reachable"), S.UNAVAILABLE, "Ollama is not reachable"),
    # A kind not in the table answers as its nearest base that is.
    (UploadFailed("domain away", transient=True), S.INTERNAL, "domain away"),
    (NodeError("oops"), S.INTERNAL, "oops"),
    # The database's kinds tell callers less than they tell the logs.
    (DatabaseUnavailable(f"{DATABASE_UNAVAILABLE} (lost the connection: server closed)"), S.UNAVAILABLE,
     DATABASE_UNAVAILABLE),
    (DatabaseFault("internal error: UndefinedColumn"), S.INTERNAL, "internal error"),
    (RuntimeError("a bug"), S.INTERNAL, "internal error"),
])
def test_each_kind_answers_by_the_table(exc, status, message):
    assert status_for(exc) == (status, message)
    if isinstance(exc, NodeError):
        assert answer_for(exc).grpc == status
