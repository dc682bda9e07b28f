"""VLM Node client.

    from vlmnode import AnswerChunk, Client

    with Client("localhost:50051") as node:
        for item in node.infer("photos/", "What is on the shelf?"):
            if isinstance(item, AnswerChunk):
                print(item.text, end="\n" if item.done else "", flush=True)

`Client` blocks, `AsyncClient` awaits; both return the dataclasses below and
raise `VlmNodeError` (or one of its subclasses) for anything that goes wrong
on the way to or at the node. Generated messages and stubs live in
`vlmnode.v1`; the `vlmnode` command is `vlmnode.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmnode._client import AsyncClient, Client
    from vlmnode._errors import InvalidArgumentError, NotFoundError, UnavailableError, VlmNodeError
    from vlmnode._types import AnswerChunk, Frame, Job, JobError, Notice

# Names are imported when first used, so that `vlmnode.cli` can set up grpc
# (its logging) before grpc is imported.
_HOMES = {
    "AsyncClient": "vlmnode._client",
    "Client": "vlmnode._client",
    "InvalidArgumentError": "vlmnode._errors",
    "NotFoundError": "vlmnode._errors",
    "UnavailableError": "vlmnode._errors",
    "VlmNodeError": "vlmnode._errors",
    "AnswerChunk": "vlmnode._types",
    "Frame": "vlmnode._types",
    "Job": "vlmnode._types",
    "JobError": "vlmnode._types",
    "Notice": "vlmnode._types",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vlmnode' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
