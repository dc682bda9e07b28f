"""Images go through Pillow once: checked, turned upright, scaled down, re-encoded.

Decoding is where memory goes: a 131 KB PNG can declare 6300x6300 pixels and
take 120 MB once decoded, and each conversion of it as much again. So the
budget has three parts:

- a pixel limit (`MAX_PIXELS`, IMAGE_MAX_PIXELS), checked from the header
  before anything is decoded;
- a decode that shrinks first: JPEGs decode at 1/2, 1/4 or 1/8 scale when the
  model's size allows (`draft`), other formats are scaled down (`reduce`
  first, then resampled) before any full-size copy is made;
- few decodes at once: `prepare` and `tile` run in this process's decode pool,
  one thread per slot (IMAGE_DECODE_SLOTS, default one per core), whoever
  asks (realtime streams and job captions alike). A slot holds at most about
  `max_pixels` x 4 bytes twice over while it decodes.

`prepare_image` and `contact_sheet` are pure and CPU-bound; async callers
await `prepare` and `tile`, never `asyncio.to_thread`, which would decode on
as many threads as the default executor has.
"""

import asyncio
import functools
import io
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import ParamSpec, TypeVar

from PIL import ExifTags, Image, ImageDraw

from server.config import Settings
from server.errors import BadInput

# What a caller that gives none takes: the settings' defaults (IMAGE_MAX_SIDE,
# the longest side sent to the model; IMAGE_MAX_PIXELS, width x height of the
# decoded input, whose decode at 16.8 Mpx takes 50 MB (RGB) to 67 MB (RGBA)).
MAX_SIDE = Settings.image_max_side
MAX_PIXELS = Settings.image_max_pixels
MAX_BYTES = 20 * 1024 * 1024  # bytes of encoded input
JPEG_QUALITY = 85
EXIF_DATETIME_FORMAT = "%Y:%m:%d %H:%M:%S"


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes
    width: int
    height: int
    taken_at: datetime | None  # EXIF DateTimeOriginal, tz-aware (UTC unless EXIF gives an offset)


