"""What an agent API request asks for: a chat-completions body turned into one agent run, or an `ApiError`.

The body is validated by servers.chat_request, as the policy server validates its own, plus the agent API's one rule:
the last message is a user message holding the question. The API is stateless, as OpenAI's is: earlier messages
are context passed to the agent as text-only `history`, and every image in a user message (an inline base64 data
URL; nothing is downloaded) is a page shown for this request only (`uploads`). Sampling fields (temperature,
max_tokens, ...) are checked like the policy server's and then ignored: the server's policy settings decide how
the policy samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import field_validator

from pagelens.graph.settings import PROTOCOLS
from pagelens.servers.chat_request import ChatCompletionRequest, Message, parse_request, read_messages
from pagelens.servers.limits import ApiError
from pagelens.servers.settings import ServingSettings

BASE_MODEL = "pagelens"
# "pagelens" runs the configured protocol; "pagelens:<protocol>" picks one.
MODELS = (BASE_MODEL, *(f"{BASE_MODEL}:{protocol}" for protocol in PROTOCOLS))


class AgentCompletionRequest(ChatCompletionRequest):
    """A chat-completions request whose last message asks the agent a question."""

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, messages: list[Message]) -> list[Message]:
        last = messages[-1]
        if last.role != "user":
            raise ValueError(f"ends with a message of role {last.role!r}; end with a user message holding the question")
        if not "".join(part.text or "" for part in last.parts).strip():
            raise ValueError("ends with a user message without text; add a text part asking about the pages")
        return messages


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


def protocol_of(model: str) -> str | None:
    """The protocol a model name selects (None for the configured default); an unknown model is a 404."""
    if model not in MODELS:
        raise ApiError(404, f"model {model!r} does not exist here; use one of {', '.join(MODELS)} "
                            "(GET /v1/models lists them).", param="model", code="model_not_found")
    return model.partition(":")[2] or None


def parse_chat_request(body: Any, serving: ServingSettings) -> ChatRequest:
    """Validate a chat-completions body; every problem is one ApiError sentence naming the field and the fix.
    Images are decoded only once the whole request is known to be within `serving`'s pixel caps."""
    request = parse_request(AgentCompletionRequest, body)
    protocol = protocol_of(request.model)
    messages = read_messages(request, serving)
    texts = ["\n".join(part for part in message.parts if isinstance(part, str)) for message in messages]
    history = tuple({"role": message.role, "content": text} for message, text in zip(messages[:-1], texts)
                    if text.strip())
    images = [part for message in messages for part in message.parts if isinstance(part, Image.Image)]
    return ChatRequest(model=request.model, protocol=protocol, question=texts[-1].strip(), history=history,
                       uploads=tuple((f"upload-{n}", image) for n, image in enumerate(images, 1)),
                       stream=request.stream, include_usage=request.include_usage)
