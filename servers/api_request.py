"""What an agent API request asks for: a chat-completions body turned into one agent run, or an `ApiError`.

The API is stateless, as OpenAI's is: the last message (a user message) is the question, the earlier messages are
context passed to the agent as text-only `history`, and every image in a user message (an inline base64 data
URL; nothing is downloaded) is a page shown for this request only (`uploads`). Sampling fields (temperature,
max_tokens, ...) are accepted and ignored: the server's policy settings decide how the policy samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from pagelens.graph.settings import PROTOCOLS
from pagelens.servers.limits import ApiError, EncodedImage, ImageBudget
from pagelens.servers.settings import ServingSettings

BASE_MODEL = "pagelens"
# "pagelens" runs the configured protocol; "pagelens:<protocol>" picks one.
MODELS = (BASE_MODEL, *(f"{BASE_MODEL}:{protocol}" for protocol in PROTOCOLS))

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


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


def parse_chat_request(body: Any, serving: ServingSettings) -> ChatRequest:
    """Validate a chat-completions body; every problem is one ApiError sentence naming the field and the fix.
    Images are decoded only once the whole request is known to be within `serving`'s pixel caps."""
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
    images: list[EncodedImage] = []
    budget = ImageBudget(serving)
    for i, message in enumerate(messages):
        role, text = _message(message, f"messages[{i}]", images, budget)
        if i == len(messages) - 1:
            if role != "user":
                raise ApiError(400, f"messages[{i}] is a {role} message; end with a user message holding the question.",
                               param=f"messages[{i}]")
            if not text.strip():
                raise ApiError(400, f"messages[{i}] holds no question text; add a text part asking about the pages.",
                               param=f"messages[{i}]")
        elif text.strip():
            history.append({"role": role, "content": text})
    uploads = tuple((f"upload-{n}", image.decode()) for n, image in enumerate(images, 1))
    return ChatRequest(model=body["model"], protocol=protocol, question=text.strip(), history=tuple(history),
                       uploads=uploads, stream=body.get("stream") is True,
                       include_usage=options.get("include_usage") is True)


def _message(message: Any, where: str, images: list[EncodedImage], budget: ImageBudget) -> tuple[str, str]:
    """A message's role and text; its images, read (not decoded) through `budget`, are appended to `images`."""
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
            images.append(budget.read(url, at))
        else:
            raise ApiError(400, f"{at} is not a text part or an image_url part; send {{'type': 'text', 'text': ...}} "
                                "or {'type': 'image_url', 'image_url': {'url': ...}}.", param=at)
    return role, "\n".join(texts)
