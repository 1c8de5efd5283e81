"""A policy served over the OpenAI chat completions API: vLLM, `pagelens serve policy`, or a hosted model.

Page images and crops arrive in `PolicyRequest.messages()` as `image_url` data URLs in `user` messages (SPEC §7),
already resized by the graph so the recorded seen size is exact.

Deadlines: every HTTP request of a policy call (the model look-up, the chat call, each retry) shares one deadline,
the run's (`PolicyRequest.timeout` seconds from the call's start), and none outlives it. Timeouts, 408/409/429,
5xx answers and dropped connections are retried here with exponential backoff (0.5 s doubling to 8 s, less up to a
quarter at random, or the server's Retry-After), `retries` times at most and only while the deadline leaves room;
the openai client's own retries are off, since they would each take a full request timeout. A request the deadline
cuts short raises TimeoutError, which ends the run as timed out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import openai

from pagelens.errors import BadInputError, PolicyError
from pagelens.graph.policies.interface import Completion, PolicyRequest
from pagelens.graph.settings import PolicySettings

# Local servers (vLLM without --api-key, pagelens serve policy) accept any key; the client insists on one.
_PLACEHOLDER_KEY = "not-needed"
# Below this a request cannot complete; the run's deadline has in effect passed.
_MIN_REQUEST_SECONDS = 0.5
_FIRST_BACKOFF, _MAX_BACKOFF, _MAX_RETRY_AFTER = 0.5, 8.0, 120.0
# Answers worth asking again: request timeout, lock timeout, rate limit (and every 5xx), as the openai client does.
_RETRIED_STATUS = {408, 409, 429}
T = TypeVar("T")


class OpenAIChatPolicy:
    def __init__(self, settings: PolicySettings):
        if not settings.url:
            raise BadInputError("the OpenAI-compatible policy needs a URL; set PAGELENS_POLICY_URL or --policy URL.")
        self.settings = settings
        self._client = openai.OpenAI(
            base_url=settings.url,
            api_key=settings.api_key or _PLACEHOLDER_KEY,
            timeout=settings.request_timeout,
            max_retries=0,
        )
        self._model = settings.model or None

    @property
    def name(self) -> str:
        # Never asks the endpoint: a run that timed out looking its model up still reports which policy it used.
        return f"{self._model}@{self.settings.url}" if self._model else self.settings.url

    def _model_name(self, deadline: float | None) -> str:
        """The model name: the configured one, else the endpoint's first (GET /models, asked once)."""
        if self._model is None:
            models = self._send(lambda timeout: self._client.with_options(timeout=timeout).models.list(), deadline)
            if not models.data:
                raise PolicyError(f"the policy endpoint {self.settings.url} serves no model; set "
                                  "PAGELENS_POLICY_MODEL.")
            self._model = models.data[0].id
        return self._model

    def complete(self, request: PolicyRequest) -> Completion:
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        model = self._model_name(deadline)
        extra = {}
        if self.settings.repetition_penalty != 1.0:
            extra["repetition_penalty"] = self.settings.repetition_penalty
        messages = request.messages()
        response = self._send(lambda timeout: self._client.with_options(timeout=timeout).chat.completions.create(
            model=model,
            messages=messages,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            max_tokens=self.settings.max_tokens,
            logprobs=request.want_logprobs or None,
            extra_body=extra or None,
        ), deadline)
        if not response.choices:
            raise PolicyError(f"the policy endpoint {self.settings.url} returned no choices; check the server's log.")
        choice = response.choices[0]
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = tuple(token.logprob for token in choice.logprobs.content)
        usage = response.usage
        return Completion(
            text=choice.message.content or "",
            logprobs=logprobs,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def _send(self, request: Callable[[float], T], deadline: float | None) -> T:
        """`request(timeout)`, retried on failures worth retrying, each attempt cut to what `deadline` (a
        time.monotonic() value, None: none) leaves; TimeoutError once the deadline leaves too little."""
        for attempt in range(self.settings.retries + 1):
            timeout = self.settings.request_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout < _MIN_REQUEST_SECONDS:
                    raise TimeoutError("the run's deadline passed before the policy answered")
            try:
                return request(timeout)
            except openai.APITimeoutError as error:
                if timeout < self.settings.request_timeout:  # the deadline cut this attempt short
                    raise TimeoutError("the run's deadline passed while the policy was answering") from error
                failure: openai.OpenAIError = error
                pause = _backoff(attempt)
            except openai.APIConnectionError as error:
                failure, pause = error, _backoff(attempt)
            except openai.APIStatusError as error:
                if error.status_code not in _RETRIED_STATUS and error.status_code < 500:
                    raise self._error(error) from error
                failure, pause = error, _retry_after(error) or _backoff(attempt)
            except openai.OpenAIError as error:
                raise self._error(error) from error
            if attempt == self.settings.retries:
                break
            if deadline is not None and time.monotonic() + pause + _MIN_REQUEST_SECONDS > deadline:
                break  # no time for another attempt: this failure is the answer
            time.sleep(pause)
        raise self._error(failure) from failure

    def _error(self, error: openai.OpenAIError) -> PolicyError:
        url = self.settings.url
        if isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError):
            return PolicyError(
                f"the policy endpoint {url} is not reachable ({error.__cause__ or error}); start it (e.g. "
                f"`pagelens serve policy`) or unset PAGELENS_POLICY_URL to use the extractive policy."
            )
        if isinstance(error, openai.APITimeoutError):
            return PolicyError(
                f"the policy endpoint {url} did not answer within {self.settings.request_timeout:g} s "
                f"({self.settings.retries} retries); raise request_timeout or check the server."
            )
        if isinstance(error, openai.AuthenticationError):
            return PolicyError(f"the policy endpoint {url} refused the API key; set PAGELENS_POLICY_API_KEY.")
        if isinstance(error, openai.NotFoundError):
            return PolicyError(
                f"the policy endpoint {url} does not serve model {self._model!r}; "
                f"set PAGELENS_POLICY_MODEL to one of its models (GET {url.rstrip('/')}/models)."
            )
        if isinstance(error, openai.APIStatusError):
            return PolicyError(
                f"the policy endpoint {url} answered HTTP {error.status_code}: {_message(error)}; check its log."
            )
        return PolicyError(f"the policy endpoint {url} failed ({error}); check the URL and the server.")


def _backoff(attempt: int) -> float:
    return min(_FIRST_BACKOFF * 2.0**attempt, _MAX_BACKOFF) * (1 - 0.25 * random.random())


def _retry_after(error: openai.APIStatusError) -> float | None:
    """The seconds the server's Retry-After header asks for, when it gives a sensible number."""
    try:
        seconds = float(error.response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 < seconds <= _MAX_RETRY_AFTER else None


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error.message)
