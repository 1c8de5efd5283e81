"""Trajectories to supervise a policy on, recorded from the offline extractive policy without a model.

A store's own questions are few; more come from phrases cut from its pages' text, each asked as a question, so the
recorded runs cover every page and every turn kind (search, crop, answer) the protocol has.
"""

from __future__ import annotations

import random
from pathlib import Path

from pagelens.graph.build import Agent
from pagelens.graph.policies import make_policy
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


def record_extractive_runs(home: Path, questions: list[str], runs: int, path: Path, protocol: str = "pagelens") -> int:
    """What `pagelens ask --policy extractive --trajectory PATH` records, for `questions` and then for phrase
    questions up to `runs` in all, in one process (the command loads the embedder once per question); returns how
    many runs were recorded."""
    with PageStore(StoreSettings(home=home)) as store:
        asked = list(questions) + phrase_questions(store, max(0, runs - len(questions)))
        agent = Agent(store, make_policy(PolicySettings()), AgentSettings(protocol=protocol))
        for question in asked:
            append_trajectory(agent.ask(question), agent.context.pages.page, path)
    return len(asked)
