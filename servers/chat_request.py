"""The OpenAI chat-completions request, as both the agent API and the policy server take it: one set of models,
so the two accept and refuse the same bodies with the same sentences.

The rule is OpenAI's shape, checked strictly (no "3" for 3, no 1 for true; a null field is one left out):
messages with system, developer, user or assistant roles; content a string or text and image_url parts, images only
in user messages, only an assistant message without content; the sampling fields within OpenAI's ranges. Fields
neither server reads (user, metadata, tools, ...) are ignored, as OpenAI-compatible servers do, so stock clients and
their extra_body options pass. Each server adds what only it reads in a subclass: the agent API that the last
message is the question (servers.api.request), the policy server vLLM's repetition_penalty (servers.policy.server).

Bad input is one `ApiError` (HTTP 400, OpenAI's error shape) whose sentence names the field's path in the body,
what it holds and, from the field's description, what to send. Images are read through servers.limits, which checks
every image of the request against the pixel caps from its header before any is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, get_args

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from pagelens.servers.limits import ApiError, ImageBudget, ReceivedImage
from pagelens.servers.settings import ServingSettings

_SHAPES = {"text": "{'type': 'text', 'text': ...}",
           "image_url": "{'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}}"}
_NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_left_out(cls, data: Any) -> Any:
        # As OpenAI reads them: clients send null for options they leave to the server (the openai client's
        # logprobs=None, an assistant turn's content).
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data


class ImageURL(_Strict):
    url: str = Field(description="an inline image as a data:image/png;base64,... URL")


class Part(_Strict):
    """One part of a message's content; the field its type names must be there."""

    type: Literal["text", "image_url"] = Field(description="'text' or 'image_url'")
    text: str | None = Field(None, description="the part's text, a string")
    image_url: ImageURL | None = Field(None, description="{'url': 'data:image/png;base64,...'}")

    @model_validator(mode="after")
    def _has_its_field(self) -> Part:
        if getattr(self, self.type) is None:
            raise ValueError(f"has type {self.type!r} but no {self.type} field; send {_SHAPES[self.type]}")
        return self


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system, user or assistant (developer is read as system; send tool results as user messages)")
    content: str | list[Part] | None = Field(
        None, description=f"a string, or a list of parts, each {_SHAPES['text']} or {_SHAPES['image_url']}")

    @model_validator(mode="after")
    def _fits_its_role(self) -> Message:
        if self.content is None and self.role != "assistant":
            raise ValueError("has no content; send a string or a list of parts (only an assistant message may "
                             "leave it out)")
        if self.role != "user" and any(part.type == "image_url" for part in self.parts):
            raise ValueError(f"holds an image in a message of role {self.role!r}; send images in user messages")
        return self

    @property
    def parts(self) -> list[Part]:
        if isinstance(self.content, str):
            return [Part(type="text", text=self.content)]
        return self.content or []


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="true or false")


class ChatCompletionRequest(_Strict):
    """A chat-completions request body; sampling fields left out are None (the server's default)."""

    model: str = Field(description="the model's name, as GET /v1/models lists it")
    messages: list[Message] = Field(min_length=1, description="a non-empty list of {'role': ..., 'content': ...} "
                                                              "messages")
    n: Literal[1] = Field(1, description="1 (send one request per completion)")
    stream: bool = Field(False, description="true or false")
    stream_options: StreamOptions | None = Field(None, description="{'include_usage': true}")
    max_tokens: int | None = Field(None, ge=1, le=1 << 20, description="a whole number from 1 to 1048576")
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20,
                                              description="a whole number from 1 to 1048576")
    temperature: float | None = Field(None, ge=0, le=2, description="a number from 0 to 2")
    top_p: float | None = Field(None, gt=0, le=1, description="a number above 0 up to 1")
    stop: _NonEmpty | list[_NonEmpty] | None = Field(None, description="a non-empty string or a list of them")
    seed: int | None = Field(None, description="a whole number")
    logprobs: bool = Field(False, description="true or false")
    top_logprobs: Literal[0] | None = Field(None, description="0 (these servers return no alternatives)")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


@dataclass(frozen=True)
class ChatMessage:
    """One validated chat turn: its role (developer read as system), its text and images in order."""

    role: Literal["system", "user", "assistant"]
    parts: tuple[str | Image.Image, ...]


Request = TypeVar("Request", bound=ChatCompletionRequest)


def parse_request(model: type[Request], body: Any) -> Request:
    """`body` validated as `model`, or an ApiError (400) naming the first problem's field and what to send."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # The deepest error is the most precise one: for content that is a list, the bad part rather than "not a
        # string" from the union's other branch.
        raise _explain(model, max(exc.errors(), key=lambda error: len(error["loc"]))) from None


def read_messages(request: ChatCompletionRequest, serving: ServingSettings) -> list[ChatMessage]:
    """The request's messages with their images decoded, once every image has passed `serving`'s pixel caps."""
    budget = ImageBudget(serving)
    read = [(message.role, [part.text if part.type == "text"
                            else budget.read(part.image_url.url, f"messages[{i}].content[{j}].image_url.url")
                            for j, part in enumerate(message.parts)])
            for i, message in enumerate(request.messages)]
    return [ChatMessage("system" if role == "developer" else role,  # type: ignore[arg-type]
                        tuple(part.decode() if isinstance(part, ReceivedImage) else part for part in parts))
            for role, parts in read]


def _explain(model: type[BaseModel], error: ErrorDetails) -> ApiError:
    """One sentence: the field's path as the body writes it, what it holds, and its description as the fix."""
    path, field, current = "", None, model
    for key in error["loc"]:
        if isinstance(key, int):
            path += f"[{key}]"
        elif current is not None and key in current.model_fields:
            field, current = current.model_fields[key], _model_in(current.model_fields[key].annotation)
            path += f".{key}" if path else key
        # any other key is pydantic naming a union's branch, which the body does not write
    if error["type"] == "value_error":  # raised by a validator above, which wrote the rest of the sentence
        message = f"{path} {error['ctx']['error']}."
    elif field is None:
        message = "the request body is not a JSON object; send a chat-completions request."
    elif error["type"] == "missing":
        message = f"{path} is missing; send {field.description}."
    else:
        message = f"{path} is {_shown(error['input'])}; use {field.description}."
    return ApiError(400, message, param=path or None)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field's annotation holds (Message in list[Message]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, get_args(annotation))), None)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
