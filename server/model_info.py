"""What Ollama says about a model (`/api/show`): what it can do, and how much
it can read at once."""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Families whose models were trained on several images in one prompt. The
# others (llava, moondream, bakllava, llama3.2-vision) answer about one: given
# several, moondream describes the last (m87-labs/moondream issues 12, 56)
# and Ollama refuses more than one for mllama (server/routes.go).
MULTI_IMAGE_FAMILIES = frozenset({"qwen2vl", "qwen25vl", "qwen3vl", "qwen3vlmoe", "gemma3", "gemma3n", "mistral3", "llama4"})
# The characters Ollama accepts in a name (host/namespace/model:tag), so a
# name with others is refused before it reaches a message or a request
# (ollama/ollama: types/model/name.go, isValidPart).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
MIN_VISION_CONTEXT = 2048  # Ollama gives a vision model at least this (server/sched.go, getRunner)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    capabilities: frozenset[str]
    families: frozenset[str]
    context_length: int | None  # tokens it was trained for; None when Ollama does not say

    @property
    def vision(self) -> bool:
        return "vision" in self.capabilities

    @property
    def several_images(self) -> bool:
        return bool(self.families & MULTI_IMAGE_FAMILIES)

    def window(self, wanted: int) -> int:
        """The context Ollama will give for a request asking `wanted` tokens."""
        window = min(wanted, self.context_length) if self.context_length else wanted
        return max(window, MIN_VISION_CONTEXT) if self.vision else window

    @classmethod
    def from_show(cls, name: str, capabilities: list[str] | None, details: Any, model_info: Mapping | None) -> "ModelInfo":
        info = dict(model_info or {})
        architecture = info.get("general.architecture")
        families = {architecture} if isinstance(architecture, str) else set()
        if details is not None:
            families |= {f for f in [details.family, *(details.families or [])] if f}
        context = info.get(f"{architecture}.context_length")
        return cls(
            name=name,
            capabilities=frozenset(capabilities or ()),
            families=frozenset(families),
            context_length=context if isinstance(context, int) and context > 0 else None,
        )
