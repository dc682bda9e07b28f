"""prepare_image: every image is decoded once, upright, small, JPEG; bad input is refused clearly;
decoding keeps to a memory budget (a pixel limit read from the header, few decodes at once)."""

import asyncio
import io
import os
import struct
import threading
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from devpeers.images import png_header_only, solid_jpeg, solid_png, two_tone_jpeg
from server import images
from server.errors import BadInput
from server.images import MAX_PIXELS, PreparedImage, check_image, prepare_image
from tests.fixtures import wait_for


def decode(prepared: PreparedImage) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.jpeg))
    assert image.format == "JPEG"
    assert image.size == (prepared.width, prepared.height)
    return image.convert("RGB")


def near(pixel, color, tolerance=40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=False))


def test_small_jpeg_keeps_its_size_and_colour():
    prepared = prepare_image(solid_jpeg("red", (64, 48)))
    assert (prepared.width, prepared.height) == (64, 48)
    assert near(decode(prepared).getpixel((32, 24)), (255, 0, 0))
    assert prepared.taken_at is None


def test_exif_orientation_is_applied():
    # Stored 60x40 with red on top; orientation 6 means "rotate 90° clockwise to view".
    prepared = prepare_image(two_tone_jpeg("red", "blue", (60, 40), orientation=6))
    image = decode(prepared)
    assert image.size == (40, 60)
    assert near(image.getpixel((35, 30)), (255, 0, 0))  # the top went to the right
    assert near(image.getpixel((5, 30)), (0, 0, 255))
    assert Image.open(io.BytesIO(prepared.jpeg)).getexif().get(0x0112) is None  # no second turn by viewers


def test_large_image_is_scaled_down_keeping_aspect():
    prepared = prepare_image(solid_jpeg("green", (3000, 2000)), max_side=512)
    assert (prepared.width, prepared.height) == (512, 341)
    assert max(decode(prepared).size) == 512


def test_png_with_alpha_becomes_rgb_over_white():
    transparent = prepare_image(solid_png((255, 0, 0, 0)))
    assert near(decode(transparent).getpixel((10, 10)), (255, 255, 255))
    opaque = prepare_image(solid_png((0, 0, 255, 255)))
    assert near(decode(opaque).getpixel((10, 10)), (0, 0, 255))


@pytest.mark.parametrize("mode,color", [("L", 200), ("P", 3), ("CMYK", (0, 255, 255, 0))])
def test_other_modes_become_rgb(mode, color):
    image = Image.new(mode, (20, 10), color)
    out = io.BytesIO()
    image.save(out, "JPEG" if mode == "CMYK" else "PNG")
    prepared = prepare_image(out.getvalue())
    assert decode(prepared).mode == "RGB"
    assert (prepared.width, prepared.height) == (20, 10)


def test_exif_datetime_original_is_read_as_utc():
    prepared = prepare_image(solid_jpeg("red", exif_datetime="2024:03:05 14:30:00"))
    assert prepared.taken_at == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
    assert prepared.taken_at.tzinfo is not None


def test_exif_offset_is_honoured():
    from PIL import ExifTags

    exif = Image.Exif()
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    ifd[ExifTags.Base.DateTimeOriginal] = "2024:03:05 14:30:00"
    ifd[ExifTags.Base.OffsetTimeOriginal] = "+02:00"
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "JPEG", exif=exif)
    taken = prepare_image(out.getvalue()).taken_at
    assert taken.utcoffset() == timedelta(hours=2)
    assert taken == datetime(2024, 3, 5, 12, 30, tzinfo=UTC)


def test_malformed_exif_datetime_is_ignored():
    assert prepare_image(solid_jpeg("red", exif_datetime="not a date")).taken_at is None


def exif_block(*entries: tuple[int, int, int, bytes]) -> bytes:
    """A big-endian EXIF block of (tag, type, count, 4-byte value) entries, as
    written, right or wrong: Pillow's own writer would refuse a wrong one."""
    out = b"Exif\0\0MM\0\x2a" + struct.pack(">IH", 8, len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack(">HHI", tag, kind, count) + value
    return out + b"\0\0\0\0"


ROTATED = (0x0112, 3, 1, struct.pack(">HH", 6, 0))  # Orientation, SHORT: turned a quarter


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\0\0garbage, not TIFF",
        exif_block(ROTATED, (0x011A, 2, 4, b"abc\0")),  # XResolution written as text
    ],
)
@pytest.mark.parametrize("max_side", [64, 20])
def test_a_malformed_exif_block_does_not_refuse_the_image(exif, max_side):
    out = io.BytesIO()
    Image.new("RGB", (50, 40), "red").save(out, "JPEG", exif=exif)
    prepared = prepare_image(out.getvalue(), max_side=max_side)
    assert max(prepared.width, prepared.height) == min(50, max_side)
    if exif.startswith(b"Exif\0\0MM"):  # its orientation is readable: turned upright
        assert prepared.height > prepared.width


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty image"),
        (b"hello, I am not an image at all", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, "not an image"),
    ],
)
def test_non_images_are_refused(data, message):
    with pytest.raises(BadInput, match=message) as refused:
        prepare_image(data)
    assert refused.value.code == "invalid_input"


