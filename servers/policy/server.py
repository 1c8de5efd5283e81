"""An OpenAI-compatible chat-completions server for a policy: `pagelens serve policy`.

The agent talks to its policy over the OpenAI chat API whatever serves it (DESIGN, data flow 3). vLLM is the
production server; this one serves the same wire format from two backends that need no GPU stack:

- `transformers`: a local Qwen2.5-VL-family checkpoint (`transformers_backend`), for CPU-only machines,
  CI and checking a trained checkpoint without vLLM.
- `replay` (`replay_backend`): a scripted policy for tests and debugging. The script is a JSON file holding a
  list of assistant texts, or a JSONL file of `{"text": ...}` lines; each chat completion returns the next text,
  and an exhausted script answers 503. `{"seconds": N}` beside a text makes that reply take N seconds, as a
  slow model would. There is no model behind it, so it reports no token counts
  (`usage: null`) and no probabilities (`logprobs: null`, even when asked), rather than invent them.

Requests are validated before a backend sees them, by the models the agent API validates with too
(servers.chat_request): both backends and both servers accept and refuse the same bodies, so a client bug shows up
against the replay backend too. Images must be inline base64 data URLs, because nothing can be downloaded; the one
field only this server reads is vLLM's repetition_penalty (PolicyCompletionRequest). The agent API's limits
hold here too (servers.limits, `[serving]` in pagelens.toml): bodies over max_body_bytes get 413, and a request whose
images pass max_image_pixels each or max_request_pixels together gets 400 before any image is decoded. With a key
(`--api-key`, else PAGELENS_POLICY_API_KEY, the key `pagelens ask` sends), /v1 requests without it get 401.
`record` appends every request body as one JSONL line, so tests can read exactly what a client sent, until the file
reaches its size limit (`--record-max-mb`): then one warning, and later requests are not recorded.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException

from pagelens.errors import BadInputError, PageLensError
from pagelens.servers.chat_request import ChatCompletionRequest, ChatMessage, parse_request, read_messages
from pagelens.servers.limits import ApiError, check_key, read_json, warn_if_exposed
from pagelens.servers.settings import ServingSettings
from pagelens.tools.regions import MAX_PIXELS, MIN_PIXELS

DEFAULT_MAX_TOKENS = 1024
# Where the server's key comes from, as its messages name it.
KEY_NAMED = "--api-key (PAGELENS_POLICY_API_KEY)"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample, as the request asked (OpenAI names; repetition_penalty as vLLM takes it)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    raw: bytes  # the token's exact bytes, which may be part of a UTF-8 character


@dataclass(frozen=True)
class Generation:
    """A finished completion. Counts and logprobs are None where a backend has no tokenizer or model."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None


class PolicyBackend(Protocol):
    """What the server needs from a backend. Both methods raise BadInputError before producing anything."""

    name: str  # the model name clients must send

    def generate(self, messages: list[ChatMessage], params: SamplingParams) -> Generation: ...

    def stream(self, messages: list[ChatMessage], params: SamplingParams) -> Iterator[str | Generation]:
        """Text deltas, then the finished Generation (whose text is the deltas joined)."""
        ...


class ScriptExhaustedError(PageLensError):
    """A backend has nothing left to answer with (the replay backend's script is used up): HTTP 503."""


def make_backend(backend_name: str, model: str | None = None, script: Path | None = None, *,
                 device: str = "auto", served_model_name: str | None = None, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> PolicyBackend:
    """Load the named backend ("transformers" needs `model`, "replay" needs `script`)."""
    if backend_name == "replay":
        if script is None:
            raise BadInputError("the replay backend needs a script; give --script FILE with the replies in order.")
        from pagelens.servers.policy.replay_backend import ReplayBackend

        return ReplayBackend(script, served_model_name or "replay")
    if backend_name == "transformers":
        if model is None:
            raise BadInputError("the transformers backend needs a model; give --model with a local checkpoint folder.")
        from pagelens.servers.policy.transformers_backend import TransformersBackend

        return TransformersBackend(model, device=device, name=served_model_name,  # type: ignore[arg-type]
                                   min_pixels=min_pixels, max_pixels=max_pixels)
    raise BadInputError(f"backend {backend_name!r} is not known; use 'transformers' or 'replay'.")


class PolicyCompletionRequest(ChatCompletionRequest):
    """A chat-completions request, plus vLLM's repetition_penalty, which only a policy server reads."""

    repetition_penalty: float | None = Field(None, gt=0, le=10, description="a number above 0 up to 10")

    @property
    def params(self) -> SamplingParams:
        """The request's sampling, the defaults where it leaves a field out (max_completion_tokens before
        max_tokens, as OpenAI reads them)."""
        stop = self.stop or ()
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty)


class Recorder:
    """Appends request bodies to a JSONL file while it stays within `max_bytes`; the first body that would pass
    that is not written, one warning says so, and nothing more is recorded."""

    def __init__(self, path: Path, max_bytes: int):
        if not Path(path).parent.is_dir():
            raise BadInputError(f"record file {path} is in a folder that does not exist; create it or record "
                                "elsewhere.")
        if max_bytes < 1:
            raise BadInputError(f"the record limit of {max_bytes} bytes is not positive; give --record-max-mb > 0.")
        self.path, self.max_bytes = Path(path), max_bytes
        self.size = self.path.stat().st_size if self.path.exists() else 0
        self.full = False
        self._lock = threading.Lock()

    def write(self, body: object) -> None:
        line = (json.dumps(body) + "\n").encode()
        with self._lock:
            if self.full:
                return
            if self.size + len(line) > self.max_bytes:
                self.full = True
                print(f"warning: the record file {self.path} reached its {self.max_bytes:,}-byte limit; later "
                      "requests are not recorded (raise --record-max-mb to keep more).", file=sys.stderr, flush=True)
                return
            with open(self.path, "ab") as out:
                out.write(line)
            self.size += len(line)


