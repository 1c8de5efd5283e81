"""Pixels for a run: page images decoded once, images re-made exactly as sent, and the chat messages carrying them.

The state keeps image records, not pixels (graph.state); this module turns records back into the PNG data URLs
a policy receives (SPEC §7), with small caches so a multi-turn run does not decode or encode an image twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import LRUCache
from PIL import Image

from pagelens.graph.policies.interface import ShownImage
from pagelens.graph.visrag_gen import concatenate
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.corpus.text import OcrEngine
from pagelens.tools.imagefiles import EncodedImage, load_page_image
from pagelens.tools.pages import TextLine
from pagelens.tools.regions import render_seen, resize_for_model

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A run shows at most a few pages; a conversation a few dozen images.
PAGE_CACHE = 8
ENCODED_CACHE = 64


class LRU(Generic[K, V]):
    """A small least-recently-used cache (cachetools') that the agent API's worker threads can share."""

    def __init__(self, size: int):
        self.size = size
        self._items: LRUCache[K, V] = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                return self._items[key]  # a read counts as a use
        # Made outside the lock: two threads may both decode one page, which is cheaper than serialising decodes.
        value = make()
        self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value


def _key(image: ShownImage) -> tuple:
    return image.page_id, image.seen.width, image.seen.height, tuple(image.seen.region.box.as_list())


@dataclass
class Upload:
    """A page that exists for one request only (an image sent to the agent API): never stored."""

    image: Image.Image
    name: str
    lines: list[TextLine] | None = None


class PageImages:
    """The pages a run can show: the store's, plus uploads registered for a request; and each shown image as the
    PNG sent for it."""

    def __init__(self, store: PageStore):
        self.store = store
        self._pages: LRU[str, Image.Image] = LRU(PAGE_CACHE)
        self._encoded: LRU[tuple, EncodedImage] = LRU(ENCODED_CACHE)
        self._uploads: dict[str, Upload] = {}
        self._ocr: OcrEngine | None = None
        self._lock = threading.Lock()

    def add_upload(self, image: Image.Image, name: str) -> str:
        """Register a request's image as a page; returns its page id (unique per call). Call `discard` after."""
        page_id = f"upload-{uuid.uuid4().hex[:12]}-p1"
        with self._lock:
            self._uploads[page_id] = Upload(image.convert("RGB"), name)
        return page_id

    def discard(self, page_ids: list[str]) -> None:
        with self._lock:
            for page_id in page_ids:
                self._uploads.pop(page_id, None)

    def available(self, page_id: str) -> bool:
        """False for an upload of an earlier request (discarded), whose pixels are gone."""
        return page_id in self._uploads or not page_id.startswith("upload-")

    def page(self, page_id: str) -> Image.Image:
        """The full page image at the stored dpi (an upload as it was sent)."""
        upload = self._uploads.get(page_id)
        if upload is not None:
            return upload.image
        return self._pages.get(page_id, lambda: load_page_image(self.store.page(page_id).image_path))

    def lines(self, page_id: str) -> list[TextLine]:
        """A page's text lines; an upload is OCR'd on first use."""
        upload = self._uploads.get(page_id)
        if upload is None:
            return self.store.lines(page_id)
        with self._lock:
            if upload.lines is None:
                self._ocr = self._ocr or OcrEngine()
                upload.lines = self._ocr.lines(upload.image)
        return upload.lines

    def shown(self, image: ShownImage) -> Image.Image:
        """The image exactly as the model was shown it."""
        return render_seen(self.page(image.page_id), image.seen)

    def remember(self, image: ShownImage, pixels: Image.Image) -> None:
        """Keep the encoding of pixels just made for `image` (a crop), so sending it does not re-make them."""
        self._encoded.put(_key(image), EncodedImage.encode(pixels, "png"))

    def data_url(self, image: ShownImage) -> str:
        """The image as sent: a PNG data URL, encoded once however many turns send it."""
        return self._encoded.get(_key(image), lambda: EncodedImage.encode(self.shown(image), "png")).data_url


def composite_data_url(images: list[ShownImage], pages: PageImages, direction: str) -> str:
    """The images pasted into one (SPEC §6, VisRAG-Gen concatenation), resized as Qwen2.5-VL would see it."""
    pasted = concatenate([pages.shown(image) for image in images], direction)  # type: ignore[arg-type]
    return EncodedImage.encode(resize_for_model(pasted), "png").data_url


def openai_messages(messages: list[dict], images: list[ShownImage], pages: PageImages, max_images: int, *,
                    concatenate_images: str = "") -> list[dict]:
    """The conversation in OpenAI chat form: image parts become `image_url` data URLs in their user messages.

    Only the `max_images` most recent images are sent (vLLM's --limit-mm-per-prompt); an older one is replaced by
    a short text part so the numbering the model reads stays the same. With `concatenate_images` ("horizontal" or
    "vertical"), the images of one message go as one pasted image, for a model that reads one image.
    """
    sent = {image.index for image in images[-max_images:] if pages.available(image.page_id)}
    by_index = {image.index: image for image in images}
    # An image part whose image is not in `images` (an earlier turn's, left out by the caller) is not sent either.
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        parts = []
        pasted = [by_index[p["image"]] for p in content if p.get("type") == "image" and p["image"] in sent]
        for part in content:
            if part.get("type") != "image":
                parts.append(part)
            elif part["image"] not in sent:
                parts.append({"type": "text", "text": f"[image {part['image']} is no longer shown]"})
            elif not concatenate_images:
                parts.append({"type": "image_url", "image_url": {"url": pages.data_url(by_index[part["image"]])}})
            elif part["image"] == pasted[0].index:
                url = composite_data_url(pasted, pages, concatenate_images)
                parts.append({"type": "image_url", "image_url": {"url": url}})
        # Role and content only: the graph's own marks (a retry message's) are not the endpoint's to read.
        out.append({"role": message["role"], "content": parts})
    return out
