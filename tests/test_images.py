"""prepare_image: every image is decoded once, upright, small, JPEG; bad input is refused clearly."""

import io
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image

from server.errors import BadInput
from server.images import PreparedImage, prepare_image
from tests.images import png_header_only, solid_jpeg, solid_png, two_tone_jpeg


def decode(prepared: PreparedImage) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.jpeg))
    assert image.format == "JPEG"
    assert image.size == (prepared.width, prepared.height)
    return image.convert("RGB")


def near(pixel, color, tolerance=40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color))


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
    assert prepared.taken_at == datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)
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
    assert taken == datetime(2024, 3, 5, 12, 30, tzinfo=timezone.utc)


def test_malformed_exif_datetime_is_ignored():
    assert prepare_image(solid_jpeg("red", exif_datetime="not a date")).taken_at is None


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
