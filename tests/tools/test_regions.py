"""Crop and zoom (SPEC §1): Qwen's resize rule, box mapping through seen images, crop validation and pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
# The PIL processor's copy of Qwen2-VL's rule: the reference, importable without torchvision.
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as qwen_smart_resize

from pagelens.errors import BadInputError
from pagelens.tools.boxes import Box, Region
from pagelens.tools.regions import (
    IMAGE_FACTOR,
    MAX_PIXELS,
    MIN_PIXELS,
    SeenImage,
    crop,
    fit_for_model,
    from_page_box,
    resize_for_model,
    smart_resize,
    to_page_box,
)

PAGE_ID = "0123456789ab-p1"
LETTER_144 = (1224, 1584)


def close(a: Box, b: Box, tolerance: float) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a.as_list(), b.as_list()))


def contains(outer: Box, inner: Box, tolerance: float = 1e-6) -> bool:
    return (outer.x1 <= inner.x1 + tolerance and outer.y1 <= inner.y1 + tolerance
            and inner.x2 <= outer.x2 + tolerance and inner.y2 <= outer.y2 + tolerance)


def blank_page(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), "white")


def coordinate_page(width: int, height: int) -> Image.Image:
    """A page whose pixel (x, y) is (x mod 256, y mod 256, 16 * (x // 256) + y // 256): each pixel names its place."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs % 256, ys % 256, 16 * (xs // 256) + ys // 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@st.composite
def sizes(draw, low: int = 1, high: int = 20_000, max_ratio: float = 200) -> tuple[int, int]:
    width = draw(st.integers(low, high))
    height = draw(st.integers(low, high))
    assume(max(width, height) / min(width, height) <= max_ratio)
    return width, height


@st.composite
def boxes_in(draw, width: float, height: float, max_ratio: float = 20) -> Box:
    """An integer box inside width x height, at least 1 pixel a side and no more elongated than max_ratio."""
    x1 = draw(st.integers(0, int(width) - 1))
    y1 = draw(st.integers(0, int(height) - 1))
    x2 = draw(st.integers(x1 + 1, int(width)))
    y2 = draw(st.integers(y1 + 1, int(height)))
    assume(max(x2 - x1, y2 - y1) / min(x2 - x1, y2 - y1) <= max_ratio)
    return Box(float(x1), float(y1), float(x2), float(y2))


# --- smart_resize -----------------------------------------------------------------------------------------------


@given(sizes())
def test_smart_resize_matches_qwen_reference(size):
    width, height = size
    reference_height, reference_width = qwen_smart_resize(height, width, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert smart_resize(width, height) == (reference_width, reference_height)


@given(sizes(), st.integers(1, 2048), st.integers(1, 2048))
def test_smart_resize_matches_reference_for_any_bounds(size, a, b):
    min_pixels, max_pixels = sorted((a * 28 * 28, b * 28 * 28))
    width, height = size
    expected = qwen_smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)[::-1]
    assert smart_resize(width, height, min_pixels=min_pixels, max_pixels=max_pixels) == expected


@given(sizes())
def test_smart_resize_lands_in_bounds_on_the_grid(size):
    new_width, new_height = smart_resize(*size)
    assert new_width % IMAGE_FACTOR == 0 and new_height % IMAGE_FACTOR == 0
    assert MIN_PIXELS <= new_width * new_height <= MAX_PIXELS


@given(sizes())
def test_smart_resize_keeps_the_aspect_ratio_within_one_grid_step_a_side(size):
    # Each side lands within one multiple of 28 of the same scaling of the original, so the ratio moves no further.
    width, height = size
    new_width, new_height = smart_resize(width, height)
    assert (new_width - IMAGE_FACTOR) * height <= width * (new_height + IMAGE_FACTOR)
    assert width * (new_height - IMAGE_FACTOR) <= (new_width + IMAGE_FACTOR) * height


@given(sizes(1, 200))
def test_smart_resize_upscales_tiny_images_to_the_least_area(size):
    new_width, new_height = smart_resize(*size)
    assert new_width >= size[0] and new_height >= size[1]
    # At least the least area, and at most one grid step a side above it (19x19 takes the whole step: Qwen's float
    # arithmetic scales 19 to 448.0000001, which ceils to 476).
    assert (new_width - IMAGE_FACTOR) * (new_height - IMAGE_FACTOR) <= MIN_PIXELS <= new_width * new_height
    assert smart_resize(1, 1) == (448, 448)  # 448 * 448 = 256 * 28 * 28, exactly the least area


@given(sizes(5000, 20_000, max_ratio=4), st.integers(1, 64))
def test_smart_resize_shrinks_big_images_into_any_pixel_budget(size, tokens):
    budget = tokens * IMAGE_FACTOR * IMAGE_FACTOR
    new_width, new_height = smart_resize(*size, min_pixels=budget, max_pixels=budget)
    assert new_width * new_height <= budget and new_width % IMAGE_FACTOR == new_height % IMAGE_FACTOR == 0


def test_resize_for_model_gives_the_seen_size_and_leaves_a_seen_image_alone():
    page = coordinate_page(*LETTER_144)
    shown = resize_for_model(page)
    assert shown.size == smart_resize(*LETTER_144) == (532, 700)
    assert resize_for_model(shown) is shown
    small = resize_for_model(page, min_pixels=28 * 28, max_pixels=64 * 28 * 28)
    assert small.size == smart_resize(*LETTER_144, min_pixels=28 * 28, max_pixels=64 * 28 * 28)


def test_smart_resize_takes_width_first():
    # A US-letter page at 144 dpi, worked by hand: beta = sqrt(1224*1584/401408); floor(1224/beta/28)*28 = 532.
    assert smart_resize(*LETTER_144) == (532, 700)
    assert smart_resize(1584, 1224) == (700, 532)


def test_smart_resize_refuses_absurd_aspect_ratio():
    with pytest.raises(BadInputError, match=r"10000x40 pixels, an aspect ratio of 250:1"):
        smart_resize(10_000, 40)


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-3, 10)])
def test_smart_resize_refuses_empty_sizes(size):
    with pytest.raises(BadInputError, match="is empty"):
        smart_resize(*size)


