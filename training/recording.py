"""Trajectories to supervise a policy on, recorded from the offline extractive policy without a model.

A store's own questions are few; more come from phrases cut from its pages' text, each asked as a question, so the
recorded runs cover every page and every turn kind (search, crop, answer) the protocol has.

The extractive policy never errs, so a model trained only on its runs has never seen the protocol's "invalid
action" message, and after its first malformed turn it writes noise until the turns run out. With `slips`, some
turns are first written malformed, in the ways a small model errs (the turn ended right after `<think>`, the action
tag left open, a box upside down), then written right after the real graph's retry message: the runs teach the
recovery, and `pagelens.training.data` keeps the malformed turns out of the loss.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from pagelens.errors import BadInputError
from pagelens.graph.build import Agent
from pagelens.graph.parse import Crop
from pagelens.graph.policies import make_policy
from pagelens.graph.policies.extractive import box_words
from pagelens.graph.policies.interface import Completion, Policy, PolicyRequest
from pagelens.graph.protocols import load_protocol
from pagelens.graph.settings import AgentSettings, PolicySettings
from pagelens.graph.trajectory import append_trajectory
from pagelens.tools.corpus.store import PageStore, StoreSettings


def phrase_questions(store: PageStore, count: int, seed: int = 0) -> list[str]:
    """`count` questions made of 3 to 9 consecutive words of a line of the store's text (lines of 4 words or more)."""
    rng = random.Random(seed)
    lines = [line.text.split() for page in store.pages() for line in store.lines(page.page_id)
             if len(line.text.split()) >= 4]
    questions = []
    for _ in range(count if lines else 0):
        words = rng.choice(lines)
        size = rng.randint(3, 9)
        start = rng.randrange(max(1, len(words) - size + 1))
        questions.append(" ".join(words[start : start + size]).rstrip(".,;:") + "?")
    return questions


class SlippingPolicy:
    """`inner`, except that with probability `rate` a turn is first written malformed, and the turn `inner` chose
    comes on the next call, after the graph's retry message (see the module docstring)."""

    def __init__(self, inner: Policy, rate: float, seed: int = 0) -> None:
        self.inner, self.rate, self.name = inner, rate, inner.name
        self._rng = random.Random(seed)
        self._owed: tuple[tuple, Completion] | None = None

    def complete(self, request: PolicyRequest) -> Completion:
        where = (request.question, len(request.images))  # a retry shows no new image
        if self._owed is not None and self._owed[0] == where and not request.answer_now:
            completion, self._owed = self._owed[1], None
            return completion
        self._owed = None
        completion = self.inner.complete(request)
        if request.answer_now or self._rng.random() >= self.rate:
            return completion
        slipped = slip(completion, self._rng)
        if slipped is None:
            return completion
        self._owed = (where, completion)
        return Completion(slipped)  # no parsed turn: the graph parses the text and rejects it


def slip(completion: Completion, rng: random.Random) -> str | None:
    """The extractive policy's turn `completion` written malformed in one of the ways a small model errs; None when
    none applies."""
    text, options = completion.text, []
    if "<think>" in text:
        options.append(text[: text.index("<think>") + len("<think>")])
    closed = re.search(r"</(search|bbox|answer)>\s*$", text)
    if closed:
        options.append(text[: closed.start()])
    action = completion.parsed.action if completion.parsed else None
    if isinstance(action, Crop) and round(action.box[1]) != round(action.box[3]):
        x1, y1, x2, y2 = action.box
        options.append(text[: text.index("<bbox>")] + box_words((x1, y2, x2, y1)))  # the box ends the turn
    return rng.choice(options) if options else None


def record_extractive_runs(home: Path, questions: list[str], runs: int, path: Path, protocol: str = "pagelens",
                           slips: float = 0.0) -> int:
    """What `pagelens ask --policy extractive --trajectory PATH` records, for `questions` and then for phrase
    questions up to `runs` in all, in one process (the command loads the embedder once per question); returns how
    many runs were recorded. `slips` is the share of turns first written malformed (see the module docstring)."""
    if not 0 <= slips < 1:
        raise BadInputError(f"slips {slips} is outside [0, 1); give the share of turns to write malformed first, "
                            f"for example 0.15.")
    settings = AgentSettings(protocol=protocol)
    if slips and load_protocol(settings).invalid_action is None:
        raise BadInputError(f"slips need a protocol that retries a rejected turn; {protocol} answers once, so record "
                            f"its runs with slips 0 or use the pagelens or vrag protocol.")
    with PageStore(StoreSettings(home=home)) as store:
        asked = list(questions) + phrase_questions(store, max(0, runs - len(questions)))
        policy = make_policy(PolicySettings())
        agent = Agent(store, SlippingPolicy(policy, slips) if slips else policy, settings)
        for question in asked:
            append_trajectory(agent.ask(question), agent.context.pages.page, path)
    return len(asked)
