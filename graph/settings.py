"""Agent and policy settings: how a run goes (protocol, turns, images) and which policy drives it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pagelens.errors import BadInputError

PROTOCOLS = ("pagelens", "vrag", "evisrag")
SINGLE_IMAGE_MODES = ("", "horizontal", "vertical", "weighted")


@dataclass(frozen=True)
class AgentSettings:
    protocol: str = "pagelens"
    """The turn protocol: pagelens (SPEC §2b, cites images), vrag (SPEC §1) or evisrag (SPEC §2, one shot)."""
    max_turns: int = 6
    """Action turns per question; then one more policy call told to answer now (at most max_turns + 1 calls)."""
    run_timeout: float = 300.0
    """Seconds a question may take, every policy request and retry included; past it the run ends with a "timeout"
    result (`pagelens ask` exits 3)."""
    bbox_convention: str = "pixels"
    """How the policy writes boxes: "pixels" of the image it saw (Qwen2.5-VL) or "normalized-1000" (SPEC §1)."""
    template: str = ""
    """A template file to use instead of the protocol's bundled instruction (a checkpoint trained on other wording)."""
    max_images: int = 10
    """Images sent per request, the most recent ones (match vLLM's --limit-mm-per-prompt)."""
    search_top_k: int = 10
    """A search shows the best page among this many hits that the run has not shown yet (SPEC §1)."""
    evisrag_pages: int = 5
    """Pages retrieved for the one-shot evisrag protocol (SPEC §2: up to 5)."""
    crop_padding: float = 28.0
    """Widen each bbox by this many pixels of the image the model saw (SPEC §1: 28 model pixels)."""
    relevance_filter: str = "evisrag"
    """MIRAGE's relevance filter (SPEC §6) on retrieved pages: "evisrag" (the one-shot protocol shows only the pages
    the store's relevance model says support an answer, at least the most probable one), "all" (every multi-turn
    search skips the others too) or "off"."""
    page_text: bool = False
    """Also send each page's extracted text, as delimited data, with its image (for models that read poorly)."""
    single_image: str = ""
    """evisrag with a policy that takes one image (SPEC §6): "horizontal" / "vertical" page concatenation, or
    "weighted" selection over per-page answers; empty sends all pages."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise BadInputError(f"protocol {self.protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}.")
        if self.relevance_filter not in ("evisrag", "all", "off"):
            raise BadInputError(f"relevance_filter={self.relevance_filter!r} is unknown; use evisrag, all or off.")
        if not 1 <= self.max_turns <= 50:
            raise BadInputError(f"max_turns={self.max_turns} is out of range; use 1 to 50.")
        if not (math.isfinite(self.run_timeout) and self.run_timeout > 0):
            raise BadInputError(f"run_timeout={self.run_timeout} must be a positive number of seconds.")
        if self.bbox_convention not in ("pixels", "normalized-1000"):
            raise BadInputError(
                f"bbox_convention={self.bbox_convention!r} is unknown; use 'pixels' or 'normalized-1000'."
            )
        if self.max_images < 1 or self.search_top_k < 1 or self.evisrag_pages < 1:
            raise BadInputError("max_images, search_top_k and evisrag_pages must each be at least 1.")
        if not (math.isfinite(self.crop_padding) and self.crop_padding >= 0):
            raise BadInputError(f"crop_padding={self.crop_padding} must be a number >= 0.")
        if self.single_image not in SINGLE_IMAGE_MODES:
            raise BadInputError(
                f"single_image={self.single_image!r} is unknown; use horizontal, vertical, weighted or leave it empty."
            )


@dataclass(frozen=True)
class PolicySettings:
    url: str = ""
    """Base URL of an OpenAI-compatible endpoint (…/v1); empty means the offline extractive policy."""
    model: str = ""
    """Model name sent to the endpoint; empty asks the endpoint (GET /v1/models) and takes the first."""
    api_key: str = ""
    """Bearer key for the endpoint; empty sends a placeholder, which local servers accept."""
    temperature: float = 0.1
    """Sampling temperature (EVisRAG's authors: 0.1)."""
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    """Sent only when not 1.0 (a vLLM extension; EVisRAG's authors used 1.05; OpenAI's API rejects it)."""
    max_tokens: int = 1024
    """Longest reply per turn, in tokens."""
    request_timeout: float = 120.0
    """Seconds one request may take before it is retried (less when the run's deadline is nearer)."""
    retries: int = 3
    """Retries after a failed request (timeouts, 5xx, 429, dropped connections), with exponential backoff, only
    while the run's deadline leaves time for one."""

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise BadInputError(
                f"policy URL {self.url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1, "
                f"or leave it empty for the extractive policy."
            )
        if not (self.request_timeout > 0 and self.max_tokens > 0 and self.retries >= 0):
            raise BadInputError("request_timeout and max_tokens must be positive and retries at least 0.")

    @property
    def is_extractive(self) -> bool:
        return not self.url
