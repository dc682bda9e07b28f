"""Small images made with Pillow for tests."""

import io
import struct
import zlib
from datetime import datetime

from PIL import ExifTags, Image


def _exif(exif_datetime: datetime | str | None, orientation: int | None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if exif_datetime is not None:
        if isinstance(exif_datetime, datetime):
            exif_datetime = exif_datetime.strftime("%Y:%m:%d %H:%M:%S")
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = exif_datetime
    return exif


def to_jpeg(image: Image.Image, *, exif_datetime=None, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=95, exif=_exif(exif_datetime, orientation))
    return out.getvalue()


def solid_jpeg(color="red", size=(64, 48), exif_datetime=None, orientation: int | None = None) -> bytes:
    """A JPEG of one colour; `exif_datetime` (datetime or 'YYYY:MM:DD HH:MM:SS') goes in DateTimeOriginal."""
    return to_jpeg(Image.new("RGB", size, color), exif_datetime=exif_datetime, orientation=orientation)


def two_tone_jpeg(top="red", bottom="blue", size=(60, 40), orientation: int | None = None) -> bytes:
    """Top half one colour, bottom half another: shows which way an image was turned."""
    image = Image.new("RGB", size, bottom)
    image.paste(Image.new("RGB", (size[0], size[1] // 2), top), (0, 0))
    return to_jpeg(image, orientation=orientation)


def solid_png(color=(255, 0, 0, 128), size=(64, 48), mode="RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose pixel data is a stub:
    what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
