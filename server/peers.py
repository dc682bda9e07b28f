"""Builds the clients of the node's peers (the model servers' engines,
posemesh) from settings; shared by the server and the worker."""

import logging
from collections import defaultdict
from pathlib import Path

from server.config import RoleSettings, Settings
from server.domain import DomainClient
from server.engine import OllamaEngine
from server.engines import Engine
from server.errors import NodeError
from server.openai_engine import OpenAIEngine
from server.pool import Engines, Pool
from server.tokens import TokenEstimator

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


def ollama_engine(settings: Settings, host: str, *, vlm: bool = True, llm: bool = True,
                  tokens: dict[str, TokenEstimator] | None = None) -> OllamaEngine:
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
        tokens=tokens,
    )


def openai_engine(settings: Settings, role: RoleSettings, url: str,
                  tokens: dict[str, TokenEstimator] | None = None) -> OpenAIEngine:
    return OpenAIEngine(
        url,
        role=role.name,
        model=role.model,
        api_key=Path(role.api_key_file).read_text().strip() if role.api_key_file else role.api_key,
        slots=role.slots,
        timeout=settings.ollama_timeout,
        deadline=settings.ollama_answer_deadline,
        num_ctx=role.num_ctx,
        tokens=tokens,
    )


def role_pool(settings: Settings, role: RoleSettings, *, both: bool = False) -> Pool:
    """The role's servers as one engine; `both`: Ollamas serving the VLM and the LLM."""
    tokens: dict[str, TokenEstimator] = defaultdict(TokenEstimator)
    servers: list[tuple[str, Engine, int]] = []
    for url in role.urls:
        if role.backend == "openai":
            servers.append((url, openai_engine(settings, role, url, tokens), role.slots))
        else:
            ollama = ollama_engine(settings, url, vlm=both or role.name == "VLM", llm=both or role.name == "LLM",
                                   tokens=tokens)
            servers.append((url, ollama, role.slots * (2 if both else 1)))  # Ollama's slots are per model
    return Pool("VLM+LLM" if both else role.name, servers, tokens)


def engines(settings: Settings) -> Engines:
    """One engine per role; one for both when both are on the same Ollamas, so
    that each one's slots per model and its connections are shared as Ollama's are."""
    vlm, llm = settings.role("VLM"), settings.role("LLM")
    if vlm.backend == llm.backend == "ollama" and vlm.urls == llm.urls:
        both = role_pool(settings, vlm, both=True)
        return Engines(vlm=both, llm=both)
    return Engines(vlm=role_pool(settings, vlm), llm=role_pool(settings, llm))


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
