"""Crop and zoom (SPEC §1): size images the way Qwen2.5-VL does, and map boxes between seen images and pages.

`smart_resize` is the one rule for the size a model is shown an image at (the seen size), and `resize_for_model`
the one way to apply it: the agent, the LangChain tools and the MCP server all show pages and crops through them,
so each reports the same seen size for the same page or crop.

Every image sent to a model is described by a SeenImage: the page region it shows and its size in pixels as the
model saw it. A bbox the model returns is mapped to the page through that record, so a crop of a crop maps
through the crop that was seen, not through the page (the reference bug SPEC §1 names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from pagelens.errors import BadInputError
from pagelens.tools.boxes import Box, Region

IMAGE_FACTOR = 28
MIN_PIXELS = 256 * 28 * 28
MAX_PIXELS = 512 * 28 * 28
# Qwen2.5-VL's processor refuses images whose long side exceeds 200 times the short side.
MAX_ASPECT_RATIO = 200
# Mapping through a seen image leaves float noise (229.99999997); without this, floor/ceil would cut an extra pixel.
_SNAP = 1e-6


def _check_aspect(width: int, height: int, what: str, fix: str) -> None:
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise BadInputError(
            f"{what} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1, over the "
            f"{MAX_ASPECT_RATIO}:1 Qwen2.5-VL accepts; {fix}."
        )


def smart_resize(
    width: int,
    height: int,
    *,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule, as (new_width, new_height): sides multiples of `factor`, area within the bounds.

    Each side is rounded to a multiple of `factor`; an area over `max_pixels` is scaled down (sides floored),
    one under `min_pixels` scaled up (sides ceiled), keeping the aspect ratio as closely as the rounding allows.
    Qwen's own function takes (height, width); this one takes (width, height) like PIL.
    """
    if width < 1 or height < 1:
        raise BadInputError(f"image size {width}x{height} is empty; give a width and a height of at least 1 pixel.")
    if not 0 < min_pixels <= max_pixels:
        raise BadInputError(
            f"pixel bounds min_pixels={min_pixels}, max_pixels={max_pixels} are not 0 < min <= max; "
            f"use for example {MIN_PIXELS} and {MAX_PIXELS}."
        )
    _check_aspect(width, height, "the image", "crop a less elongated region")
    # The same float operations in the same order as transformers' Qwen2-VL processor, so sizes agree exactly.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


@dataclass(frozen=True)
class SeenImage:
    """What a model was shown: the page region the image shows (the whole page for a page view) and its pixel size."""

    page_id: str
    region: Region
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise BadInputError(
                f"seen image size {self.width}x{self.height} of page {self.page_id} is empty; "
                f"record the size the model was shown."
            )

    @classmethod
    def whole_page(cls, page_id: str, page_width: int, page_height: int, width: int, height: int) -> SeenImage:
        """A view of the whole `page_width` x `page_height` page, shown as a `width` x `height` image."""
        page_box = Box(0.0, 0.0, float(page_width), float(page_height))
        return cls(page_id, Region.from_page_box(page_id, page_box, page_width, page_height), width, height)


def to_page_box(box: Box, seen: SeenImage) -> Box:
    """Map a box in the pixels of a seen image to page pixels, through the region that image shows."""
    shown = seen.region.box
    scale_x = shown.width / seen.width
    scale_y = shown.height / seen.height
    return Box(
        shown.x1 + box.x1 * scale_x,
        shown.y1 + box.y1 * scale_y,
        shown.x1 + box.x2 * scale_x,
        shown.y1 + box.y2 * scale_y,
    )


def from_page_box(box: Box, seen: SeenImage) -> Box:
    """Map a box in page pixels to the pixels of a seen image (the inverse of to_page_box)."""
    shown = seen.region.box
    scale_x = seen.width / shown.width
    scale_y = seen.height / shown.height
    return Box(
        (box.x1 - shown.x1) * scale_x,
        (box.y1 - shown.y1) * scale_y,
        (box.x2 - shown.x1) * scale_x,
        (box.y2 - shown.y1) * scale_y,
    )


@dataclass(frozen=True)
class Cutout:
    """A cut of a page.

    `region` is the box asked for (clamped and padded, page pixels). `seen` describes the returned image: it shows
    the whole pixels that region touches (edges floored/ceiled), so the next bbox on this crop maps exactly.
    """

    image: Image.Image
    region: Region
    seen: SeenImage


