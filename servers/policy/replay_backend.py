"""The replay backend of `pagelens serve policy`: a scripted policy for tests and debugging (no model behind it).

The script is a JSON file holding a list of assistant texts (or of {"text", "logprobs", "seconds"} objects), or a
JSONL file of such objects; each chat completion returns the next text, and an exhausted script answers 503.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pagelens.errors import BadInputError
from pagelens.servers.chat_request import ChatMessage
from pagelens.servers.policy.server import Generation, SamplingParams, ScriptExhaustedError, TokenLogprob


def _words(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+", text)


class ReplayBackend:
    """Answers each chat completion with the next reply of a script, in order.

    A reply may carry the log-probabilities the scripted model gives its words (one per word, the text split at
    whitespace as `_words` does); without them a reply has none, since no model computed any.
    """

    def __init__(self, script: Path, name: str = "replay") -> None:
        self.name, self.script = name, Path(script)
        self.replies = load_replay_script(self.script)
        self._next = 0
        self._lock = threading.Lock()

    def generate(self, messages: list[ChatMessage], params: SamplingParams) -> Generation:
        return self._pop()

    def stream(self, messages: list[ChatMessage], params: SamplingParams) -> Iterator[str | Generation]:
        generation = self._pop()
        # word by word, so clients are exercised on joining deltas
        return iter([*_words(generation.text), generation])

    def _pop(self) -> Generation:
        with self._lock:
            if self._next == len(self.replies):
                raise ScriptExhaustedError(f"the replay script {self.script} has no reply left after its "
                                           f"{len(self.replies)}; add replies to it or restart the server.")
            self._next += 1
            text, logprobs, seconds = self.replies[self._next - 1]
        time.sleep(seconds)
        tokens = None
        if logprobs is not None:
            tokens = tuple(TokenLogprob(word, value, word.encode()) for word, value in zip(_words(text), logprobs))
        return Generation(text, "stop", logprobs=tokens)


def load_replay_script(path: Path) -> list[tuple[str, list[float] | None, float]]:
    """The replies of a replay script, as (text, per-word logprobs or None, seconds to wait): a JSON list of
    texts or of {"text": ..., "logprobs": [...], "seconds": N} objects, or JSONL of such objects."""
    try:
        raw = Path(path).read_text()
    except OSError as exc:
        raise BadInputError(f"replay script {path} cannot be read ({exc.strerror}); give an existing file.") from None
    try:
        items = json.loads(raw)
        items = items if isinstance(items, list) else [items]
    except json.JSONDecodeError:
        items = []
        for number, line in enumerate(raw.splitlines(), 1):
            try:
                items.extend([json.loads(line)] if line.strip() else [])
            except json.JSONDecodeError:
                raise BadInputError(f"replay script {path} line {number} is not JSON; write a JSON list of texts "
                                    'or one {"text": ...} object per line.') from None
    texts = [item.get("text") if isinstance(item, dict) else item for item in items]
    if not texts or not all(isinstance(text, str) for text in texts):
        raise BadInputError(f"replay script {path} holds no list of texts; write a JSON list of strings or one "
                            '{"text": "..."} object per line.')
    replies = []
    for number, (item, text) in enumerate(zip(items, texts), 1):
        logprobs = item.get("logprobs") if isinstance(item, dict) else None
        if logprobs is not None and (
            not isinstance(logprobs, list) or len(logprobs) != len(_words(text))
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0 for v in logprobs)
        ):
            raise BadInputError(f"replay script {path} reply {number} has logprobs that are not one number <= 0 per "
                                f"word of its text ({len(_words(text))} words); fix or remove them.")
        seconds = item.get("seconds", 0) if isinstance(item, dict) else 0
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 600:
            raise BadInputError(f"replay script {path} reply {number} has seconds={seconds!r}; give a number of "
                                f"seconds from 0 to 600.")
        replies.append((text, [float(v) for v in logprobs] if logprobs is not None else None, float(seconds)))
    return replies