# --- mapping between seen images and the page --------------------------------------------------------------------


@given(sizes(50, 5000, max_ratio=5), st.data())
def test_seen_page_seen_round_trip(page_size, data):
    page_width, page_height = page_size
    shown = data.draw(boxes_in(page_width, page_height, max_ratio=1000))
    seen = SeenImage(
        PAGE_ID,
        Region.from_page_box(PAGE_ID, shown, page_width, page_height),
        data.draw(st.integers(28, 3000)),
        data.draw(st.integers(28, 3000)),
    )
    box = data.draw(boxes_in(seen.width, seen.height, max_ratio=1000))
    page_box = to_page_box(box, seen)
    assert contains(shown, page_box)
    assert close(from_page_box(page_box, seen), box, 1.0)
    assert close(to_page_box(from_page_box(shown, seen), seen), shown, 1e-6)


@settings(max_examples=30, deadline=None)
@given(sizes(28, 2500, max_ratio=10))
def test_fit_for_model_records_a_whole_page_view(page_size):
    fitted, seen = fit_for_model(blank_page(*page_size), PAGE_ID)
    assert fitted.size == (seen.width, seen.height) == smart_resize(*page_size)
    whole = Box(0.0, 0.0, float(page_size[0]), float(page_size[1]))
    assert close(to_page_box(Box(0.0, 0.0, float(seen.width), float(seen.height)), seen), whole, 1e-6)
    assert seen.region.normalized == Box(0.0, 0.0, 1.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(sizes(200, 1600, max_ratio=3), st.data())
def test_crop_of_a_crop_maps_through_the_crop(page_size, data):
    page = blank_page(*page_size)
    _, page_view = fit_for_model(page, PAGE_ID)
    first = crop(page, PAGE_ID, data.draw(boxes_in(page_view.width, page_view.height)), seen=page_view)
    second_box = data.draw(boxes_in(first.seen.width, first.seen.height))
    second = crop(page, PAGE_ID, second_box, seen=first.seen)

    # The second region is the box scaled through the first crop, so it lies inside what the first crop showed.
    assert close(second.region.box, to_page_box(second_box, first.seen), 1e-6)
    assert contains(first.seen.region.box, second.region.box)
    # The image shows the whole pixels the region touches: at most one page pixel more on each side.
    assert contains(second.seen.region.box, second.region.box)
    assert close(second.seen.region.box, second.region.box, 1.0)
    assert second.image.size == (second.seen.width, second.seen.height)
    # A box the model gives on the second crop goes to the page and back within a pixel.
    answer = data.draw(boxes_in(second.seen.width, second.seen.height, max_ratio=1000))
    assert close(from_page_box(to_page_box(answer, second.seen), second.seen), answer, 1.0)


# --- crop: validation, clamping, padding, zoom ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "why"),
    [
        (Box(100, 100, 100, 200), "empty or inverted"),
        (Box(300, 100, 200, 200), "empty or inverted"),
        (Box(100, 300, 200, 200), "empty or inverted"),
        (Box(-5, 100, 200, 200), "negative coordinate"),
        (Box(1300, 100, 1400, 200), "lies outside"),
        (Box(100, 1584, 200, 1700), "lies outside"),
    ],
)
def test_crop_refuses_unusable_boxes_naming_box_and_page_size(box, why):
    with pytest.raises(BadInputError) as error:
        crop(blank_page(*LETTER_144), PAGE_ID, box)
    message = str(error.value)
    assert why in message and str(box.as_list()) in message and "1224x1584" in message