def _clamp(box: Box, width: float, height: float) -> Box:
    return Box(max(box.x1, 0.0), max(box.y1, 0.0), min(box.x2, width), min(box.y2, height))


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    if size[0] * size[1] < image.width * image.height:
        # reducing_gap box-averages by an integer factor before the final LANCZOS pass when shrinking 4x or more:
        # a 300-dpi page fits in 77 ms instead of 176 ms, at 47 dB PSNR against a pure LANCZOS resize.
        return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return image.resize(size, Image.Resampling.LANCZOS)


def resize_for_model(
    image: Image.Image, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """`image` at its seen size, smart_resize of its size within the bounds (unchanged when already that size)."""
    return _resize(image, smart_resize(image.width, image.height, min_pixels=min_pixels, max_pixels=max_pixels))


def crop(
    image: Image.Image,
    page_id: str,
    box: Box,
    *,
    seen: SeenImage | None = None,
    padding: float = 0.0,
    zoom: bool = True,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> Cutout:
    """Cut `box` out of the full page `image` and, with `zoom`, resize it to Qwen2.5-VL's size for it.

    `box` is in page pixels, or in the pixels of `seen` (the image the model was shown) when given; a box partly
    outside that image is clamped to it. `padding` (page pixels) widens the box on every side, within the page.
    With `zoom` the cut is resized to smart_resize of its size; without, it is returned as cut.
    """
    page_width, page_height = image.size
    if seen is None:
        box.check_inside(page_width, page_height, f"page {page_id}")
        page_box = _clamp(box, page_width, page_height)
    else:
        if seen.page_id != page_id:
            raise BadInputError(
                f"the seen image is of page {seen.page_id}, not of page {page_id}; crop the page the model saw."
            )
        box.check_inside(seen.width, seen.height, "the image the model saw")
        page_box = to_page_box(_clamp(box, seen.width, seen.height), seen)
    if not (math.isfinite(padding) and padding >= 0):
        raise BadInputError(f"padding {padding} is not a finite number >= 0; give page pixels such as 0 or 56.")
    page_box = _clamp(
        Box(page_box.x1 - padding, page_box.y1 - padding, page_box.x2 + padding, page_box.y2 + padding),
        page_width,
        page_height,
    )

    left = min(math.floor(page_box.x1 + _SNAP), page_width - 1)
    top = min(math.floor(page_box.y1 + _SNAP), page_height - 1)
    right = max(math.ceil(page_box.x2 - _SNAP), left + 1)
    bottom = max(math.ceil(page_box.y2 - _SNAP), top + 1)
    cut = image.crop((left, top, right, bottom))
    if zoom:
        _check_aspect(
            cut.width, cut.height, f"the cut of box {box.as_list()}", "make the box less elongated or pass zoom=False"
        )
        cut = resize_for_model(cut, min_pixels=min_pixels, max_pixels=max_pixels)

    cut_box = Box(float(left), float(top), float(right), float(bottom))
    shown = Region.from_page_box(page_id, cut_box, page_width, page_height)
    return Cutout(
        image=cut,
        region=Region.from_page_box(page_id, page_box, page_width, page_height),
        seen=SeenImage(page_id, shown, cut.width, cut.height),
    )


def fit_for_model(
    image: Image.Image, page_id: str, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[Image.Image, SeenImage]:
    """Resize a whole page image to Qwen2.5-VL's size for it, with the SeenImage that records the view."""
    page_width, page_height = image.size
    _check_aspect(page_width, page_height, f"page {page_id}", "render it as several pages or crop it first")
    fitted = resize_for_model(image, min_pixels=min_pixels, max_pixels=max_pixels)
    return fitted, SeenImage.whole_page(page_id, page_width, page_height, *fitted.size)


def render_seen(image: Image.Image, seen: SeenImage) -> Image.Image:
    """The image a model was shown, re-made from the full page `image`: the seen region's pixels at the seen size.

    crop and fit_for_model record exactly this (whole-pixel region, final size), so the result equals what they
    returned; a run can therefore keep the record and re-make the pixels when it needs them again.
    """
    shown = seen.region.box
    left, top = math.floor(shown.x1 + _SNAP), math.floor(shown.y1 + _SNAP)
    right, bottom = math.ceil(shown.x2 - _SNAP), math.ceil(shown.y2 - _SNAP)
    cut = image if (left, top, right, bottom) == (0, 0, *image.size) else image.crop((left, top, right, bottom))
    return _resize(cut, (seen.width, seen.height))
