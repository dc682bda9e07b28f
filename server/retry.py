"""Retry policy as a value: how many tries, for how long, and how long to
wait between them."""

import random
from dataclasses import dataclass

MAX_DOUBLINGS = 64  # past this the wait is max_wait anyway; keeps the power finite


@dataclass(frozen=True)
class RetryStrategy:
    max_attempts: int = 5
    wait: float = 1.0  # seconds before the second attempt
    exponential_base: float = 2.0
    max_wait: float = 300.0  # seconds; no wait is longer
    jitter: float = 0.1  # fraction of the wait taken off at random, so retries spread out
    retry_for: float | None = None  # seconds a run of failures is retried for; None: attempts alone decide

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1-based):
        `wait`, doubling, capped at `max_wait`, less up to `jitter` of it."""
        doublings = min(max(failures - 1, 0), MAX_DOUBLINGS)
        base = min(self.wait * self.exponential_base**doublings, self.max_wait)
        return base * (1 - random.uniform(0, self.jitter))

    def should_retry(self, attempt: int, failing_for: float = 0.0) -> bool:
        """Whether to try again after attempt number `attempt` failed, the
        failures having gone on for `failing_for` seconds."""
        if attempt >= self.max_attempts:
            return False
        return self.retry_for is None or failing_for < self.retry_for


def duration(seconds: float) -> str:
    """A span as an operator reads it: "42 s", "15 min 3 s", "2 h 5 min".
    (rescue_jobs in sql/queries.sql writes the same.)"""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