def prepare_image(
    data: bytes,
    *,
    max_side: int = MAX_SIDE,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> PreparedImage:
    """Decode `data`, turn it upright by EXIF, shrink it to `max_side` and re-encode it as JPEG.

    Raises BadInput for empty, oversized, undecodable or decompression-bomb input.
    """
    image = _open(data, max_bytes, max_pixels)
    with image:
        if _usable_as_is(image, max_side):
            # Already an upright JPEG the model can take: re-encoding would cost
            # milliseconds per realtime frame and lose quality. Decoding at 1/8
            # scale still reads the whole stream, so a truncated file is caught.
            width, height = image.size
            image.draft("RGB", (width // 8 or 1, height // 8 or 1))
            _load(image)
            return PreparedImage(jpeg=data, width=width, height=height, taken_at=_taken_at(image))
        image.draft("RGB", (max_side, max_side))  # JPEG only: decode at a reduced scale when possible
        _load(image)
        taken_at = _taken_at(image)
        small = _shrunk(image, max_side)
    # Turned and flattened once small: each is a copy, cheap at this size.
    turn = UPRIGHT.get(_orientation(small))
    rgb = _to_rgb(small.transpose(turn) if turn is not None else small)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=JPEG_QUALITY)
    return PreparedImage(jpeg=out.getvalue(), width=rgb.width, height=rgb.height, taken_at=taken_at)


async def prepare(
    data: bytes,
    *,
    max_side: int = MAX_SIDE,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> PreparedImage:
    """`prepare_image` in this process's decode pool: at most `decode_slots()`
    images are decoded at once, however many callers wait."""
    return await _in_pool(prepare_image, data, max_side=max_side, max_bytes=max_bytes, max_pixels=max_pixels)


async def tile(jpegs: Sequence[bytes], *, max_side: int = MAX_SIDE) -> bytes:
    """`contact_sheet` in this process's decode pool."""
    return await _in_pool(contact_sheet, jpegs, max_side=max_side)


def contact_sheet(jpegs: Sequence[bytes], *, max_side: int = MAX_SIDE) -> bytes:
    """Frames (prepared JPEGs) tiled in one image, in order, left to right and top to
    bottom, each numbered in its corner: how a model that sees one image sees a batch."""
    frames = [Image.open(io.BytesIO(data)) for data in jpegs]
    cols = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / cols)
    tile_w, tile_h = max(f.width for f in frames), max(f.height for f in frames)
    scale = min(1.0, max_side / (cols * tile_w), max_side / (rows * tile_h))
    tile_w, tile_h = max(int(tile_w * scale), 1), max(int(tile_h * scale), 1)
    sheet = Image.new("RGB", (cols * tile_w, rows * tile_h), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for n, frame in enumerate(frames):
        frame.thumbnail((tile_w, tile_h), Image.Resampling.LANCZOS)
        x, y = (n % cols) * tile_w, (n // cols) * tile_h
        sheet.paste(frame.convert("RGB"), (x, y))
        if tile_w >= 48 and tile_h >= 32:  # a number too small to read would only be noise
            draw.rectangle((x, y, x + 16, y + 14), fill=(0, 0, 0))
            draw.text((x + 3, y + 1), str(n + 1), fill=(255, 255, 255))
        frame.close()
    out = io.BytesIO()
    sheet.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


# The decode pool. One per process, made at its first use.

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_slots = 0  # 0: one per core


def set_decode_slots(slots: int) -> None:
    """How many images this process decodes at once (IMAGE_DECODE_SLOTS; 0:
    one per core). Call at start, before the first decode."""
    global _pool, _slots
    if slots < 0:
        raise ValueError("decode slots must be 0 or more")
    with _pool_lock:
        _slots = slots
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)  # what it runs finishes; new work goes to a pool of the new size


def decode_slots() -> int:
    return _slots or _cores()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on, not the machine's
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


P = ParamSpec("P")
T = TypeVar("T")


async def _in_pool(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=decode_slots(), thread_name_prefix="image-decode")
        pool = _pool
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))


RESAMPLED_MODES = ("RGB", "RGBA", "L", "LA")  # modes Pillow resamples as they are


def _shrunk(image: Image.Image, max_side: int) -> Image.Image:
    """A new image of at most `max_side` a side, made before any full-size copy
    but the one a mode needs (a palette image is resampled only as RGB(A)).
    EXIF and the rest of `info` go with it."""
    work = image
    if image.mode not in RESAMPLED_MODES or "transparency" in image.info:
        work = image.convert("RGBA" if _transparent(image) else "RGB")
    # In place; a much larger image is first reduced by a whole factor (reducing_gap).
    work.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return work.copy() if work is image else work


def _transparent(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _usable_as_is(image: Image.Image, max_side: int) -> bool:
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and max(image.size) <= max_side
        and _orientation(image) == 1
    )


# What turns an image of each EXIF orientation upright, as Pillow's
# ImageOps.exif_transpose does; that one also rewrites the EXIF block, which
# fails on a block with mistyped tags, and the JPEG we send carries none.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """EXIF orientation, 1 (upright) when the EXIF block is unreadable: Pillow
    raises SyntaxError ("not a TIFF file") for a malformed one, which glasses'
    and phones' files carry now and then without being broken images."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except Exception:
        raise BadInput("not an image: the file is truncated or corrupt") from None


def check_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """Format, width and height from the header alone: a cheap check that
    `data` is an image we would accept, without decoding it."""
    with _open(data, max_bytes, max_pixels) as image:
        return image.format or "", image.width, image.height


def _open(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """The image with only its header read, after the size checks."""
    if not data:
        raise BadInput("empty image")
    if len(data) > max_bytes:
        raise BadInput(f"image too big: {len(data)} bytes (limit {max_bytes})")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own, global limit struck before ours; its message carries the pixel count.
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise BadInput(f"image too large: {pixels[1] if pixels else 'too many'} pixels (limit {max_pixels})") from None
    except Exception:
        raise BadInput("not an image") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise BadInput(f"image too large: {width}x{height} pixels (limit {max_pixels})")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency laid over white (not the black that a plain convert gives)."""
    if _transparent(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def _taken_at(image: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal (with OffsetTimeOriginal when present, else UTC), or None."""
    try:
        exif = image.getexif().get_ifd(ExifTags.IFD.Exif)
        raw = exif.get(ExifTags.Base.DateTimeOriginal)
        if not isinstance(raw, str):
            return None
        taken = datetime.strptime(raw.strip("\x00 "), EXIF_DATETIME_FORMAT)
        return taken.replace(tzinfo=_exif_offset(exif.get(ExifTags.Base.OffsetTimeOriginal)))
    except Exception:  # absent or malformed EXIF is common and never fatal
        return None


def _exif_offset(raw: object) -> timezone:
    match = re.fullmatch(r"([+-])(\d\d):(\d\d)", raw.strip("\x00 ")) if isinstance(raw, str) else None
    if not match:
        return UTC
    sign = 1 if match[1] == "+" else -1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))
