"""A policy served over the OpenAI chat completions API: vLLM, `pagelens serve policy`, or a hosted model.

Page images and crops arrive in `PolicyRequest.messages()` as `image_url` data URLs in `user` messages (SPEC §7),
already resized by the graph so the recorded seen size is exact. Timeouts, 429s, 5xx answers and dropped
connections are retried with exponential backoff (the openai client's own: 0.5 s doubling to 8 s, with jitter);
a request never outlives the run's deadline.
"""

from __future__ import annotations

import openai

from pagelens.errors import BadInputError, PolicyError
from pagelens.graph.policy import Completion, PolicyRequest
from pagelens.graph.settings import PolicySettings

# Local servers (vLLM without --api-key, pagelens serve policy) accept any key; the client insists on one.
_PLACEHOLDER_KEY = "not-needed"
# Below this a request cannot complete; the run's deadline has in effect passed.
_MIN_REQUEST_SECONDS = 0.5


class OpenAIChatPolicy:
    def __init__(self, settings: PolicySettings):
        if not settings.url:
            raise BadInputError("the OpenAI-compatible policy needs a URL; set PAGELENS_POLICY_URL or --policy URL.")
        self.settings = settings
        self._client = openai.OpenAI(
            base_url=settings.url,
            api_key=settings.api_key or _PLACEHOLDER_KEY,
            timeout=settings.request_timeout,
            max_retries=settings.retries,
        )
        self._model = settings.model or None

    @property
    def name(self) -> str:
        return f"{self.model}@{self.settings.url}"

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._first_model()
        return self._model

    def _first_model(self) -> str:
        try:
            models = self._client.models.list().data
        except openai.OpenAIError as error:
            raise self._error(error) from error
        if not models:
            raise PolicyError(f"the policy endpoint {self.settings.url} serves no model; set PAGELENS_POLICY_MODEL.")
        return models[0].id

    def complete(self, request: PolicyRequest) -> Completion:
        timeout = self.settings.request_timeout
        if request.timeout is not None:
            timeout = min(timeout, request.timeout)
            if timeout < _MIN_REQUEST_SECONDS:
                raise TimeoutError("the run's deadline passed before the policy could be asked")
        extra = {}
        if self.settings.repetition_penalty != 1.0:
            extra["repetition_penalty"] = self.settings.repetition_penalty
        try:
            response = self._client.with_options(timeout=timeout).chat.completions.create(
                model=self.model,
                messages=request.messages(),
                temperature=self.settings.temperature,
                top_p=self.settings.top_p,
                max_tokens=self.settings.max_tokens,
                logprobs=request.want_logprobs or None,
                extra_body=extra or None,
            )
        except openai.APITimeoutError as error:
            if request.timeout is not None and timeout < self.settings.request_timeout:
                raise TimeoutError("the run's deadline passed while the policy was answering") from error
            raise self._error(error) from error
        except openai.OpenAIError as error:
            raise self._error(error) from error
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


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error.message)
