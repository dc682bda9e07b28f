"""Runs the decision step of task_timing_v1 (worker/task_timing.py, the
code path jobs take) over a set's cases, one at a time so that each case's
time and tokens are its own."""

import time
from collections.abc import Callable, Sequence

from prometheus_client import REGISTRY

from server.engines import Engine
from server.errors import NodeError
from worker.evaluation.cases import Case
from worker.evaluation.scoring import Outcome
from worker.task_timing import decide

# What an answer that cannot be used ends in: the model's fault, reported for the case, not the run's end.
INVALID = ("bad_model_answer", "prompt_too_long")


def tokens_so_far() -> int:
    """Tokens of every answer this process has had (metrics.MODEL_TOKENS)."""
    return int(sum(sample.value for family in REGISTRY.collect() if family.name == "vlmnode_model_tokens"
                   for sample in family.samples if sample.name == "vlmnode_model_tokens_total"))


async def answer(case: Case, engine: Engine, model: str) -> Outcome:
    before, started = tokens_so_far(), time.perf_counter()
    try:
        decision = await decide(case.rows(), case.task, engine, model)
    except NodeError as exc:
        if exc.code not in INVALID:
            raise
        return Outcome(case, None, None, invalid=exc.message, seconds=time.perf_counter() - started,
                       tokens=tokens_so_far() - before)
    verdict, photos = decision.verdict, case.timeline
    return Outcome(
        case,
        photos[verdict.start.row - 1].image_id if verdict.start else None,
        photos[verdict.end.row - 1].image_id if verdict.end else None,
        seconds=time.perf_counter() - started,
        tokens=tokens_so_far() - before,
        calls=decision.calls,
    )


async def evaluate(cases: Sequence[Case], engine: Engine, model: str,
                   progress: Callable[[int, Outcome], None] = lambda n, o: None) -> list[Outcome]:
    outcomes = []
    for n, case in enumerate(cases, 1):
        outcomes.append(await answer(case, engine, model))
        progress(n, outcomes[-1])
    return outcomes
