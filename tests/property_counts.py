"""What the property test modules share: `bounded` settings, and `Counts`
of the inputs tried, per target.

Each property module keeps one `Counts` and registers `_report_counts =
COUNTS.fixture()`, which prints the module's line after the module (visible
with `-s`) and writes it to artifacts/property-counts.txt, one line per
module, so the file holds the latest figures of every module that ran."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ARTIFACT = ARTIFACTS / "property-counts.txt"


def keep_hypothesis_files_in_artifacts() -> None:
    """Hypothesis keeps its example database (failing examples, replayed first
    on the next run) under artifacts/hypothesis rather than .hypothesis/ in
    the checkout."""
    import os

    from hypothesis import configuration

    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        configuration.set_hypothesis_home_dir(ARTIFACTS / "hypothesis")


def bounded(n: int):
    """Hypothesis settings for `n` examples with no per-example deadline;
    fixtures are shared across examples on purpose (one server per test)."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Counts:
    def __init__(self, module: str) -> None:
        self.module = module
        self.counts: collections.Counter[str] = collections.Counter()
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()

    def fixture(self):
        """A module-scoped autouse fixture that reports this module's counts."""

        @pytest.fixture(scope="module", autouse=True)
        def report_counts():
            self.start()
            yield
            self.report()

        return report_counts

    def tried(self, target: str, n: int = 1) -> None:
        self.counts[target] += n

    def line(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        seconds = time.monotonic() - self.started
        return f"{self.module}: {total} inputs tried in {seconds:.1f} s ({parts})"

    def report(self) -> str:
        line = self.line()
        print(f"\nproperty tests: {line}")
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        lines = ARTIFACT.read_text().splitlines() if ARTIFACT.exists() else []
        lines = [entry for entry in lines if not entry.startswith(f"{self.module}:")]
        lines.append(line)
        ARTIFACT.write_text("\n".join(sorted(lines)) + "\n")
        return line
