"""How a client reaches the node: target, TLS, bearer token, deadlines.
Shared by `Client` and `AsyncClient`; only the channel class differs."""

from __future__ import annotations

import os
import random
from pathlib import Path

import grpc

from vlmnode._errors import InvalidArgumentError

DEFAULT_TARGET = "localhost:50051"
TARGET_ENV = "VLMNODE_TARGET"
DEFAULT_TIMEOUT = 30.0  # seconds for a unary call; streams have no deadline by default
MAX_RECEIVE_BYTES = 64 * 1024 * 1024  # a job's output can be large
USER_AGENT = "vlmnode-client/0.1.0"
# A create that did not reach the node, or whose answer did not come back in
# time, is sent again with the same idempotency key (the node returns the job
# the first one made, if it made one): at most this many tries in all, ...
CREATE_TRIES = 3
CREATE_RETRY_WAIT = 0.5  # ... seconds before the second, doubling, less up to half at random
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def retry_wait(tries: int, error: grpc.RpcError) -> float | None:
    """Seconds to wait before sending a create again after `tries` tries,
    the last one failing with `error`; None when it is not to be sent again."""
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else None
    if tries >= CREATE_TRIES or code not in RETRIED_CODES:
        return None
    return CREATE_RETRY_WAIT * 2 ** (tries - 1) * random.uniform(0.5, 1.0)


class Connection:
    """Everything needed to open a channel and make calls on it."""

    def __init__(
        self,
        target: str | None,
        *,
        token: str | None,
        tls: bool | None,
        ca_file: str | os.PathLike[str] | None,
        root_certificates: bytes | None,
        timeout: float | None,
    ) -> None:
        target = target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
        if target.startswith("https://"):
            target, tls = target.removeprefix("https://"), True if tls is None else tls
        elif target.startswith("http://"):
            target = target.removeprefix("http://")
        self.target = target.rstrip("/")
        if ca_file is not None:
            try:
                root_certificates = Path(ca_file).read_bytes()
            except OSError as exc:
                raise InvalidArgumentError(f"cannot read the CA file {os.fspath(ca_file)}: {exc.strerror or exc}") from None
        self.tls = bool(root_certificates) if tls is None else tls
        self.root_certificates = root_certificates
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.options = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
            ("grpc.primary_user_agent", USER_AGENT),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
