"""The agent as an OpenAI-compatible chat completions API: `pagelens serve api`.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `GET /healthz`. Model `pagelens` runs the agent with
the configured policy and protocol; `pagelens:pagelens`, `pagelens:vrag` and `pagelens:evisrag` pick the protocol.
The API is stateless: the last user message is the question, earlier messages are text context, and images in
the request are pages for that request only (servers.api_request).

A completion's content is the answer followed by a "Sources:" footer (document, page, region box in page pixels,
what the policy read there); the same citations, the run's status and its step count are structured data in the
extra top-level field `pagelens`. A run without an answer (turn limit, timeout) is an ordinary completion whose
content says so and why. With `stream: true`, each step of the run is one line of `delta.reasoning_content`
(which stock clients ignore), the answer comes as `delta.content`, the last choice chunk carries `pagelens`,
`stream_options.include_usage` adds the usage chunk, and `data: [DONE]` closes the stream. Headers are sent once
the run's first policy call is done, so a policy endpoint that is down is still a 502 rather than a broken stream.

Usage counts the policy's prompt and completion tokens summed over its calls, as its endpoint reports them.
The extractive policy (and an endpoint that reports no usage) counts none: usage then counts words of the
question and context and of the content instead, and `pagelens.usage_unit` says "words".

Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 a request that cannot be
used (an image over max_image_pixels, or images together over max_request_pixels: read from their headers, before
any is decoded; servers.limits, shared with the policy server), 401 a missing or wrong key (when PAGELENS_API_KEY
is set), 403 a browser origin not allowed, 404 an unknown model, 413 a body over max_body_bytes, 429 (with
Retry-After) when max_running runs are running and max_queued waiting, 502 a policy endpoint that fails. A client
that disconnects cancels its run at its next step.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException

from pagelens.errors import BadInputError, PageLensError, PolicyError
from pagelens.graph.run import RunResult, Step
from pagelens.servers.answers import describe
from pagelens.servers.api.request import MODELS, ChatRequest, parse_chat_request
from pagelens.servers.api.runs import AgentService, Event, Run
from pagelens.servers.config import Settings
from pagelens.servers.limits import AllowedCallers, ApiError, check_key, read_json, warn_if_exposed

# How often a request waiting on its run checks whether its client is still there.
_POLL_SECONDS = 0.25
# A comment line this often keeps proxies from closing a stream while the policy thinks (clients ignore it).
_KEEPALIVE_SECONDS = 15.0
# nginx's "client closed request": what the log shows for a request whose client left before its answer.
_CLIENT_GONE = 499


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def create_app(service: AgentService, *, host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI app serving `service`'s agents on `host`; the caller owns the service and closes it."""
    serving = service.settings.serving
    callers = AllowedCallers.of(host, serving.origins)
    app = FastAPI(title="pagelens agent API")
    app.add_middleware(CORSMiddleware, allow_origin_regex=callers.origin_pattern.pattern,
                       allow_methods=["GET", "POST"], allow_headers=["*"])
    started = int(time.time())

    def check_access(request: Request) -> None:
        # DNS rebinding: a web page whose name now resolves to this server must not reach it. Without a key the
        # Host header must name this server; with one, the key guards it (and clients may use any name for it).
        origin = request.headers.get("origin")
        if origin and not callers.origin_allowed(origin):
            raise ApiError(403, f"browser origin {origin} is not allowed; add it to allowed_origins in [serving].",
                           "permission_error", code="origin_not_allowed")
        given_host = request.headers.get("host", "")
        if not serving.api_key and not callers.host_allowed(given_host):
            raise ApiError(421, f"Host {given_host!r} does not name this server; reach it as 127.0.0.1, list the "
                                "name's origin in allowed_origins, or set PAGELENS_API_KEY.", "permission_error",
                           code="host_not_allowed")
        check_key(request, serving.api_key, "PAGELENS_API_KEY")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}; the API serves "
                                                "GET /v1/models, POST /v1/chat/completions and GET /healthz."))

    @app.get("/healthz")
    async def healthz() -> dict:
        gate = service.gate
        running = gate.running if gate else 0
        return {"status": "ok", "running": running, "queued": (gate.admitted - running) if gate else 0}

    @app.get("/v1/models")
    def models(request: Request) -> Response:
        try:
            check_access(request)
        except ApiError as exc:
            return _error(exc)
        return JSONResponse({"object": "list", "data": [
            {"id": model, "object": "model", "created": started, "owned_by": "pagelens"} for model in MODELS]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            check_access(request)
            body = await read_json(request, serving.max_body_bytes)
            chat = await run_in_threadpool(parse_chat_request, body, serving)
            run = service.start(chat)
            if chat.stream:
                # Headers wait for the first policy call, so that an endpoint that is down is a 502, not a stream.
                early = [await _next_event(run, request)]
                while isinstance(early[-1], Step) and early[-1].kind != "observe":
                    early.append(await _next_event(run, request))
                if isinstance(early[-1], Exception):
                    raise early[-1]
                # sse-starlette frames the events, sends a keep-alive comment every _KEEPALIVE_SECONDS while a
                # step runs (proxies drop idle streams), and cancels the generator when the client goes.
                return EventSourceResponse(_stream(run, chat, early), ping=_KEEPALIVE_SECONDS, sep="\n")
            progress = []
            while not isinstance(event := await _next_event(run, request), RunResult):
                if isinstance(event, Exception):
                    raise event
                progress.append(event)
            return JSONResponse(_completion(chat, event, progress))
        except _ClientGone:
            return Response(status_code=_CLIENT_GONE)
        except Exception as exc:  # every failure is answered in OpenAI's error shape
            return _error(_api_error(exc))

    return app


async def _next_event(run: Run, request: Request) -> Event:
    """The run's next event; if the client disconnects first, cancel the run and raise _ClientGone."""
    get = asyncio.ensure_future(run.events.get())
    try:
        while not get.done():
            await asyncio.wait({get}, timeout=_POLL_SECONDS)
            if not get.done() and await request.is_disconnected():
                run.cancelled.set()
                raise _ClientGone
        return get.result()
    finally:
        get.cancel()


async def _stream(run: Run, chat: ChatRequest, early: list[Event]) -> AsyncIterator[ServerSentEvent]:
    """The SSE events of a run, starting with the events that came before its headers. The generator is cancelled
    when the client disconnects; the run then stops at its next step."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": chat.model, **({"usage": None} if chat.include_usage else {})}

    def chunk(delta: dict, finish: str | None = None, **extra: object) -> ServerSentEvent:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return ServerSentEvent(json.dumps({**head, "choices": [choice], **extra}))

    try:
        yield chunk({"role": "assistant", "content": ""})
        for step in early[:-1]:
            yield chunk({"reasoning_content": describe(step) + "\n"})  # type: ignore[arg-type]
        event = early[-1]
        while isinstance(event, Step):
            yield chunk({"reasoning_content": describe(event) + "\n"})
            event = await run.events.get()
        if isinstance(event, RunResult):
            content = answer_content(event)
            usage, unit = _usage(chat, event, content)
            yield chunk({"content": content})
            yield chunk({}, "stop", pagelens=_extra(event, unit))
            if chat.include_usage:
                yield ServerSentEvent(json.dumps({**head, "choices": [], "usage": usage}))
        else:  # the status line is sent: the error goes in the stream, which the openai client raises
            yield ServerSentEvent(json.dumps(_api_error(event).body()))
        yield ServerSentEvent("[DONE]")
    finally:
        run.cancelled.set()  # a no-op once the run has ended


def answer_content(result: RunResult) -> str:
    """The answer and a "Sources:" footer citing each piece of evidence, or why there is no answer."""
    if result.answer is None:
        return f"No answer: {result.message}."
    lines = [result.answer]
    if result.evidence:
        lines += ["", "Sources:"]
        for item in result.evidence:
            where = f"region {item.region.box.rounded().as_list()}" if item.region is not None else "whole page"
            lines.append(f"[{item.image}] {item.document} p.{item.page_number}, {where}: {item.text}")
    elif result.images:
        # The vrag protocol writes no evidence: list what the answer was read from instead.
        lines += ["", "Pages shown (this protocol cites none):"]
        for image in result.images:
            where = f"region {image.region.box.rounded().as_list()}" if image.region is not None else "whole page"
            lines.append(f"[{image.index}] {image.document} p.{image.page_number}, {where}")
    return "\n".join(lines)


def _completion(chat: ChatRequest, result: RunResult, progress: list[Step]) -> dict:
    content = answer_content(result)
    usage, unit = _usage(chat, result, content)
    message = {"role": "assistant", "content": content,
               "reasoning_content": "".join(describe(step) + "\n" for step in progress)}
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": chat.model, "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage, "pagelens": _extra(result, unit)}


def _usage(chat: ChatRequest, result: RunResult, content: str) -> tuple[dict, str]:
    """OpenAI's usage object and its unit: the policy's tokens over all its calls, or words when it counts none."""
    calls = [step.detail for step in result.steps if step.kind == "observe"]
    prompt = sum(detail.get("prompt_tokens", 0) for detail in calls)
    completion = sum(detail.get("completion_tokens", 0) for detail in calls)
    unit = "tokens"
    if not (prompt or completion):
        unit = "words"
        prompt = len(chat.question.split()) + sum(len(message["content"].split()) for message in chat.history)
        completion = len(content.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}, unit


def _extra(result: RunResult, unit: str) -> dict:
    return {"status": result.status, "message": result.message, "protocol": result.protocol, "policy": result.policy,
            "steps": len(result.steps), "evidence": [item.to_dict() for item in result.evidence],
            "usage_unit": unit}


def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PolicyError):
        return ApiError(502, str(exc), "api_error", code="policy_error")
    if isinstance(exc, BadInputError):
        return ApiError(400, str(exc))
    if isinstance(exc, PageLensError):
        return ApiError(500, str(exc), "api_error")
    traceback.print_exception(exc)
    return ApiError(500, f"the agent failed ({type(exc).__name__}: {exc}); see the server's log.", "api_error",
                    code="internal_error")


def _error(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), error.status, headers=error.headers)


def run_agent_api(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Open the store, serve the agent API with uvicorn until interrupted, then stop the runs and close the store."""
    import uvicorn

    service = AgentService(settings)
    try:
        print(f"pagelens agent API: {service.page_count} pages in {service.store.home}, {service.policy_name} policy, at "
              f"http://{host}:{port}/v1 (models {', '.join(MODELS)})", file=sys.stderr, flush=True)
        warn_if_exposed(host, settings.serving.api_key, "PAGELENS_API_KEY")
        # A short grace on shutdown: runs still going are then cancelled at their next step by service.close().
        uvicorn.run(create_app(service, host=host), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        service.close()
