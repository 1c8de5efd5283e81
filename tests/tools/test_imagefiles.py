"""The stored page-image format: round trips, atomic saves, thumbnails, encoding for models."""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pagelens.errors import BadInputError, NotFoundError
from pagelens.tools.imagefiles import (
    PAGE_SUFFIX,
    EncodedImage,
    encode_image,
    load_page_image,
    save_page_image,
    save_thumbnail,
)


def text_page(width: int = 612, height: int = 792) -> Image.Image:
    """A white page with black text and a coloured rule: the edges a lossy format would damage first."""
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    for line in range(0, height - 40, 24):
        draw.text((36, 20 + line), f"Line {line // 24}: the quick brown fox jumps over the lazy dog 0123456789",
                  fill="black")
    draw.line([(36, height - 20), (width - 36, height - 20)], fill=(200, 30, 30), width=2)
    return page


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_page_image_round_trip(tmp_path):
    page = text_page()
    path = tmp_path / f"page{PAGE_SUFFIX}"
    save_page_image(page, path)
    loaded = load_page_image(path)
    assert loaded.mode == "RGB" and loaded.size == page.size
    assert psnr(page, loaded) > 40


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to list open files")
def test_loaded_page_image_holds_no_open_file(tmp_path):
    path = tmp_path / f"page{PAGE_SUFFIX}"
    save_page_image(text_page(), path)
    image = load_page_image(path)
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(path.resolve()) not in open_files
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_transparent_pixels_are_stored_as_white_paper(tmp_path):
    path = tmp_path / f"page{PAGE_SUFFIX}"
    save_page_image(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), path)
    assert min(load_page_image(path).getpixel((32, 32))) >= 250


def test_saves_leave_no_temporary_files(tmp_path):
    path = tmp_path / f"page{PAGE_SUFFIX}"
    save_page_image(text_page(), path)
    save_page_image(text_page(300, 400), path)
    save_thumbnail(text_page(), tmp_path / f"thumb{PAGE_SUFFIX}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"page{PAGE_SUFFIX}", f"thumb{PAGE_SUFFIX}"]
    assert load_page_image(path).size == (300, 400)


def test_a_save_killed_midway_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / f"page{PAGE_SUFFIX}"
    save_page_image(text_page(), path)
    before = path.read_bytes()

    def write_half_then_die(self, fp, *args, **kwargs):
        fp.write(b"\xff\xd8 half a jpeg")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_page_image(text_page(300, 400), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [f"page{PAGE_SUFFIX}"]


def test_page_image_path_must_carry_the_stored_suffix(tmp_path):
    with pytest.raises(BadInputError, match=r"page\.png does not end in \.jpg.*name it page\.jpg"):
        save_page_image(text_page(), tmp_path / "page.png")


def test_thumbnail_fits_max_side_and_keeps_aspect(tmp_path):
    path = tmp_path / f"thumb{PAGE_SUFFIX}"
    save_thumbnail(text_page(1224, 1584), path)
    width, height = load_page_image(path).size
    assert height == 256 and abs(width - 1224 * 256 / 1584) <= 1

    save_thumbnail(text_page(1584, 1224), path, max_side=100)
    assert load_page_image(path).size[0] == 100


def test_thumbnail_never_enlarges(tmp_path):
    path = tmp_path / f"thumb{PAGE_SUFFIX}"
    save_thumbnail(text_page(120, 80), path)
    assert load_page_image(path).size == (120, 80)


def test_thumbnail_refuses_a_non_positive_size(tmp_path):
    with pytest.raises(BadInputError, match="max_side 0"):
        save_thumbnail(text_page(), tmp_path / f"thumb{PAGE_SUFFIX}", max_side=0)


def test_loading_a_missing_or_broken_file_says_so(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        load_page_image(tmp_path / f"absent{PAGE_SUFFIX}")
    broken = tmp_path / f"broken{PAGE_SUFFIX}"
    broken.write_bytes(b"not an image")
    with pytest.raises(BadInputError, match="cannot be decoded"):
        load_page_image(broken)


def test_png_encoding_is_lossless_file_bytes():
    page = text_page(200, 100)
    data = encode_image(page)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as decoded:
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(page))


def test_jpeg_encoding_is_file_bytes():
    data = encode_image(text_page(200, 100), "jpeg")
    assert data.startswith(b"\xff\xd8")
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (200, 100)


def test_unknown_encoding_is_refused():
    with pytest.raises(BadInputError, match="'gif' is not supported"):
        encode_image(text_page(20, 20), "gif")  # type: ignore[arg-type]


@pytest.mark.parametrize("format", ["png", "jpeg"])
def test_an_encoded_image_travels_as_base64_and_a_data_url(format):
    page = text_page(120, 80)
    encoded = EncodedImage.encode(page, format)
    assert encoded.data == encode_image(page, format) and encoded.mime_type == f"image/{format}"
    assert base64.b64decode(encoded.base64) == encoded.data
    assert encoded.data_url == f"data:image/{format};base64,{encoded.base64}"
