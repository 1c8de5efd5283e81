"""The agent's state: plain JSON values, so the SQLite checkpointer can keep a conversation between questions.

Images are kept as records (page, region shown, size sent), never as pixels: the page store re-makes the exact
pixels on demand (tools.regions.render_seen), which keeps checkpoints small. Message image parts are
`{"type": "image", "image": i}`, i being the image's 1-based index in `images`.

Per question (reset by `start`): turn, shown_pages, evidence, steps, action, answer, status, message, deadline,
and the uploads and history it was given.
Per conversation (kept under a thread): messages and images, so a follow-up question sees what was shown.
"""

from __future__ import annotations

from typing import Required, TypedDict

from pagelens.graph.policies.interface import ShownImage
from pagelens.tools.boxes import Box, Region
from pagelens.tools.regions import SeenImage


class InputState(TypedDict, total=False):
    question: Required[str]
    uploads: list[dict]
    """Pages for this question only ({"page_id", "name", "width", "height"}), registered with PageImages."""
    history: list[dict]
    """Earlier text messages ({"role", "content"}) to start a new conversation with (the agent API's context)."""


class AgentState(TypedDict, total=False):
    question: str
    uploads: list[dict]
    history: list[dict]
    messages: list[dict]
    images: list[dict]
    first_image: int
    """Index of the first image shown for the current question (earlier ones belong to earlier questions)."""
    shown_pages: list[str]
    """Pages shown for the current question: a search never shows one twice (SPEC §1)."""
    evidence: list[dict]
    steps: list[dict]
    turn: int
    """Policy calls made for the current question."""
    action: dict
    """The parsed action awaiting its node: {"kind": search|crop|answer|invalid|stop, ...}."""
    answer: str | None
    status: str | None
    message: str
    deadline: float


def image_record(image: ShownImage, page_width: int, page_height: int) -> dict:
    return {
        "index": image.index,
        "page_id": image.page_id,
        "document": image.document,
        "page_number": image.page_number,
        "page_size": [page_width, page_height],
        "seen_size": [image.seen.width, image.seen.height],
        "shown_box": image.seen.region.box.as_list(),
        "region_box": image.region.box.as_list() if image.region is not None else None,
        "supported": image.supported,
    }


def shown_image(record: dict) -> ShownImage:
    page_width, page_height = record["page_size"]
    page_id = record["page_id"]
    shown = Region.from_page_box(page_id, Box(*record["shown_box"]), page_width, page_height)
    region = (Region.from_page_box(page_id, Box(*record["region_box"]), page_width, page_height)
              if record["region_box"] is not None else None)
    return ShownImage(
        index=record["index"],
        page_id=page_id,
        document=record["document"],
        page_number=record["page_number"],
        seen=SeenImage(page_id, shown, *record["seen_size"]),
        region=region,
        supported=record.get("supported", True),  # a conversation recorded before relevance was judged
    )
