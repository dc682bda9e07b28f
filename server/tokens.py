"""How many tokens a prompt will take, before it is sent.

Ollama has no tokenize call for its clients, and a prompt longer than the
context is not refused: its front is cut off, with nothing said (ollama
v0.32: llm/llama_server.go, completionPromptForRequest). So the node
estimates, errs on the large side, and corrects itself from what Ollama
reports after each answer (`prompt_eval_count`, the prompt's real length).
"""

import math
from collections import deque
from dataclasses import dataclass, field

BYTES_PER_TOKEN = 2.0  # UTF-8 bytes a token covers at the least; English prose is ~4, digits and ids ~2
TEMPLATE_TOKENS = 48  # the model's prompt template around ours (roles, markers, a system line)
IMAGE_TOKENS = 768  # per image until one is measured: Ollama's own guess (server/prompt.go)
SAFETY = 1.1  # measured ratios are trusted to within this factor
OBSERVATIONS = 32  # recent answers a model's ratios are taken from
MIN_TEXT_BYTES = 400  # shorter prompts are mostly template: they say little about the ratio
CUT_SLACK = 8  # tokens either side of a truncation limit where a count may be a cut prompt
MAX_KEEP = 128  # the largest num_keep a model's Modelfile is taken to set


@dataclass
class TokenEstimator:
    """One model's estimates; `observe` each answer to sharpen them."""

    bytes_per_token: float = BYTES_PER_TOKEN
    image_tokens: int = IMAGE_TOKENS
    _text_ratios: deque = field(default_factory=lambda: deque(maxlen=OBSERVATIONS), repr=False)
    _image_costs: deque = field(default_factory=lambda: deque(maxlen=OBSERVATIONS), repr=False)

    def text(self, text: str) -> int:
        return math.ceil(len(text.encode()) / self.bytes_per_token)

    def prompt(self, text: str, images: int = 0) -> int:
        return TEMPLATE_TOKENS + self.text(text) + images * self.image_tokens

    def observe(self, text: str, images: int, prompt_tokens: int, *, window: int) -> None:
        """Learn from an answer whose prompt took `prompt_tokens` in a context of `window`.

        A count at a truncation limit may be a cut prompt, not a real length,
        and is ignored: believing it would make the estimates kinder.
        """
        if prompt_tokens <= 0 or looks_cut(prompt_tokens, window):
            return
        size = len(text.encode())
        if images:
            cost = (prompt_tokens - TEMPLATE_TOKENS - size / self.bytes_per_token) / images
            if cost > 0:
                self._image_costs.append(cost)
                self.image_tokens = math.ceil(max(self._image_costs) * SAFETY)
        elif size >= MIN_TEXT_BYTES:
            self._text_ratios.append(size / max(prompt_tokens - TEMPLATE_TOKENS, 1))
            self.bytes_per_token = min(self._text_ratios) / SAFETY

    def overflowed(self, images: int) -> None:
        """The model refused a prompt we thought would fit: estimate larger from now on."""
        if images:
            self.image_tokens = math.ceil(self.image_tokens * 1.25)
        else:
            self.bytes_per_token /= 1.25


def looks_cut(count: int, window: int) -> bool:
    """Whether a prompt Ollama counted `count` tokens may have been cut to fit `window`."""
    # Ollama v0.32 cuts an overlong prompt to window - (window - keep) // 2
    # tokens, keep being the model's num_keep and a BOS (llm/llama_server.go,
    # contextShiftPromptLimit); older runners cut it to the window itself
    # (v0.11 runner/llamarunner/runner.go).
    half = window - window // 2
    return count >= window - CUT_SLACK or half - CUT_SLACK <= count <= half + MAX_KEEP // 2 + CUT_SLACK
