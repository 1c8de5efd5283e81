"""Boxes in pixels and regions of a page: where on a page a crop, a text line or a citation lies."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pagelens.errors import BadInputError


@dataclass(frozen=True)
class Box:
    """(x1, y1, x2, y2) in the pixels of one named image; x grows right, y grows down."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    def rounded(self) -> Box:
        return Box(*(round(v, 2) for v in self.as_list()))

    def check_inside(self, width: float, height: float, what: str = "the page") -> None:
        """Raise BadInputError unless this box is finite, non-empty, ordered and overlaps (0, 0, width, height)."""
        values = self.as_list()
        if any(not math.isfinite(v) for v in values):
            raise BadInputError(
                f"box {values} has a non-finite coordinate; give four finite numbers x1,y1,x2,y2 within "
                f"{what} ({width:g}x{height:g})."
            )
        if any(v < 0 for v in values):
            raise BadInputError(
                f"box {values} has a negative coordinate; coordinates are pixels of {what} "
                f"({width:g}x{height:g}), from 0."
            )
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise BadInputError(
                f"box {values} is empty or inverted; give x1 < x2 and y1 < y2 within {what} ({width:g}x{height:g})."
            )
        if self.x1 >= width or self.y1 >= height:
            raise BadInputError(f"box {values} lies outside {what}, which is {width:g}x{height:g} pixels.")

    @classmethod
    def parse(cls, text: str) -> Box:
        """Parse 'x1,y1,x2,y2' (commas or spaces)."""
        parts = text.replace(",", " ").split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4:
            raise BadInputError(f"box {text!r} is not four numbers; write it as x1,y1,x2,y2 in pixels.")
        return cls(*values)


@dataclass(frozen=True)
class Region:
    """A part of a page: the box in page pixels and the same box normalised to [0, 1]."""

    page_id: str
    box: Box
    normalized: Box

    @classmethod
    def from_page_box(cls, page_id: str, box: Box, page_width: int, page_height: int) -> Region:
        normalized = Box(box.x1 / page_width, box.y1 / page_height, box.x2 / page_width, box.y2 / page_height)
        return cls(page_id, box, normalized)

    def to_dict(self) -> dict:
        return {"page_id": self.page_id, "box": self.box.rounded().as_list(),
                "normalized": [round(v, 6) for v in self.normalized.as_list()]}
