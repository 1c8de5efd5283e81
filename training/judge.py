"""The answer judge of VRAG-RL's reward (SPEC §3): 1.0 when the generated answer agrees with the reference, else 0.

Two judges, chosen by `JudgeSettings.kind`:
- `LLMJudge`: a chat model behind any OpenAI-compatible endpoint, asked with the `vrag_judge` prompt (a file in
  `prompts/`, replaceable) and read as True or False. Failed requests are retried a bounded number of times with
  doubling backoff, then raise `JudgeError` naming the endpoint; the reference's retry loop never ends, and it reads
  a response shape no OpenAI-compatible server returns.
- `OfflineJudge`: a rule for the CPU and for tests; the normalised answer equals the normalised reference
  ("exact"), or holds every token of it ("contains", which accepts extra information as SPEC §3 allows).
"""

from __future__ import annotations

import re
import time
from typing import Protocol

import openai

from pagelens.errors import PageLensError
from pagelens.prompts.loader import load_template
from pagelens.tools.untrusted import defuse
from pagelens.training.metrics import normalize_answer
from pagelens.training.settings import JudgeSettings

# Local servers (vLLM without --api-key, pagelens serve policy) accept any key; the client insists on one.
_PLACEHOLDER_KEY = "not-needed"
# Room for a short verdict, and for a reasoning model's thoughts before it.
_MAX_TOKENS = 256
# Answers worth asking again besides every 5xx: request timeout, lock timeout, rate limit.
_RETRIED_STATUS = {408, 409, 429}
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)
_VERDICT = re.compile(r"\b(true|false)\b", re.IGNORECASE)


class JudgeError(PageLensError):
    """The judge endpoint cannot be used: unreachable, refusing the request, or failing after every retry."""


class Judge(Protocol):
    def __call__(self, question: str, reference: str, answer: str) -> float:
        """1.0 when `answer` to `question` agrees with `reference`, else 0.0."""
        ...


class OfflineJudge:
    """SPEC §3's judge without a model: normalised exact match, or every normalised reference token in the answer.

    >>> OfflineJudge("contains")("Who signed?", "Margaret Okafor", "It was signed by Margaret Okafor, CEO.")
    1.0
    """

    def __init__(self, match: str = "contains"):
        self.match = match

    def __call__(self, question: str, reference: str, answer: str) -> float:
        expected, given = normalize_answer(reference), normalize_answer(answer)
        if self.match == "exact":
            return float(expected == given)
        return float(bool(expected) and set(expected.split()) <= set(given.split()))


class LLMJudge:
    """SPEC §3's judge: a chat model at `settings.url` says True or False; anything else counts as False."""

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self.template = load_template(settings.prompt, kind="vrag_judge")
        self._client = openai.OpenAI(base_url=settings.url, api_key=settings.api_key or _PLACEHOLDER_KEY,
                                     timeout=settings.request_timeout, max_retries=0)
        self._model = settings.model or None

    def __call__(self, question: str, reference: str, answer: str) -> float:
        # Question, reference and answer are data to the judge: none can open or close a tag of the prompt.
        prompt = self.template.render(question=defuse(question), reference=defuse(reference), answer=defuse(answer))
        reply = self._send(lambda: self._client.chat.completions.create(
            model=self._model_name(),
            messages=[{"role": "user", "content": prompt}],
            temperature=0.0,
            max_tokens=_MAX_TOKENS,
        ))
        if not reply.choices:
            raise JudgeError(f"the judge endpoint {self.settings.url} returned no choices; check the server's log.")
        return verdict(reply.choices[0].message.content or "")

    def check(self) -> None:
        """The endpoint answers GET /v1/models, or JudgeError naming it and the fix (with `settings.retries`)."""
        self._send(self._client.models.list)

    def _model_name(self) -> str:
        if self._model is None:
            models = self._send(self._client.models.list)
            if not models.data:
                raise JudgeError(f"the judge endpoint {self.settings.url} serves no model; set the judge model.")
            self._model = models.data[0].id
        return self._model

    def _send(self, request):
        """`request()`, retried `settings.retries` times on failures worth retrying, backing off `backoff` seconds
        doubling each time; then one JudgeError naming the endpoint."""
        settings = self.settings
        for attempt in range(settings.retries + 1):
            try:
                return request()
            except openai.APIConnectionError as error:  # refused, dropped or timed out
                failure = error
            except openai.APIStatusError as error:
                if error.status_code not in _RETRIED_STATUS and error.status_code < 500:
                    raise JudgeError(
                        f"the judge endpoint {settings.url} refused the request (HTTP {error.status_code}: "
                        f"{error.message}); check the judge url, model and api key."
                    ) from error
                failure = error
            if attempt < settings.retries:
                time.sleep(settings.backoff * 2 ** attempt)
        raise JudgeError(
            f"the judge endpoint {settings.url} failed {settings.retries + 1} time(s) "
            f"({failure.__cause__ or failure}); start the judge server or point the judge url at a running one."
        ) from failure


def verdict(reply: str) -> float:
    """1.0 when the judge's reply (thoughts in `<think>` aside) first says True, 0.0 otherwise."""
    found = _VERDICT.search(_THINKING.sub(" ", reply))
    return 1.0 if found is not None and found.group(1).lower() == "true" else 0.0


def make_judge(settings: JudgeSettings) -> Judge:
    """The judge `settings.kind` names."""
    return LLMJudge(settings) if settings.kind == "llm" else OfflineJudge(settings.offline_match)
