"""Images go through Pillow once: checked, turned upright, scaled down, re-encoded.

`prepare_image` is pure and CPU-bound; async callers run it in a thread
(`await asyncio.to_thread(prepare_image, data)`).
"""

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from PIL import ExifTags, Image, ImageDraw, ImageOps

from server.errors import BadInput

MAX_SIDE = 1024  # pixels, longest side sent to the model
MAX_BYTES = 20 * 1024 * 1024  # bytes of encoded input
MAX_PIXELS = 40_000_000  # width * height of the decoded input
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
        upright = ImageOps.exif_transpose(image)
        rgb = _to_rgb(upright)
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        rgb.save(out, "JPEG", quality=JPEG_QUALITY)
    return PreparedImage(jpeg=out.getvalue(), width=rgb.width, height=rgb.height, taken_at=taken_at)


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


def _usable_as_is(image: Image.Image, max_side: int) -> bool:
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and max(image.size) <= max_side
        and image.getexif().get(ExifTags.Base.Orientation, 1) == 1
    )


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
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
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
        return timezone.utc
    sign = 1 if match[1] == "+" else -1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))
