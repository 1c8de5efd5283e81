"""The agent graph's factory and the `Agent` that runs questions through it.

    START → start ─┬→ observe ─┬→ search ──→ observe      (vrag, pagelens: the policy acts over turns)
                   │           ├→ crop ────→ observe
                   │           ├→ observe               (an invalid turn: retry message, the turn counts)
                   │           ├→ evidence → answer → END
                   │           └→ answer → END          (turn limit or deadline: no answer)
                   └→ search → observe → evidence → answer  (evisrag: one shot over the retrieved pages)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from PIL import Image

from pagelens.errors import BadInputError
from pagelens.graph import nodes
from pagelens.graph.images import PageImages
from pagelens.graph.nodes import AgentContext
from pagelens.graph.policies.interface import Policy
from pagelens.graph.protocols import load_protocol
from pagelens.graph.run import Evidence, RunResult, Step
from pagelens.graph.settings import AgentSettings
from pagelens.graph.state import AgentState, InputState, shown_image
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.search import Retriever

THREADS_FILE = "threads.sqlite"
# LangGraph counts node executions; a run takes at most about 3 per turn (observe, search or crop) plus a few.
_NODES_PER_TURN = 3
_SPARE_NODES = 8


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """The compiled agent graph; run it with `context=AgentContext(...)`."""
    graph = StateGraph(AgentState, context_schema=AgentContext, input_schema=InputState)
    graph.add_node("start", nodes.start)
    graph.add_node("observe", nodes.observe)
    graph.add_node("search", nodes.search)
    graph.add_node("crop", nodes.crop)
    graph.add_node("evidence", nodes.evidence)
    graph.add_node("answer", nodes.answer)
    graph.add_edge(START, "start")
    graph.add_conditional_edges("start", nodes.route_start)
    graph.add_conditional_edges("observe", nodes.route_observe)
    graph.add_edge("search", "observe")
    graph.add_edge("crop", "observe")
    graph.add_edge("evidence", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="pagelens")


def sqlite_checkpointer(home: Path):
    """A checkpointer keeping conversations in `home`/threads.sqlite (so `--thread ID` can continue one)."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    home.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(home / THREADS_FILE, check_same_thread=False)
    return SqliteSaver(connection)


class Agent:
    """Runs questions through the graph with one store, one policy and one protocol.

    Without a checkpointer every run starts a fresh conversation; with one, runs given the same `thread_id`
    continue it (the follow-up sees the earlier messages and images). Agents on one store may share a retriever
    and `pages` (the page image caches).
    """

    def __init__(self, store: PageStore, policy: Policy, settings: AgentSettings | None = None, *,
                 retriever: Retriever | None = None, checkpointer: BaseCheckpointSaver | None = None,
                 pages: PageImages | None = None):
        self.settings = settings or AgentSettings()
        self.policy = policy
        self.context = AgentContext(
            store=store,
            retriever=retriever or Retriever(store),
            policy=policy,
            settings=self.settings,
            protocol=load_protocol(self.settings),
            pages=pages or PageImages(store),
        )
        self.checkpointer = checkpointer
        self.graph = build_graph(checkpointer)

    def _config(self, thread_id: str | None) -> dict:
        if thread_id is not None and self.checkpointer is None:
            raise BadInputError(f"thread {thread_id!r} needs a checkpointer; create the Agent with one to keep threads.")
        limit = _NODES_PER_TURN * (self.settings.max_turns + 1) + _SPARE_NODES
        config: dict = {"recursion_limit": limit}
        if thread_id is not None:
            config["configurable"] = {"thread_id": thread_id}
        return config

    def stream(self, question: str, *, thread_id: str | None = None, uploads: Sequence[tuple[str, Image.Image]] = (),
               history: Sequence[dict] = ()) -> Iterator[tuple[str, dict]]:
        """Run one question, yielding (node name, its update) as each node finishes, then ("final", state).

        `uploads` are (name, image) pages shown with the question and never stored (the agent API's request
        images); `history` is earlier text messages that start a new conversation.
        """
        if not question or not question.strip():
            raise BadInputError("the question is empty; ask something about the indexed pages.")
        registered = []
        try:
            described = []
            for name, image in uploads:
                page_id = self.context.pages.add_upload(image, name)
                registered.append(page_id)
                described.append({"page_id": page_id, "name": name, "width": image.width, "height": image.height})
            given = {"question": question.strip(), "uploads": described, "history": list(history)}
            final: dict = {}
            for mode, chunk in self.graph.stream(given, self._config(thread_id), context=self.context,
                                                 stream_mode=["updates", "values"]):
                if mode == "values":
                    final = chunk
                    continue
                for node, update in chunk.items():
                    yield node, update or {}
            yield "final", final
        finally:
            self.context.pages.discard(registered)

    def ask(self, question: str, *, thread_id: str | None = None, on_step: Callable[[Step], None] | None = None,
            uploads: Sequence[tuple[str, Image.Image]] = (), history: Sequence[dict] = ()) -> RunResult:
        """Run one question to its end and return the result; `on_step` sees each step as it happens."""
        if self.checkpointer is not None and thread_id is None:
            thread_id = uuid.uuid4().hex[:12]
        final: dict = {}
        seen_steps = 0
        for node, update in self.stream(question, thread_id=thread_id, uploads=uploads, history=history):
            if node == "final":
                final = update
            elif on_step is not None and "steps" in update:
                for step in update["steps"][seen_steps:]:
                    on_step(Step.from_dict(step))
                seen_steps = len(update["steps"])
        return self._result(final, thread_id)

    def _result(self, state: dict, thread_id: str | None) -> RunResult:
        images = tuple(shown_image(record) for record in state["images"])
        evidence = []
        for item in state["evidence"]:
            image = images[item["image"] - 1]
            evidence.append(Evidence(image.index, image.page_id, image.document, image.page_number, image.region,
                                     item["text"]))
        steps = tuple(Step.from_dict(step) for step in state["steps"])
        return RunResult(
            question=state["question"],
            answer=state["answer"],
            status=state["status"],
            message=state["message"],
            evidence=tuple(evidence),
            steps=steps,
            images=images,
            messages=tuple(state["messages"]),
            protocol=self.settings.protocol,
            policy=self.policy.name,
            thread_id=thread_id,
        )
