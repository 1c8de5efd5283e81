"""The nouns every tool shares: documents, pages, boxes, regions, text lines and search hits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pagelens.errors import BadInputError

TextSource = Literal["pdf", "ocr", "none"]


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


@dataclass(frozen=True)
class TextLine:
    """One line (or text run) on a page with its box in page pixels; confidence is 1.0 for a PDF text layer."""

    text: str
    box: Box
    confidence: float = 1.0

    def to_dict(self) -> dict:
        return {"text": self.text, "box": self.box.rounded().as_list(), "confidence": round(self.confidence, 4)}

    @classmethod
    def from_dict(cls, data: dict) -> TextLine:
        return cls(data["text"], Box(*data["box"]), data.get("confidence", 1.0))


@dataclass(frozen=True)
class Document:
    """A file's content, identified by the SHA-256 of its bytes; identical files at two paths are one document."""

    document_id: str
    name: str
    sources: tuple[str, ...]
    page_count: int
    kind: str
    dpi: int


@dataclass(frozen=True)
class Page:
    """One page as stored: its image and thumbnail files, its size in pixels at the stored dpi."""

    page_id: str
    document_id: str
    document: str
    page_number: int
    width: int
    height: int
    dpi: int
    image_path: Path
    thumbnail_path: Path
    text_source: TextSource

    def to_dict(self) -> dict:
        return {
            "page_id": self.page_id,
            "document": self.document,
            "page_number": self.page_number,
            "width": self.width,
            "height": self.height,
            "dpi": self.dpi,
            "text_source": self.text_source,
            "image_path": str(self.image_path),
        }


@dataclass(frozen=True)
class Hit:
    """A page found by a search: its score (higher is better; the fused rank score), the passage that matched, and
    its similarity: the cosine between the query's and its best passage's embeddings (0 when the dense route did
    not find it), a retrieval score on the embedder's own scale."""

    page: Page
    score: float
    snippet: str
    similarity: float = 0.0
    relevance: float | None = None
    """The probability that the page supports an answer (tools/retrieval/relevance.py); None when not judged."""
    routes: dict[str, dict] = field(default_factory=dict)
    """Where each retrieval route that found the page ranked it: {route: {"rank", "score"}}."""
    supported: bool | None = None
    """Whether `relevance` reaches the relevance model's threshold: the page supports an answer (the relevance
    filter keeps it); None when not judged."""
    evidence: dict[str, float] = field(default_factory=dict)
    """The normalised scores the relevance was computed from, by name (tools/retrieval/relevance.py)."""

    def to_dict(self) -> dict:
        return {
            "page_id": self.page.page_id,
            "document": self.page.document,
            "page_number": self.page.page_number,
            "score": round(self.score, 6),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "supported": self.supported,
            "evidence": {name: round(value, 4) for name, value in self.evidence.items()},
            "routes": self.routes,
            "snippet": self.snippet,
            "image_path": str(self.page.image_path),
        }


def page_id_for(document_id: str, page_number: int) -> str:
    """`page_id` = the first 12 hex digits of the document's SHA-256, then the 1-based page number."""
    return f"{document_id[:12]}-p{page_number}"
