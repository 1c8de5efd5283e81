"""The agent graph's own cost per turn, and `ask` latency with the extractive policy, on the sample corpus.

Run: `python benchmarks/agent.py`. It indexes the bundled sample corpus into a temporary store, then:
1. Overhead per turn: runs with a zero-latency scripted policy (search, zoom, search, zoom, search, answer: six
   turns) and subtracts the time spent in the policy and in the tools (search, page loading, crop) from the
   wall time of each run. Measured without and with the SQLite checkpointer. Goal: p50 <= 5 ms per turn.
   Building the request messages (PNG data URLs), which an HTTP policy pays and the extractive one skips, is
   timed on its own.
2. `ask` latency: every sample question through the extractive policy (p50, p90).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from pagelens.graph import nodes
from pagelens.graph.build import Agent, sqlite_checkpointer
from pagelens.graph.policies.extractive import ExtractivePolicy
from pagelens.graph.policies.interface import Completion, PolicyRequest
from pagelens.graph.settings import AgentSettings
from pagelens.servers.cli.demo import load_questions, sample_folder
from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.search import Retriever

GOAL_MS_PER_TURN = 5.0
RUNS = 30
SCRIPT = ["<search>revenue by region</search>", "<bbox>[40, 80, 400, 200]</bbox>",
          "<search>maintenance intervals</search>", "<bbox>[40, 80, 400, 200]</bbox>",
          "<search>eelgrass cover</search>",
          "<evidence>\n[1]: a table\n[2]: a row\n</evidence><answer>4.2</answer>"]


class Clock:
    """Accumulates the seconds spent inside the calls it wraps."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return timed


class ScriptedPolicy:
    """Zero-latency stand-in for a model: replies from SCRIPT in order, optionally building the messages."""

    name = "scripted"

    def __init__(self, build_messages: bool):
        self.build_messages = build_messages

    def complete(self, request: PolicyRequest) -> Completion:
        if self.build_messages:
            request.messages()
        text = SCRIPT[request.turn % len(SCRIPT)]
        return Completion(text)


def overhead(store: PageStore, retriever: Retriever, *, checkpointer, build_messages: bool = False) -> list[float]:
    """Milliseconds per turn of everything but the policy and the tools, one value per run."""
    tools, policy_clock = Clock(), Clock()
    policy = ScriptedPolicy(build_messages)
    agent = Agent(store, policy, AgentSettings(max_turns=len(SCRIPT)), retriever=retriever,
                  checkpointer=checkpointer)
    agent.context.retriever = SimpleNamespace(search=tools.wrap(retriever.search))
    pages = agent.context.pages
    pages.page = tools.wrap(pages.page)
    if not build_messages:
        pages.remember = tools.wrap(pages.remember)
    original_crop = nodes.crop_page
    nodes.crop_page = tools.wrap(original_crop)
    policy.complete = policy_clock.wrap(policy.complete)
    per_turn = []
    try:
        for run in range(RUNS + 3):
            tools.seconds = policy_clock.seconds = 0.0
            started = time.perf_counter()
            result = agent.ask(f"benchmark question {run}")
            wall = time.perf_counter() - started
            turns = sum(1 for step in result.steps if step.kind == "observe")
            if run >= 3:  # the first runs warm caches and imports
                per_turn.append((wall - tools.seconds - policy_clock.seconds) * 1000 / turns)
    finally:
        nodes.crop_page = original_crop
    return per_turn


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "store"
        with PageStore(StoreSettings(home=home)) as store:
            index_paths(store, sorted(sample_folder().glob("*.pdf")), progress=False)
            retriever = Retriever(store)
            rows = []
            for label, checkpointer, build in [("graph only", None, False),
                                               ("graph + SQLite checkpointer", sqlite_checkpointer(Path(tmp)), False),
                                               ("graph + building PNG data URLs", None, True)]:
                values = overhead(store, retriever, checkpointer=checkpointer, build_messages=build)
                rows.append((label, statistics.median(values), max(values)))
            print(f"Agent overhead per turn ({RUNS} runs of {len(SCRIPT)} turns, scripted zero-latency policy, "
                  f"policy and tool time excluded):")
            for label, p50, worst in rows:
                print(f"  {label:<34} p50 {p50:6.2f} ms   max {worst:6.2f} ms")
            goal = rows[0][1] <= GOAL_MS_PER_TURN
            print(f"  goal p50 <= {GOAL_MS_PER_TURN:g} ms per turn (graph only): {'met' if goal else 'MISSED'}")

            agent = Agent(store, ExtractivePolicy(), retriever=retriever)
            agent.ask("warm-up question about revenue")
            latencies = []
            for question in load_questions():
                started = time.perf_counter()
                agent.ask(question["question"])
                latencies.append((time.perf_counter() - started) * 1000)
            latencies.sort()
            p90 = latencies[int(0.9 * (len(latencies) - 1))]
            print(f"ask with the extractive policy ({len(latencies)} sample questions, 4 policy calls each): "
                  f"p50 {statistics.median(latencies):.0f} ms, p90 {p90:.0f} ms")
            print(json.dumps({"overhead_ms_per_turn": {label: round(p50, 3) for label, p50, _ in rows},
                              "ask_p50_ms": round(statistics.median(latencies), 1)}))


if __name__ == "__main__":
    main()
