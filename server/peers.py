"""Builds the clients of the node's peers (Ollama, posemesh) from settings;
shared by the server and the worker."""

import logging

from server.config import Settings
from server.domain import DomainClient
from server.engine import OllamaEngine
from server.errors import NodeError

log = logging.getLogger(__name__)


def domain_client(settings: Settings) -> DomainClient | None:
    if not settings.posemesh_configured:
        return None
    return DomainClient(
        settings.api_url,
        settings.dds_url,
        client_id=settings.client_id,
        email=settings.posemesh_email,
        password=settings.posemesh_password,
        timeout=settings.posemesh_timeout,
    )


def ollama_engine(settings: Settings) -> OllamaEngine:
    return OllamaEngine(
        settings.ollama_host,
        vlm_model=settings.vlm_model,
        llm_model=settings.llm_model,
        num_parallel=settings.ollama_num_parallel,
        timeout=settings.ollama_timeout,
        deadline=settings.ollama_answer_deadline,
        vlm_num_ctx=settings.vlm_num_ctx,
        llm_num_ctx=settings.llm_num_ctx,
        pull=settings.ollama_pull,
    )


async def check_ollama(engine: OllamaEngine, program: str) -> bool:
    """Checks the models at start (pulling missing ones, as the original
    did); a missing Ollama is said in one line, not a crash, but a model
    that cannot do its work stops the process with one line."""
    try:
        await engine.check_models()
        return True
    except NodeError as exc:
        if exc.code == "model_unsuitable":
            raise SystemExit(f"{program}: {exc.message}") from None
        log.warning(
            "%s. Start Ollama there, or run `make demo` to try the node against the fake Ollama.", exc.message
        )
        return False
