"""A labelled set: JSON Lines, one case a line, in the shape sets written
elsewhere use too (extra keys are ignored):

    {"id": "t01", "task": "When did ... start and end?",
     "timeline": [{"image_id": "...", "timestamp": "2026-03-14T09:02:11Z", "caption": "..."}],
     "truth": {"start": "<image_id or null>", "end": "<image_id or null>"},
     "tags": ["interrupted"], "note": "..."}

Both truths null: the task never happens. A line that is not such a case is
refused with its line number and why, before anything is asked of a model."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.store import Caption
from worker.captions import Row


class BadCase(ValueError):
    pass


@dataclass(frozen=True)
class Photo:
    image_id: str
    taken_at: datetime
    caption: str


@dataclass(frozen=True)
class Case:
    id: str
    task: str
    timeline: tuple[Photo, ...]
    start: str | None  # the truth: the first and last photo showing the task under way
    end: str | None
    tags: tuple[str, ...] = ()
    note: str = ""

    @property
    def happens(self) -> bool:
        return self.start is not None or self.end is not None

    def index(self, image_id: str) -> int:
        """The photo's place in the timeline (from 0)."""
        return next(i for i, photo in enumerate(self.timeline) if photo.image_id == image_id)

    def rows(self) -> list[Row]:
        """The timeline as the worker hands it to the decision step."""
        return [Row(Caption(p.image_id, p.taken_at, p.image_id, p.taken_at, p.caption)) for p in self.timeline]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadCase(f"{what} must be a non-empty string")
    return value


def _time(value: Any, what: str) -> datetime:
    try:
        taken = datetime.fromisoformat(_text(value, what).replace("Z", "+00:00"))
    except ValueError:
        raise BadCase(f"{what} {value!r} is not an ISO 8601 time") from None
    return taken if taken.tzinfo else taken.replace(tzinfo=UTC)


def case(value: Any) -> Case:
    """One case read from its JSON value; BadCase saying what is wrong."""
    if not isinstance(value, dict):
        raise BadCase("a case must be a JSON object")
    timeline = value.get("timeline")
    if not isinstance(timeline, list) or not timeline:
        raise BadCase("timeline must be a non-empty list")
    photos = []
    for n, photo in enumerate(timeline):
        if not isinstance(photo, dict):
            raise BadCase(f"timeline[{n}] must be an object")
        caption = photo.get("caption")
        photos.append(Photo(_text(photo.get("image_id"), f"timeline[{n}].image_id"),
                            _time(photo.get("timestamp"), f"timeline[{n}].timestamp"),
                            caption if isinstance(caption, str) else ""))
    ids = [p.image_id for p in photos]
    if len(set(ids)) != len(ids):
        raise BadCase("timeline image_ids must be unique")
    truth = value.get("truth")
    if not isinstance(truth, dict):
        raise BadCase('truth must be an object {"start": ..., "end": ...}')
    start, end = truth.get("start"), truth.get("end")
    for key, found in (("start", start), ("end", end)):
        if found is not None and found not in ids:
            raise BadCase(f"truth.{key} {found!r} is not an image_id of the timeline")
    if start is not None and end is not None and ids.index(end) < ids.index(start):
        raise BadCase("truth.end comes before truth.start")
    tags = value.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadCase("tags must be a list of strings")
    note = value.get("note", "")
    return Case(_text(value.get("id"), "id"), _text(value.get("task"), "task"), tuple(photos), start, end,
                tuple(tags), note if isinstance(note, str) else "")


def read(path: Path) -> list[Case]:
    """Every case of a set, in order; BadCase naming the file and line of the first bad one."""
    cases = list(_cases(path))
    ids = [c.id for c in cases]
    if dupes := sorted({i for i in ids if ids.count(i) > 1}):
        raise BadCase(f"{path}: case ids must be unique: {', '.join(dupes)}")
    if not cases:
        raise BadCase(f"{path}: no cases")
    return cases


def _cases(path: Path) -> Iterator[Case]:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield case(json.loads(line))
        except (ValueError, BadCase) as exc:  # json's errors are ValueErrors
            raise BadCase(f"{path}:{number}: {exc}") from None
