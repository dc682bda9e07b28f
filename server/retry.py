"""Retry policy as a value: how many tries, and how long to wait between them."""

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryStrategy:
    max_attempts: int = 5
    wait: float = 1.0  # seconds before the second attempt
    exponential_base: float = 2.0
    max_wait: float = 300.0  # seconds
    jitter: float = 0.1  # fraction of the wait added at random, so retries spread out

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.wait * self.exponential_base ** (attempt - 1), self.max_wait)
        return base * (1 + random.uniform(0, self.jitter))

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts
