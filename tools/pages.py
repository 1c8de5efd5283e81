"""Documents, their pages and the text lines on them: the nouns the store holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pagelens.tools.boxes import Box

TextSource = Literal["pdf", "ocr", "none"]


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


def page_id_for(document_id: str, page_number: int) -> str:
    """`page_id` = the first 12 hex digits of the document's SHA-256, then the 1-based page number."""
    return f"{document_id[:12]}-p{page_number}"