def test_crop_refuses_a_nan_box_naming_it():
    box = Box(math.nan, 0, 10, 10)
    with pytest.raises(BadInputError, match="non-finite") as error:
        crop(blank_page(*LETTER_144), PAGE_ID, box)
    assert str(box.as_list()) in str(error.value)


def test_crop_checks_a_seen_box_against_the_seen_image():
    page = blank_page(*LETTER_144)
    _, seen = fit_for_model(page, PAGE_ID)
    # Inside the page's pixels but outside the 532x700 image the model saw.
    with pytest.raises(BadInputError, match=r"the image the model saw, which is 532x700 pixels"):
        crop(page, PAGE_ID, Box(600, 10, 700, 50), seen=seen)


def test_crop_refuses_a_seen_image_of_another_page():
    page = blank_page(*LETTER_144)
    _, seen = fit_for_model(page, "other-p2")
    with pytest.raises(BadInputError, match="seen image is of page other-p2"):
        crop(page, PAGE_ID, Box(0, 0, 10, 10), seen=seen)


@pytest.mark.parametrize("padding", [-1.0, math.inf, math.nan])
def test_crop_refuses_bad_padding(padding):
    with pytest.raises(BadInputError, match="padding"):
        crop(blank_page(*LETTER_144), PAGE_ID, Box(0, 0, 10, 10), padding=padding)


def test_crop_refuses_a_sliver_too_elongated_to_zoom():
    page = blank_page(*LETTER_144)
    with pytest.raises(BadInputError, match=r"box \[0, 100, 1000, 104\].*pass zoom=False"):
        crop(page, PAGE_ID, Box(0, 100, 1000, 104))
    assert crop(page, PAGE_ID, Box(0, 100, 1000, 104), zoom=False).image.size == (1000, 4)


def test_crop_clamps_a_box_partly_outside_the_page():
    result = crop(blank_page(*LETTER_144), PAGE_ID, Box(1000, 1500, 1300, 1700), zoom=False)
    assert result.region.box == Box(1000, 1500, 1224, 1584)
    assert result.region.normalized.x2 == 1.0 and result.region.normalized.y2 == 1.0
    assert result.image.size == (224, 84)


def test_crop_clamps_a_seen_box_partly_outside_the_seen_image():
    page = blank_page(*LETTER_144)
    _, seen = fit_for_model(page, PAGE_ID)
    result = crop(page, PAGE_ID, Box(266, 350, 900, 900), seen=seen, zoom=False)
    assert close(result.region.box, Box(612, 792, 1224, 1584), 1e-6)


