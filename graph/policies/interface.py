"""What the graph asks of a policy: the next assistant message, given the conversation so far.

A policy is anything with a `name` and `complete(request) -> Completion`: an OpenAI-compatible endpoint (vLLM,
the transformers policy server, a hosted model) or the offline extractive policy. All of them run the same graph
and are recorded the same way. A model's message is parsed by the protocol's parser; a policy that decides in code
(the extractive one) hands over its turn already parsed, so text it quotes from a page is never read as an action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from pagelens.graph.parse import Turn
from pagelens.tools.boxes import Region
from pagelens.tools.pages import TextLine
from pagelens.tools.regions import SeenImage


@dataclass(frozen=True)
class Completion:
    """One assistant message. `logprobs` holds one log-probability per generated token, when they were asked for
    and the endpoint returned them (SPEC §6, weighted selection)."""

    text: str
    logprobs: tuple[float, ...] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    parsed: Turn | None = None
    """The turn as data, from a policy that decides in code: the graph acts on it and `text`, the same turn in
    the protocol's words, is only recorded. None (a model's message): the graph parses `text`."""


@dataclass(frozen=True)
class ShownImage:
    """An image in the conversation: `index` numbers it from 1 in the order shown (the `[i]` of evidence lines).

    `seen` records the page region it shows and the exact size it was sent at; `region` is the region a crop
    asked for (None for a whole page), which is what a citation of this image points at.
    """

    index: int
    page_id: str
    document: str
    page_number: int
    seen: SeenImage
    region: Region | None = None
    supported: bool = True
    """Whether retrieval judged that the page supports an answer (tools/retrieval/relevance.py); an uploaded page
    and a crop count as supported."""

    @property
    def is_crop(self) -> bool:
        return self.region is not None

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "page_id": self.page_id,
            "document": self.document,
            "page_number": self.page_number,
            "seen_width": self.seen.width,
            "seen_height": self.seen.height,
            "shown_box": self.seen.region.box.rounded().as_list(),
            "region": self.region.to_dict() if self.region is not None else None,
        }


@dataclass(frozen=True)
class PolicyRequest:
    """Everything a policy may look at for one turn.

    `messages()` is the conversation in OpenAI chat form, images as `image_url` data URLs in `user` messages
    (SPEC §7); it is built on first use, so a policy that does not read it (the extractive one) pays nothing.
    `images` are the images of the conversation (all of them, also those no longer sent); those with an index of
    at least `first_image` were shown for this question. `turn` counts the policy calls already made for this
    question, `answer_now` is true on the forced final call, and `timeout` is the seconds left before the run's
    deadline (None: no deadline).
    """

    question: str
    protocol: str
    images: tuple[ShownImage, ...]
    answer_now: bool
    first_image: int = 1
    turn: int = 0
    bbox_convention: str = "pixels"
    want_logprobs: bool = False
    timeout: float | None = None
    render_messages: Callable[[], list[dict]] = field(default=list, repr=False, compare=False)
    page_lines: Callable[[str], list[TextLine]] | None = field(default=None, repr=False, compare=False)
    """A page's text lines (store pages and a request's uploads alike)."""
    term_rarity: Callable[[list[str]], dict[str, float]] | None = field(default=None, repr=False, compare=False)
    """Each word's inverse document frequency over the whole store (0 for a word no passage holds); None where
    there is no store to ask."""

    @cached_property
    def _messages(self) -> list[dict]:
        return self.render_messages()

    def messages(self) -> list[dict]:
        return self._messages


class Policy(Protocol):
    """The interface every policy implements."""

    name: str

    def complete(self, request: PolicyRequest) -> Completion: ...
