"""What the property test modules share: `bounded` settings, `Counts` of
the inputs tried, per target, and the strategies both draw from (inputs
close to valid, stream configs, mutated images).

Each property module keeps one `Counts` and registers `_report_counts =
COUNTS.fixture()`, which prints the module's line after the module (visible
with `-s`) and writes it to artifacts/property-counts.txt, one line per
module, so the file holds the latest figures of every module that ran."""

from __future__ import annotations

import collections
import io
import math
import string
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from devpeers.images import png_header_only, solid_jpeg, solid_png, two_tone_jpeg
from server.config import Settings
from server.jobs import MAX_PROMPT_CHARS
from server.realtime import RealtimeLimits
from vlmnode.v1 import inference_pb2 as pb

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


def one_line(message: object) -> None:
    assert isinstance(message, str) and message.strip(), f"empty message {message!r}"
    assert len(message.splitlines()) == 1, f"message is not one line: {message!r}"
    assert "Traceback" not in message


# --------------------------------------------------------------------------- JSON-like values

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=25,
)

uuids = st.uuids().map(str)
uuid_like = st.one_of(
    uuids,
    uuids.map(str.upper),
    uuids.map(lambda u: f" {u}\t"),
    uuids.map(lambda u: u.replace("-", "")),
    uuids.map(lambda u: u[:-1] + "g"),
    uuids.map(lambda u: u + "\n"),
    st.text(max_size=40),
)
filter_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=20),
    st.text(min_size=250, max_size=260),
)
# Queries close to valid, so the checks past the first are reached too.
near_queries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"ids": st.one_of(st.lists(uuid_like, max_size=6), json_values)},
        optional={"name": st.one_of(filter_text, json_values), "data_type": st.one_of(filter_text, json_values),
                  "extra": json_values},
    ),
)
prompt_text = st.one_of(
    st.text(max_size=40),
    st.just(""),
    st.just("   \n"),
    st.integers(MAX_PROMPT_CHARS - 1, MAX_PROMPT_CHARS + 1).map(lambda n: "p" * n),
)
url_text = st.one_of(
    st.just(""),
    st.sampled_from(["https://example.com/hook", "http://h:1/x", "ftp://example.com", "http://", "example.com",
                     " https://example.com/hook ", "javascript:alert(1)"]),
    st.text(max_size=30),
)
near_inputs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={"prompt": st.one_of(prompt_text, json_values), "vlm_prompt": st.one_of(prompt_text, json_values),
                  "webhook_url": st.one_of(url_text, json_values), "other": json_values},
    ),
)


# --------------------------------------------------------------------------- realtime stream configs

LIMITS = RealtimeLimits.from_settings(Settings())
int32s = st.integers(-(2**31), 2**31 - 1)


def mostly(valid, invalid):
    """Valid values three times in four, so that checks past the first are reached."""
    return st.one_of(valid, valid, valid, invalid)


stream_configs = st.builds(
    lambda model, prompt, batch, num_predict, temperature, flush: pb.StreamConfig(
        model=model, prompt=prompt, batch_size=batch, num_predict=num_predict, flush_after_seconds=flush,
        **({} if temperature is None else {"temperature": temperature}),
    ),
    mostly(st.sampled_from(["", "moondream:1.8b", "llava"]), st.text(max_size=210)),
    mostly(st.text(max_size=20), prompt_text),
    mostly(st.integers(0, LIMITS.max_batch), st.one_of(int32s, st.integers(-2, LIMITS.max_batch + 2))),
    mostly(st.integers(0, LIMITS.max_num_predict), st.one_of(int32s, st.integers(8190, 8194))),
    mostly(st.one_of(st.none(), st.floats(0, 2, width=32)), st.floats(width=32)),
    mostly(st.one_of(st.just(0.0), st.floats(-10, 3600)),
           st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 3600.0001]))),
)


# --------------------------------------------------------------------------- images


def _png(mode: str, color, size=(40, 30), **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG", **save)
    return out.getvalue()


def _encoded(fmt: str, mode: str = "RGB", size=(40, 30), color="green", **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, fmt, **save)
    return out.getvalue()


def _gradient_jpeg() -> bytes:
    image = Image.linear_gradient("L").resize((80, 60)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, progressive=True)
    return out.getvalue()


SEEDS = {
    "jpeg": solid_jpeg("red"),
    "jpeg_exif": solid_jpeg("blue", exif_datetime="2025:08:10 16:40:00", orientation=6),
    "jpeg_big": solid_jpeg("white", size=(1500, 20)),
    "jpeg_two_tone": two_tone_jpeg(orientation=3),
    "jpeg_progressive": _gradient_jpeg(),
    "jpeg_grey": _encoded("JPEG", "L", color=128),
    "jpeg_cmyk": _encoded("JPEG", "CMYK", color=(0, 0, 0, 255)),
    "png_rgba": solid_png(),
    "png_palette": _png("P", 3, transparency=3),
    "png_grey": _png("L", 200),
    "png_16bit": _png("I;16", 1000),
    "png_la": _png("LA", (100, 50)),
    "png_bomb_header": png_header_only(50_000, 50_000),
    "gif": _encoded("GIF", "P", color=5),
    "bmp": _encoded("BMP"),
    "tiff": _encoded("TIFF"),
    "webp": _encoded("WEBP"),
}


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "header"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "header":  # the first bytes hold the format, sizes and offsets
            header_at = draw(st.integers(0, min(len(data), 64)))
            data[header_at : header_at + 2] = draw(st.binary(min_size=2, max_size=2))
    return bytes(data)
