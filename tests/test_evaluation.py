"""`vlmnode-eval` (worker/evaluation/) over a small slice with the fake
Ollama as the LLM: the fake answers the rows whose caption names the colour
the task names (devpeers/fake_ollama.py Task), so every score below is
worked out by hand from the slice."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures import settings_env
from worker.evaluation.cases import BadCase, case
from worker.evaluation.scoring import Outcome, Scores

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def line(id: str, task: str, captions: list[str], start: int | None, end: int | None, tags: list[str]) -> dict:
    """A case of photos p1.. ten seconds apart; start and end are photo numbers (from 1)."""
    timeline = [{"image_id": f"{id}-p{n}", "timestamp": (T0 + timedelta(seconds=10 * (n - 1))).isoformat()
                 .replace("+00:00", "Z"), "caption": caption} for n, caption in enumerate(captions, 1)]
    truth = {"start": f"{id}-p{start}" if start else None, "end": f"{id}-p{end}" if end else None}
    return {"id": id, "task": task, "timeline": timeline, "truth": truth, "tags": tags, "note": "", "extra": 1}


SLICE = [
    # Found exactly: rows 2-3 name red.
    line("c1", "When was the red box put on the shelf?",
         ["a shelf", "a red box", "a red box on a shelf", "a shelf", "a shelf"], 2, 3, ["clean"]),
    # The captions name red from photo 3, the truth starts at 2: start +1, end exact; IoU 20 s / 30 s.
    line("c2", "When was the red box put on the shelf?",
         ["a shelf", "a person", "a red box", "a red box", "a shelf"], 2, 4, ["ambiguous"]),
    # Never happens, nothing found: right.
    line("c3", "When was the blue box put on the shelf?",
         ["a shelf", "a person", "a shelf", "a floor", "a shelf"], None, None, ["never"]),
    # Never happens, but green is named: a task found that is not there.
    line("c4", "When was the green box put on the shelf?",
         ["a shelf", "a green box", "a green box", "a floor", "a shelf"], None, None, ["never", "lookalike"]),
    # Happens (photos 1-2), but no caption names yellow: missed.
    line("c5", "When was the yellow box put on the shelf?",
         ["a box", "a box on a shelf", "a shelf", "a floor", "a shelf"], 1, 2, ["clean"]),
]


def run_eval(tmp_path, settings, *args, lines=SLICE):
    path = tmp_path / "slice.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in lines))
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "worker.evaluation", str(path), "--json", str(report), *args],
                          env=settings_env(settings), capture_output=True, text=True, timeout=120)
    return done, report


def test_the_command_scores_the_slice_as_worked_out_by_hand(tmp_path, settings, fake_ollama):
    done, report = run_eval(tmp_path, settings)
    assert done.returncode == 0, done.stderr
    overall = json.loads(report.read_text())["overall"]
    third, two_thirds = pytest.approx(1 / 3), pytest.approx(2 / 3)
    assert overall == {
        "cases": 5, "happens": 3,
        "start_exact": third,  # c1 of c1, c2, c5
        "start_within_one": two_thirds,  # c1, c2 (+1)
        "end_exact": two_thirds, "end_within_one": two_thirds,  # c1, c2
        "both_within_one": two_thirds,
        "start_error_seconds": 5.0,  # median of 0 (c1) and 10 (c2)
        "end_error_seconds": 0.0,
        "iou_mean": pytest.approx((1 + 2 / 3 + 0) / 3),
        "recall_at_iou": {"0.3": two_thirds, "0.5": two_thirds, "0.7": third},
        "presence_precision": two_thirds,  # c1, c2 of c1, c2, c4 found
        "presence_recall": two_thirds,  # c1, c2 of c1, c2, c5 happening
        "invalid": 0,
        "seconds_per_case": overall["seconds_per_case"],
        "tokens_per_case": overall["tokens_per_case"],
        "calls_per_case": 1.0,
    }
    assert overall["tokens_per_case"] > 0  # as the fake counted them
    document = json.loads(report.read_text())
    never = document["tags"]["never"]
    assert (never["cases"], never["happens"], never["presence_precision"], never["presence_recall"]) == (2, 0, 0.0, None)
    assert document["tags"]["clean"]["start_exact"] == 0.5 and document["model"] == settings.llm_model
    [c2] = [c for c in document["cases"] if c["id"] == "c2"]
    assert (c2["start_off"], c2["end_off"], c2["iou"]) == (1, 0, pytest.approx(2 / 3, abs=1e-4))
    # The table on stdout, a row per tag; progress on stderr, a line per case.
    table = done.stdout.splitlines()
    assert table[0].split()[:3] == ["cases", "happen", "start"]
    assert [row.split()[0] for row in table[2:6]] == ["all", "ambiguous", "clean", "lookalike"]
    assert table[2].split()[1:4] == ["5", "3", "33%"]
    progress = [ln for ln in done.stderr.splitlines() if ln.startswith("[")]
    assert progress[1].startswith("[2/5] c2: start +1, end +0 photos, IoU 0.67")
    assert progress[2].startswith("[3/5] c3: found nothing: right") and "found a task that never happens" in progress[3]


def test_answers_that_cannot_be_used_are_counted_not_a_crash(tmp_path, settings, fake_ollama):
    """The fake answering ends before starts: the cases it finds anything in are invalid."""
    fake_ollama.mode = "reversed"
    done, report = run_eval(tmp_path, settings)
    assert done.returncode == 0, done.stderr
    document = json.loads(report.read_text())
    assert document["overall"]["invalid"] == 3  # c1, c2, c4: two rows each, reversed
    assert [c["id"] for c in document["cases"] if c["invalid"]] == ["c1", "c2", "c4"]
    assert "end comes before the start" in document["cases"][0]["invalid"]
    assert document["overall"]["presence_recall"] == 0.0 and document["overall"]["presence_precision"] is None


def test_a_bad_set_is_refused_with_its_line_and_asks_nothing(tmp_path, settings, fake_ollama):
    bad = [SLICE[0], {**SLICE[1], "truth": {"start": "nowhere", "end": None}}]
    done, _ = run_eval(tmp_path, settings, lines=bad)
    assert done.returncode == 2 and not fake_ollama.requests
    assert done.stderr.strip().endswith("slice.jsonl:2: truth.start 'nowhere' is not an image_id of the timeline")


def test_an_unreachable_llm_ends_the_run_in_one_line(tmp_path, settings, fake_ollama):
    fake_ollama.stop()
    done, _ = run_eval(tmp_path, settings, "--limit", "1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("vlmnode-eval: Ollama is not reachable at ")


@pytest.mark.parametrize(("change", "why"), [
    ({"truth": {"start": "c1-p3", "end": "c1-p2"}}, "truth.end comes before truth.start"),
    ({"timeline": []}, "timeline must be a non-empty list"),
    ({"task": ""}, "task must be a non-empty string"),
    ({"truth": None}, "truth must be an object"),
])
def test_each_bad_case_says_why(change, why):
    with pytest.raises(BadCase, match=why):
        case({**SLICE[0], **change})


def test_iou_counts_each_photo_until_the_next_and_a_missing_end_runs_to_the_last():
    c = case(line("x", "When was the red box put there?", ["a"] * 5, 2, 3, []))
    assert Outcome(c, "x-p2", "x-p3").iou() == 1.0
    assert Outcome(c, "x-p2", None).iou() == pytest.approx(20 / 40)  # p2..p5 (the last: the median 10 s)
    assert Outcome(c, "x-p4", "x-p5").iou() == 0.0
    assert Scores.of([Outcome(c, None, None, invalid="bad")]).invalid == 1