def create_app(backend: PolicyBackend, *, serving: ServingSettings, api_key: str, record: Recorder | None) -> FastAPI:
    """The FastAPI app serving `backend` at /v1/models, /v1/chat/completions and /healthz, within `serving`'s
    limits; with `api_key`, the /v1 routes need it as a bearer token."""
    app = FastAPI(title="pagelens policy server")
    started = int(time.time())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(ApiError(exc.status_code, str(exc.detail)))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": backend.name}

    @app.get("/v1/models")
    def models(request: Request) -> Response:
        try:
            check_key(request, api_key, KEY_NAMED)
        except ApiError as exc:
            return _error(exc)
        return JSONResponse({"object": "list", "data": [
            {"id": backend.name, "object": "model", "created": started, "owned_by": "pagelens"}]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            check_key(request, api_key, KEY_NAMED)
            body = await read_json(request, serving.max_body_bytes)
            if record is not None:
                await run_in_threadpool(record.write, body)
            chat = await run_in_threadpool(parse_request, PolicyCompletionRequest, body)
            if chat.model != backend.name:
                raise ApiError(404, f"model {chat.model!r} is not served here; use {backend.name!r}.",
                               "not_found_error", "model", "model_not_found")
            messages = await run_in_threadpool(read_messages, chat, serving)
            if chat.stream:
                items = await run_in_threadpool(backend.stream, messages, chat.params)
                return EventSourceResponse(_events(_chunks(chat, backend.name, items)), sep="\n")
            generation = await run_in_threadpool(backend.generate, messages, chat.params)
        except ApiError as exc:
            return _error(exc)
        except BadInputError as exc:
            return _error(ApiError(400, str(exc)))
        except ScriptExhaustedError as exc:
            return _error(ApiError(503, str(exc), "service_unavailable_error"))
        except Exception as exc:
            traceback.print_exc()
            return _error(ApiError(500, f"the policy backend failed ({exc}); see the server log.", "internal_error"))
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": backend.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text},
                         "logprobs": _logprobs(generation) if chat.logprobs else None,
                         "finish_reason": generation.finish_reason}],
            "usage": _usage(generation),
        })

    return app


def _chunks(chat: PolicyCompletionRequest, model: str, items: Iterator[str | Generation]) -> Iterator[dict]:
    """chat.completion.chunk objects: the role, the deltas, the finish (with logprobs), then usage if asked."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, **({"usage": None} if chat.include_usage else {})}

    def chunk(delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    try:
        for item in items:
            if isinstance(item, Generation):
                final = item
            elif item:
                yield chunk({"content": item})
    except Exception as exc:  # the status line is already sent: report in the stream, as vLLM does
        traceback.print_exc()
        yield {"error": {"message": f"the policy backend failed ({exc}); see the server log.",
                         "type": "internal_error", "param": None, "code": None}}
        return
    # logprobs come whole with the finish: deltas are cut at characters, tokens are not
    yield chunk({}, final.finish_reason, _logprobs(final) if chat.logprobs else None)
    if chat.include_usage:
        yield {**head, "choices": [], "usage": _usage(final)}


def _events(chunks: Iterator[dict]) -> Iterator[ServerSentEvent]:
    for chunk in chunks:
        yield ServerSentEvent(json.dumps(chunk))
    yield ServerSentEvent("[DONE]")


def _logprobs(generation: Generation) -> dict | None:
    if generation.logprobs is None:
        return None
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.raw), "top_logprobs": []}
                        for t in generation.logprobs]}


def _usage(generation: Generation) -> dict | None:
    if generation.prompt_tokens is None or generation.completion_tokens is None:
        return None
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


def _error(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), error.status, headers=error.headers)


def run_policy_server(backend_name: str, model: str | None, script: Path | None, *, serving: ServingSettings,
                      api_key: str, host: str, port: int, device: str, served_model_name: str | None,
                      record: Path | None, record_max_mb: float, min_pixels: int = MIN_PIXELS,
                      max_pixels: int = MAX_PIXELS) -> None:
    """Load the backend and serve it with uvicorn until interrupted; `record_max_mb` bounds the `record` file."""
    import uvicorn

    recorder = None if record is None else Recorder(record, int(record_max_mb * 1024 * 1024))
    backend = make_backend(backend_name, model, script, device=device, served_model_name=served_model_name,
                           min_pixels=min_pixels, max_pixels=max_pixels)
    print(f"pagelens policy server: {backend_name} backend, model {backend.name!r}, at http://{host}:{port}/v1",
          file=sys.stderr, flush=True)
    warn_if_exposed(host, api_key, KEY_NAMED)
    app = create_app(backend, serving=serving, api_key=api_key, record=recorder)
    uvicorn.run(app, host=host, port=port, log_level="warning")
