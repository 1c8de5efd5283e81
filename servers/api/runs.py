"""Agent runs for the agent API: one store and one agent per protocol, runs in worker threads behind a gate.

LangGraph runs are synchronous, so each run goes to a worker thread and reports its steps to the event loop
through a queue. Runs share one PageStore, one Retriever and the agents' image caches; what makes that safe:
- the catalogue is one SQLite connection that worker threads read at once (serialized mode: sqlite3.threadsafety
  is 3); the server never writes to the store;
- the in-memory search index is built once at startup, and rebuilt under the store's lock if another process
  changes a shared (Milvus server) store;
- the embedder loads under its lock, and every search tokenizes with the same settings, so its tokenizer is
  never reconfigured while another thread uses it;
- PageImages' caches and upload registry have their own locks; the policies keep no state between calls.
Nothing serialises the policy calls, which are what concurrency buys for an HTTP policy.

A run is cancelled between steps: the step callback raises once the client has gone, so a run whose client
disconnected stops at its next step and gives its slot back.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from pagelens.errors import BadInputError
from pagelens.graph.build import Agent
from pagelens.graph.images import PageImages
from pagelens.graph.policies import make_policy
from pagelens.graph.run import RunResult, Step
from pagelens.graph.settings import PROTOCOLS
from pagelens.servers.api.request import ChatRequest
from pagelens.servers.config import Settings
from pagelens.servers.limits import ApiError
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.search import Retriever

# What a run reports to the event loop: its steps as they finish, then its result or the error that ended it.
Event = Step | RunResult | Exception
# Weight of the latest run in the running mean of run times that Retry-After is derived from.
_MEAN_WEIGHT = 0.2


class Gate:
    """At most `running` runs at once and `queued` waiting for a slot; a request beyond both is refused (429).

    Used from the event loop only. A slot is given back when the run's thread ends, not when its client leaves.
    """

    def __init__(self, running: int, queued: int):
        self._slots = asyncio.Semaphore(running)
        self._capacity = running + queued
        self.admitted = 0
        self.running = 0
        self.mean_seconds = 1.0

    def admit(self) -> None:
        if self.admitted >= self._capacity:
            retry = max(1, math.ceil(self.mean_seconds))
            raise ApiError(429, f"the server is running and queueing as many questions as it takes; retry in "
                                f"{retry} s or raise max_running / max_queued in [serving].", "rate_limit_error",
                           code="too_many_requests", headers={"Retry-After": str(retry)})
        self.admitted += 1

    async def acquire(self) -> None:
        """Wait for a slot; a request cancelled while waiting leaves the queue."""
        try:
            await self._slots.acquire()
        except BaseException:
            self.admitted -= 1
            raise
        self.running += 1

    def release(self, seconds: float) -> None:
        self.mean_seconds += _MEAN_WEIGHT * (seconds - self.mean_seconds)
        self.running -= 1
        self.admitted -= 1
        self._slots.release()


class _Cancelled(Exception):
    """Raised in a run's thread at its next step once its client has gone."""


class Run:
    """One question running in a worker thread; `events` receives its steps, then its result or error."""

    def __init__(self, agent: Agent, chat: ChatRequest):
        self.agent, self.chat = agent, chat
        self.cancelled = threading.Event()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def work(self, loop: asyncio.AbstractEventLoop) -> None:
        """The thread's part: ask, reporting each step, until the end or a cancellation."""
        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(self.events.put_nowait, event)

        def on_step(step: Step) -> None:
            if self.cancelled.is_set():
                raise _Cancelled
            emit(step)

        if self.cancelled.is_set():
            return  # its client left while it was queued
        try:
            emit(self.agent.ask(self.chat.question, uploads=self.chat.uploads, history=self.chat.history,
                                on_step=on_step))
        except _Cancelled:
            pass  # nobody is listening any more
        except Exception as exc:  # handed to the request, which answers it in OpenAI's error shape
            emit(exc)


class AgentService:
    """The open store, one agent per protocol sharing it, the worker threads and the gate; `close()` ends them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = PageStore(settings.store, settings.retrieval, holder="pagelens serve api")
        try:
            self.page_count = len(self.store.pages())
            if not self.page_count:
                raise BadInputError(f"the store {self.store.home} has no pages; index some first: "
                                    "pagelens index PATH…")
            retriever, pages = Retriever(self.store), PageImages(self.store)
            policy = make_policy(settings.policy)
            # One retriever and one page cache for every protocol's agent: memory for the pages is paid once.
            self.agents = {protocol: Agent(self.store, policy, replace(settings.agent, protocol=protocol),
                                           retriever=retriever, pages=pages) for protocol in PROTOCOLS}
            # Load the embedder and the search index now, so the first requests do not all wait on them.
            retriever.search("warm up", k=1)
        except BaseException:
            self.store.close()
            raise
        self.policy_name = "extractive" if settings.policy.is_extractive else settings.policy.url
        self.executor = ThreadPoolExecutor(settings.serving.max_running, thread_name_prefix="pagelens-run")
        self.gate: Gate | None = None
        self._runs: set[Run] = set()

    def agent(self, protocol: str | None) -> Agent:
        return self.agents[protocol or self.settings.agent.protocol]

    def start(self, chat: ChatRequest) -> Run:
        """Admit the request (a 429 ApiError when full) and queue its run; it starts in a worker thread when a slot
        frees. A run cancelled while queued ends as soon as it starts."""
        if self.gate is None:  # made on first use, inside the server's event loop
            self.gate = Gate(self.settings.serving.max_running, self.settings.serving.max_queued)
        self.gate.admit()
        run = Run(self.agent(chat.protocol), chat)
        self._runs.add(run)
        # The run (which _runs holds) keeps its task alive: the event loop holds only weak references to tasks.
        run.task = asyncio.get_running_loop().create_task(self._launch(run, self.gate))
        return run

    async def _launch(self, run: Run, gate: Gate) -> None:
        await gate.acquire()
        started = time.monotonic()
        loop = asyncio.get_running_loop()

        def finished(_: asyncio.Future) -> None:
            self._runs.discard(run)
            gate.release(time.monotonic() - started)

        loop.run_in_executor(self.executor, run.work, loop).add_done_callback(finished)

    def close(self) -> None:
        """Stop the runs at their next step, wait for their threads, and close the store."""
        for run in list(self._runs):
            run.cancelled.set()
        self.executor.shutdown(wait=True)
        self.store.close()
