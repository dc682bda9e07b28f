"""A run's scores as the terminal shows them (one row overall, one per tag)
and as the JSON report keeps them, for comparing runs."""

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from worker.evaluation.scoring import IOU_THRESHOLDS, Outcome, Scores, by_tag

COLUMNS = ("", "cases", "happen", "start =", "±1", "end =", "±1", "both ±1", "start s", "end s", "IoU",
           *(f"R@{t:g}" for t in IOU_THRESHOLDS), "P", "R", "invalid", "s/case", "tokens")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(label: str, s: Scores) -> list[str]:
    return [
        label, str(s.cases), str(s.happens), _share(s.start_exact), _share(s.start_within_one), _share(s.end_exact),
        _share(s.end_within_one), _share(s.both_within_one), _number(s.start_error_seconds, 0),
        _number(s.end_error_seconds, 0), _number(s.iou_mean, 2),
        *(_share(s.recall_at_iou[f"{t:g}"]) for t in IOU_THRESHOLDS),
        _number(s.presence_precision, 2), _number(s.presence_recall, 2), str(s.invalid),
        _number(s.seconds_per_case), f"{s.tokens_per_case:.0f}",
    ]


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [list(COLUMNS), _row("all", Scores.of(outcomes))]
    rows += [_row(tag, scores) for tag, scores in by_tag(outcomes).items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
             strict=True))) for row in rows]
    legend = ("start/end =: the exact photo; ±1: within one photo; both ±1: start and end (or 'never') right "
              "within one photo; start/end s: median error in seconds; IoU: temporal IoU, mean; R@x: share "
              "with IoU >= x; P, R: precision and recall of 'the task happened'; invalid: answers not usable.")
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], "", legend])


def case_line(n: int, total: int, o: Outcome) -> str:
    """One case as progress: what was found beside the truth."""
    if o.invalid:
        said = f"invalid: {o.invalid[:100]}"
    elif not o.case.happens:
        said = "found nothing: right" if not o.found else "found a task that never happens"
    elif not o.found:
        said = "found nothing: missed"
    else:
        offs = [f"{m} {'?' if (d := o.off_by(m)) is None else f'{d:+d}'}" for m in ("start", "end")]
        said = f"{', '.join(offs)} photos, IoU {o.iou():.2f}"
    return f"[{n}/{total}] {o.case.id}: {said} ({o.seconds:.1f} s)"


def document(outcomes: Sequence[Outcome], about: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: what was run, the scores, and every case's answer."""
    return {
        **about,
        "overall": asdict(Scores.of(outcomes)),
        "tags": {tag: asdict(scores) for tag, scores in by_tag(outcomes).items()},
        "cases": [
            {
                "id": o.case.id, "tags": list(o.case.tags),
                "truth": {"start": o.case.start, "end": o.case.end},
                "answer": {"start": o.start, "end": o.end}, "invalid": o.invalid or None,
                "start_off": o.off_by("start"), "end_off": o.off_by("end"),
                "iou": round(o.iou(), 4) if o.case.happens else None,
                "seconds": round(o.seconds, 3), "tokens": o.tokens, "calls": o.calls,
            }
            for o in outcomes
        ],
    }