def test_truncated_jpeg_is_refused():
    whole = solid_jpeg("red", (256, 256))
    with pytest.raises(BadInput, match="not an image"):
        prepare_image(whole[: len(whole) // 2])


def test_too_many_bytes_is_refused():
    with pytest.raises(BadInput, match="image too big"):
        prepare_image(solid_jpeg("red"), max_bytes=100)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_header_only(20000, 20000)
    assert len(bomb) < 200
    with pytest.raises(BadInput, match="image too large: 400000000 pixels"):
        prepare_image(bomb)


def test_own_pixel_limit_names_the_dimensions():
    with pytest.raises(BadInput, match=r"image too large: 8000x6000 pixels"):
        prepare_image(png_header_only(8000, 6000))
    with pytest.raises(BadInput, match=r"image too large: 64x48 pixels"):
        prepare_image(solid_jpeg("red", (64, 48)), max_pixels=1000)


def test_an_upright_small_jpeg_passes_through_unchanged():
    frame = solid_jpeg("green", (320, 240))
    prepared = prepare_image(frame, max_side=640)
    assert prepared.jpeg == frame and (prepared.width, prepared.height) == (320, 240)
    # Too large, or turned by EXIF: decoded and re-encoded.
    assert prepare_image(frame, max_side=160).jpeg != frame
    assert prepare_image(solid_jpeg("green", (320, 240), orientation=6), max_side=640).width == 240


# Decoding under a memory budget.


def test_an_image_over_the_pixel_limit_is_refused_from_its_header():
    # 6300x6300 is what a 131 KB PNG may declare: 120 MB once decoded. The
    # header alone is enough to refuse it (the stub behind it cannot be decoded).
    frame = png_header_only(6300, 6300)
    for refuse in (prepare_image, check_image):
        with pytest.raises(BadInput) as refused:
            refuse(frame)
        assert refused.value.message == f"image too large: 6300x6300 pixels (limit {MAX_PIXELS})"


@pytest.mark.parametrize(
    "size",
    [(2592, 1944), (1920, 2560), (4032, 3024), (3840, 2160), (4096, 4096)],
    ids=["glasses 5 Mpx", "glasses portrait", "phone 12 Mpx", "4K video frame", "the limit"],
)
def test_the_pixel_limit_takes_what_glasses_and_phones_send(size):
    assert check_image(png_header_only(*size)) == ("PNG", *size)


def test_one_pixel_over_the_limit_is_refused():
    with pytest.raises(BadInput, match="image too large: 4097x4096 pixels"):
        check_image(png_header_only(4097, 4096))


def test_a_large_palette_png_is_scaled_down_in_colour():
    # A palette image cannot be resampled as it is; it becomes RGB(A) first,
    # then small, then flat over white.
    image = Image.new("P", (3000, 2000), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (1500, 0, 3000, 2000))
    out = io.BytesIO()
    image.save(out, "PNG", transparency=1)
    prepared = prepare_image(out.getvalue(), max_side=300)
    assert (prepared.width, prepared.height) == (300, 200)
    picture = decode(prepared)
    assert near(picture.getpixel((40, 100)), (255, 0, 0))
    assert near(picture.getpixel((260, 100)), (255, 255, 255))  # transparent: over white


def test_a_large_rgba_png_keeps_its_exif_orientation():
    from PIL import ExifTags

    image = Image.new("RGBA", (3000, 2000), (255, 0, 0, 255))
    image.paste((0, 0, 255, 255), (0, 1000, 3000, 2000))  # blue at the bottom
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # view turned 90° clockwise
    out = io.BytesIO()
    image.save(out, "PNG", exif=exif)
    picture = decode(prepare_image(out.getvalue(), max_side=300))
    assert picture.size == (200, 300)
    assert near(picture.getpixel((180, 150)), (255, 0, 0))  # the top went to the right
    assert near(picture.getpixel((20, 150)), (0, 0, 255))


@pytest.fixture
def two_decode_slots():
    images.set_decode_slots(2)
    yield
    images.set_decode_slots(0)


async def test_decodes_in_flight_are_bounded_per_process(monkeypatch, two_decode_slots):
    inside = most = 0
    lock, release = threading.Lock(), threading.Event()

    def blocking_prepare(data, **limits):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        release.wait(30)
        with lock:
            inside -= 1
        return data

    monkeypatch.setattr(images, "prepare_image", blocking_prepare)
    waiting = [asyncio.create_task(images.prepare(bytes([n]))) for n in range(8)]
    await wait_for(lambda: inside == 2)
    decoders = [t for t in threading.enumerate() if t.name.startswith("image-decode")]
    assert len(decoders) == 2, "one thread a slot, whatever the default executor holds"
    release.set()
    assert await asyncio.gather(*waiting) == [bytes([n]) for n in range(8)]
    assert most == 2


def test_decode_slots_default_to_the_cores_this_process_may_use():
    assert images.decode_slots() == len(os.sched_getaffinity(0))
