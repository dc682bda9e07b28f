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
        max_concurrency=settings.ollama_concurrency,
        timeout=settings.ollama_timeout,
    )


async def check_ollama(engine: OllamaEngine, settings: Settings) -> bool:
    """Checks the models at start (pulling missing ones, as the original
    did); a missing Ollama is said in one line, not a crash."""
    try:
        await engine.check_models(pull=settings.ollama_pull)
        return True
    except NodeError as exc:
        log.warning(
            "%s. Start Ollama there, or run `make demo` to try the node against the fake Ollama.", exc.message
        )
        return False
