"""What an agent API request asks for: a chat-completions body turned into one agent run, or an `ApiError`.

The API is stateless, as OpenAI's is: the last message (a user message) is the question, the earlier messages are
context passed to the agent as text-only `history`, and every image in a user message (an inline base64 data
URL; nothing is downloaded) is a page shown for this request only (`uploads`). Sampling fields (temperature,
max_tokens, ...) are accepted and ignored: the server's policy settings decide how the policy samples.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pagelens.graph.settings import PROTOCOLS

BASE_MODEL = "pagelens"
# "pagelens" runs the configured protocol; "pagelens:<protocol>" picks one.
MODELS = (BASE_MODEL, *(f"{BASE_MODEL}:{protocol}" for protocol in PROTOCOLS))

_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg|webp|gif|bmp|tiff);base64,(.*)", re.DOTALL)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request the API refuses, in OpenAI's error shape: HTTP status, message, type, param and code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """One validated request: the model asked for, the protocol it means (None: the configured one), the
    question, the earlier messages as text, the request's images as (name, image) pages, and how to answer."""

    model: str
    protocol: str | None
    question: str
    history: tuple[dict, ...]
    uploads: tuple[tuple[str, Image.Image], ...]
    stream: bool = False
    include_usage: bool = False


def protocol_of(model: Any) -> str | None:
    """The protocol a model name selects (None for the configured default); an unknown model is a 404."""
    if not isinstance(model, str):
        raise ApiError(400, "model is missing; send one of " + ", ".join(MODELS) + " (GET /v1/models lists them).",
                       param="model")
    if model not in MODELS:
        raise ApiError(404, f"model {model!r} does not exist here; use one of {', '.join(MODELS)} "
                            "(GET /v1/models lists them).", param="model", code="model_not_found")
    return model.partition(":")[2] or None


def parse_chat_request(body: Any, *, max_image_pixels: int) -> ChatRequest:
    """Validate a chat-completions body; every problem is one ApiError sentence naming the field and the fix."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body is not a JSON object; send a chat-completions request.")
    protocol = protocol_of(body.get("model"))
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1 here; send one request per completion.", param="n")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options is not an object; send {'include_usage': true} or leave it out.",
                       param="stream_options")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list; send at least one user message with the question.",
                       param="messages")
    history: list[dict] = []
    uploads: list[tuple[str, Image.Image]] = []
    for i, message in enumerate(messages):
        role, text = _message(message, f"messages[{i}]", uploads, max_image_pixels)
        if i == len(messages) - 1:
            if role != "user":
                raise ApiError(400, f"messages[{i}] is a {role} message; end with a user message holding the question.",
                               param=f"messages[{i}]")
            if not text.strip():
                raise ApiError(400, f"messages[{i}] holds no question text; add a text part asking about the pages.",
                               param=f"messages[{i}]")
        elif text.strip():
            history.append({"role": role, "content": text})
    return ChatRequest(model=body["model"], protocol=protocol, question=text.strip(), history=tuple(history),
                       uploads=tuple(uploads), stream=body.get("stream") is True,
                       include_usage=options.get("include_usage") is True)


def _message(message: Any, where: str, uploads: list[tuple[str, Image.Image]],
             max_image_pixels: int) -> tuple[str, str]:
    """A message's role and text; its images are appended to `uploads`."""
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} is not an object; send {{'role': ..., 'content': ...}}.", param=where)
    role = _ROLES.get(message.get("role"))
    if role is None:
        raise ApiError(400, f"{where}.role is {message.get('role')!r}; use system, user or assistant (this API runs "
                            "its own tools, so it takes no tool messages).", param=f"{where}.role")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return role, content or ""
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content is not a string or a list of parts; send text or parts.",
                       param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            if role != "user":
                raise ApiError(400, f"{at} is an image in a {role} message; send images in user messages.", param=at)
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ApiError(400, f"{at}.image_url has no url; send {{'url': 'data:image/png;base64,...'}}.",
                               param=at)
            uploads.append((f"upload-{len(uploads) + 1}", decode_image(url, at, max_image_pixels)))
        else:
            raise ApiError(400, f"{at} is not a text part or an image_url part; send {{'type': 'text', 'text': ...}} "
                                "or {'type': 'image_url', 'image_url': {'url': ...}}.", param=at)
    return role, "\n".join(texts)


def decode_image(url: str, where: str, max_pixels: int) -> Image.Image:
    """The RGB image in a base64 data URL, refused before decoding when it holds more than `max_pixels` pixels."""
    if url.startswith(("http://", "https://")):
        raise ApiError(400, f"{where} is a web address ({url[:60]}); this API does not download images, so send "
                            "the image inline as a data:image/png;base64 URL.", param=where)
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise ApiError(400, f"{where} is not a base64 image data URL ({url[:40]!r}); send "
                            "data:image/png;base64,... (png, jpeg, webp, gif, bmp or tiff).", param=where)
    try:
        data = base64.b64decode(match[2], validate=True)
    except binascii.Error:
        raise ApiError(400, f"{where} holds invalid base64; encode the image bytes with standard base64.",
                       param=where) from None
    size = None
    try:
        # The header gives the size without decoding, so a huge image is refused before it costs memory.
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if size[0] * size[1] <= max_pixels:
                return image.convert("RGB")
    except Image.DecompressionBombError:
        pass  # Pillow's own cap (about 179M pixels) refused it while reading the header
    except Exception as exc:  # Pillow signals broken files with many exception types (OSError, SyntaxError, ...)
        raise ApiError(400, f"{where} does not hold a readable {match[1]} image ({exc}); send a valid image file's "
                            "bytes.", param=where) from None
    described = f"a {size[0]}x{size[1]} image ({size[0] * size[1]:,} pixels)" if size else "an image"
    raise ApiError(400, f"{where} is {described}, over the {max_pixels:,}-pixel limit; send it smaller or raise "
                        "max_image_pixels in [serving].", param=where, code="image_too_large")
