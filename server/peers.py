"""Builds the clients of the node's peers (the model servers' engines,
posemesh) from settings; shared by the server and the worker."""

import logging
from pathlib import Path

from server.config import Settings
from server.domain import DomainClient
from server.engine import OllamaEngine
from server.engines import Engine, Engines
from server.errors import NodeError
from server.openai_engine import OpenAIEngine

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


def ollama_engine(settings: Settings, host: str, *, vlm: bool = True, llm: bool = True) -> OllamaEngine:
    """The Ollama at `host`, serving the roles asked for."""
    return OllamaEngine(
        host,
        vlm_model=settings.vlm_model if vlm else "",
        llm_model=settings.llm_model if llm else "",
        num_parallel=settings.ollama_num_parallel,
        timeout=settings.ollama_timeout,
        deadline=settings.ollama_answer_deadline,
        vlm_num_ctx=settings.vlm_num_ctx,
        llm_num_ctx=settings.llm_num_ctx,
        pull=settings.ollama_pull,
    )


def _api_key(key: str, key_file: str) -> str:
    return Path(key_file).read_text().strip() if key_file else key


def openai_engine(settings: Settings, role: str) -> OpenAIEngine:
    vlm = role == "VLM"
    return OpenAIEngine(
        settings.vlm_url if vlm else settings.llm_url,
        role="VLM" if vlm else "LLM",
        model=settings.vlm_model if vlm else settings.llm_model,
        api_key=_api_key(settings.vlm_api_key, settings.vlm_api_key_file) if vlm
        else _api_key(settings.llm_api_key, settings.llm_api_key_file),
        slots=settings.vlm_slots if vlm else settings.llm_slots,
        timeout=settings.ollama_timeout,
        deadline=settings.ollama_answer_deadline,
        num_ctx=settings.vlm_num_ctx if vlm else settings.llm_num_ctx,
    )


def engines(settings: Settings) -> Engines:
    """One engine per role; one Ollama for both when both are on the same one, so
    that its slots per model and its connections are shared as Ollama's are."""
    if settings.vlm_backend == settings.llm_backend == "ollama" and settings.vlm_url == settings.llm_url:
        both = ollama_engine(settings, settings.vlm_url)
        return Engines(vlm=both, llm=both)
    vlm: Engine = (
        openai_engine(settings, "VLM") if settings.vlm_backend == "openai"
        else ollama_engine(settings, settings.vlm_url, llm=False)
    )
    llm: Engine = (
        openai_engine(settings, "LLM") if settings.llm_backend == "openai"
        else ollama_engine(settings, settings.llm_url, vlm=False)
    )
    return Engines(vlm=vlm, llm=llm)


async def check_engines(engines: Engines, program: str) -> bool:
    """Checks the models at start (pulling missing ones from Ollama, as the
    original did); a missing server is said in one line, not a crash, but a
    model that cannot do its work stops the process with one line."""
    try:
        await engines.check_models()
        return True
    except NodeError as exc:
        if exc.code == "model_unsuitable":
            raise SystemExit(f"{program}: {exc.message}") from None
        log.warning(
            "%s. Start the model server there, or run `make demo` to try the node against the fake Ollama.",
            exc.message,
        )
        return False
