"""What the LLM is asked for in task_timing_v1, and how its answer is checked.

The answer is requested with a JSON schema; the model may still name an image
that is not in the timeline, so the answer is checked against the timeline and
its timestamps are taken from there, not from the model.
"""

from typing import Any

from server.errors import PeerUnavailable

_MOMENT = {
    "type": ["object", "null"],
    "properties": {
        "image_id": {"type": "string"},
        "timestamp": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasoning": {"type": "string"},
    },
    "required": ["image_id", "timestamp", "confidence", "reasoning"],
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"start": _MOMENT, "end": _MOMENT, "reasoning": {"type": "string"}},
    "required": ["start", "end", "reasoning"],
}

INSTRUCTIONS = (
    "Below is a timeline of photos taken by smart glasses in a store, one line per photo: "
    "`id,timestamp,event`, where event describes the photo. Using the task description, find the "
    "photo where the task started and the photo where it ended. Answer in JSON with `start` and `end` "
    "(each with image_id, timestamp, confidence between 0 and 1, reasoning; null when the task is not "
    "seen) and an overall `reasoning`."
)


def timeline_csv(rows: list[dict[str, Any]]) -> str:
    """The original's `logs`: a header, then `id,timestamp,event` per image."""
    lines = ["id,timestamp,event"]
    for row in rows:
        event = " ".join(row["caption"].split())
        lines.append(f"{row['image_id']},{row['timestamp']},{event}")
    return "\n".join(lines)


def llm_prompt(task: str, logs: str) -> str:
    return f"{INSTRUCTIONS}\n\nTask: {task}\n\nTimeline:\n{logs}\n"


def _bad(why: str) -> PeerUnavailable:
    return PeerUnavailable(f"the LLM's answer does not fit the timeline: {why}", code="bad_model_answer")


def _moment(answer: dict, key: str, timeline: dict[str, dict]) -> dict | None:
    value = answer.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(f"{key} is not an object")
    image_id = value.get("image_id")
    if image_id not in timeline:
        raise _bad(f"{key}.image_id {image_id!r} is not in the timeline")
    confidence = value.get("confidence")
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0 <= confidence <= 1:
        raise _bad(f"{key}.confidence must be a number between 0 and 1")
    reasoning = value.get("reasoning", "")
    return {
        "image_id": image_id,
        "timestamp": timeline[image_id]["timestamp"],
        "confidence": float(confidence),
        "reasoning": reasoning if isinstance(reasoning, str) else "",
    }


def check_answer(answer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The structured start/end, or PeerUnavailable(bad_model_answer)."""
    if not isinstance(answer, dict):
        raise _bad("not a JSON object")
    timeline = {row["image_id"]: row for row in rows}
    order = {row["image_id"]: n for n, row in enumerate(rows)}
    start = _moment(answer, "start", timeline)
    end = _moment(answer, "end", timeline)
    if start and end and order[end["image_id"]] < order[start["image_id"]]:
        raise _bad("the end comes before the start")
    reasoning = answer.get("reasoning", "")
    return {"start": start, "end": end, "reasoning": reasoning if isinstance(reasoning, str) else ""}