def test_padding_widens_the_box_within_the_page():
    page = blank_page(*LETTER_144)
    assert crop(page, PAGE_ID, Box(100, 100, 200, 150), padding=56).region.box == Box(44, 44, 256, 206)
    assert crop(page, PAGE_ID, Box(10, 10, 50, 50), padding=56).region.box == Box(0, 0, 106, 106)
    assert crop(page, PAGE_ID, Box(1200, 1500, 1224, 1584), padding=56).region.box == Box(1144, 1444, 1224, 1584)


def test_zoom_off_cuts_whole_pixels_and_records_the_float_box():
    result = crop(blank_page(*LETTER_144), PAGE_ID, Box(10.5, 20.25, 110.5, 60.75), zoom=False)
    assert result.image.size == (101, 41)
    assert result.region.box == Box(10.5, 20.25, 110.5, 60.75)
    assert result.seen.region.box == Box(10, 20, 111, 61)
    assert (result.seen.width, result.seen.height) == (101, 41)


@pytest.mark.parametrize("box", [Box(100, 300, 700, 330), Box(100, 300, 600, 550), Box(0, 0, 612, 792)])
def test_zoom_on_sizes_the_cut_for_the_model(box):
    result = crop(blank_page(*LETTER_144), PAGE_ID, box)
    width, height = result.image.size
    assert (width, height) == smart_resize(int(box.width), int(box.height))
    assert (width, height) == (result.seen.width, result.seen.height)
    assert MIN_PIXELS <= width * height <= MAX_PIXELS


def test_zoom_honours_custom_pixel_bounds():
    result = crop(blank_page(*LETTER_144), PAGE_ID, Box(0, 0, 612, 792), min_pixels=28 * 28, max_pixels=64 * 28 * 28)
    assert result.image.size == smart_resize(612, 792, min_pixels=28 * 28, max_pixels=64 * 28 * 28)


# --- crop: the pixels land where the boxes say -------------------------------------------------------------------


def test_unzoomed_crops_of_crops_hold_exactly_the_page_pixels_they_claim():
    page = coordinate_page(*LETTER_144)
    pixels = np.asarray(page)
    _, page_view = fit_for_model(page, PAGE_ID)
    first = crop(page, PAGE_ID, Box(120, 200, 400, 420), seen=page_view, zoom=False)
    second = crop(page, PAGE_ID, Box(30.5, 40, 180, 150.5), seen=first.seen, zoom=False)
    for result in (first, second):
        x1, y1, x2, y2 = (int(v) for v in result.seen.region.box.as_list())
        assert np.array_equal(np.asarray(result.image), pixels[y1:y2, x1:x2])


def red_bounds(image: Image.Image) -> Box:
    pixels = np.asarray(image).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    ys, xs = np.nonzero(red)
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_a_square_is_found_where_nested_seen_boxes_point():
    page = blank_page(*LETTER_144)
    square = Box(700, 900, 760, 960)
    ImageDraw.Draw(page).rectangle([700, 900, 759, 959], fill=(255, 0, 0))

    # The model sees the page, asks for a generous box round the square, then for a tight box on that crop.
    _, page_view = fit_for_model(page, PAGE_ID)
    around = from_page_box(Box(600, 800, 900, 1100), page_view)
    first = crop(page, PAGE_ID, Box(*(round(v) for v in around.as_list())), seen=page_view)
    assert close(red_bounds(first.image), from_page_box(square, first.seen), 2.0)

    tight = from_page_box(Box(690, 890, 770, 970), first.seen)
    second = crop(page, PAGE_ID, Box(*(round(v) for v in tight.as_list())), seen=first.seen)
    # Scaled against the page instead of the crop (the reference bug), this box would miss the square entirely.
    assert close(second.region.box, Box(690, 890, 770, 970), 2.0)
    assert close(red_bounds(second.image), from_page_box(square, second.seen), 3.0)
    assert close(to_page_box(red_bounds(second.image), second.seen), square, 1.0)
