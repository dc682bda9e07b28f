"""The scores of a run, overall and per tag: what a store manager asks (was
the task found, how far off were its start and end) and what the
temporal-grounding literature reports (temporal IoU, R@1 at IoU 0.3/0.5/0.7).

A photo is an instant, so for IoU each photo stands for the time from its
own timestamp to the next photo's (the last: the timeline's median interval),
and a span is the time its photos stand for. A predicted span with its start
(or end) not seen runs from the first photo (or to the last). A case whose
answer could not be used counts as found nothing."""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from worker.evaluation.cases import Case

IOU_THRESHOLDS = (0.3, 0.5, 0.7)


@dataclass(frozen=True)
class Outcome:
    """One case's answer: the photos the method named, or why it could name none."""

    case: Case
    start: str | None
    end: str | None
    invalid: str = ""  # why the answer could not be used (then start and end are None)
    seconds: float = 0.0
    tokens: int = 0
    calls: int = 0

    @property
    def found(self) -> bool:
        return self.start is not None or self.end is not None

    def _pair(self, moment: str) -> tuple[int, int] | None:
        """The true and the predicted photo of the start (or end), by place; None: one is missing."""
        truth, said = (self.case.start, self.start) if moment == "start" else (self.case.end, self.end)
        if truth is None or said is None:
            return None
        return self.case.index(truth), self.case.index(said)

    def off_by(self, moment: str) -> int | None:
        """Photos from the true start (or end) to the predicted one."""
        pair = self._pair(moment)
        return None if pair is None else pair[1] - pair[0]

    def seconds_off(self, moment: str) -> float | None:
        pair = self._pair(moment)
        if pair is None:
            return None
        photos = self.case.timeline
        return abs((photos[pair[1]].taken_at - photos[pair[0]].taken_at).total_seconds())

    def iou(self) -> float:
        """Temporal IoU of the predicted span with the true one (0 when nothing was found)."""
        case = self.case
        if not self.found:
            return 0.0
        truth = _interval(case, case.start, case.end)
        said = _interval(case, self.start, self.end)
        overlap = (min(truth[1], said[1]) - max(truth[0], said[0])).total_seconds()
        union = (max(truth[1], said[1]) - min(truth[0], said[0])).total_seconds()
        return max(overlap, 0.0) / union if union > 0 else 0.0


def _interval(case: Case, start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """The time the photos from `start` to `end` stand for (None: from the first, to the last)."""
    times = [p.taken_at for p in case.timeline]
    first = 0 if start is None else case.index(start)
    last = len(times) - 1 if end is None else case.index(end)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    tail = timedelta(seconds=statistics.median(gaps) if gaps else 1.0)
    return times[first], times[last + 1] if last + 1 < len(times) else times[last] + tail


def _share(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class Scores:
    cases: int
    happens: int  # cases where the task happens
    start_exact: float | None  # shares, over the cases whose truth has that moment
    start_within_one: float | None
    end_exact: float | None
    end_within_one: float | None
    both_within_one: float | None  # start and end both within one photo, over the cases where the task happens
    start_error_seconds: float | None  # median absolute, where both the truth and the answer name a photo
    end_error_seconds: float | None
    iou_mean: float | None  # over the cases where the task happens
    recall_at_iou: dict[str, float | None] = field(default_factory=dict)  # "0.5": R@1 at IoU >= 0.5
    presence_precision: float | None = None  # "did the task happen", the task happening the positive
    presence_recall: float | None = None
    invalid: int = 0
    seconds_per_case: float = 0.0
    tokens_per_case: float = 0.0
    calls_per_case: float = 0.0

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> "Scores":
        starts = [o for o in outcomes if o.case.start is not None]
        ends = [o for o in outcomes if o.case.end is not None]
        happening = [o for o in outcomes if o.case.happens]
        found = [o for o in outcomes if o.found]

        def within(o: Outcome, moment: str, photos: int) -> bool:
            off = o.off_by(moment)
            return off is not None and abs(off) <= photos

        def both_within_one(o: Outcome) -> bool:
            return all(within(o, m, 1) if getattr(o.case, m) is not None else getattr(o, m) is None
                       for m in ("start", "end"))

        ious = [o.iou() for o in happening]
        n = len(outcomes) or 1
        return cls(
            cases=len(outcomes),
            happens=len(happening),
            start_exact=_share([within(o, "start", 0) for o in starts]),
            start_within_one=_share([within(o, "start", 1) for o in starts]),
            end_exact=_share([within(o, "end", 0) for o in ends]),
            end_within_one=_share([within(o, "end", 1) for o in ends]),
            both_within_one=_share([both_within_one(o) for o in happening]),
            start_error_seconds=_median([s for o in outcomes if (s := o.seconds_off("start")) is not None]),
            end_error_seconds=_median([s for o in outcomes if (s := o.seconds_off("end")) is not None]),
            iou_mean=statistics.fmean(ious) if ious else None,
            recall_at_iou={f"{t:g}": _share([iou >= t for iou in ious]) for t in IOU_THRESHOLDS},
            presence_precision=_share([o.case.happens for o in found]),
            presence_recall=_share([o.found for o in happening]),
            invalid=sum(bool(o.invalid) for o in outcomes),
            seconds_per_case=sum(o.seconds for o in outcomes) / n,
            tokens_per_case=sum(o.tokens for o in outcomes) / n,
            calls_per_case=sum(o.calls for o in outcomes) / n,
        )


def by_tag(outcomes: Sequence[Outcome]) -> dict[str, Scores]:
    tags = sorted({tag for o in outcomes for tag in o.case.tags})
    return {tag: Scores.of([o for o in outcomes if tag in o.case.tags]) for tag in tags}
