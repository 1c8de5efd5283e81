"""The agent API under 16 concurrent clients, against the same graph called in-process.

Run: `python benchmarks/api.py [--clients 16] [--requests 8]`. It indexes the bundled sample corpus into a
temporary store and copies it, then:
1. starts `pagelens serve api` (extractive policy) on one copy and has `--clients` threads, each with the official
   `openai` client, ask `--requests` sample questions in turn (all 20 questions, cycled): throughput, p50 / p99
   latency, and how many answers hold their gold answer;
2. stops the server and runs the same questions with the same concurrency in-process (threads calling
   `Agent.ask` on the other copy of the store).
Goal: API p50 / in-process p50 <= 1.1 (what HTTP, SSE-free JSON and the run queue add).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from pagelens.graph.build import Agent
from pagelens.graph.policies.extractive import ExtractivePolicy
from pagelens.servers.cli.demo import answer_tokens, load_questions, sample_folder
from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore, StoreSettings

GOAL_RATIO = 1.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(ask, questions: list[dict], clients: int, per_client: int) -> tuple[list[float], float, int]:
    """Run `clients` threads of `per_client` questions each; (latencies in ms, wall seconds, correct answers)."""
    def client(number: int) -> list[tuple[float, bool]]:
        out = []
        for i in range(per_client):
            question = questions[(number * per_client + i) % len(questions)]
            started = time.perf_counter()
            answer = ask(question["question"])
            out.append(((time.perf_counter() - started) * 1000,
                        answer_tokens(question["answer"]) <= answer_tokens(answer)))
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [item for chunk in pool.map(client, range(clients)) for item in chunk]
    wall = time.perf_counter() - started
    return [ms for ms, _ in results], wall, sum(ok for _, ok in results)


def serve(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PAGELENS_HOME": str(home)}
    env.pop("PAGELENS_POLICY_URL", None)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pagelens", "serve", "api", "--port", str(port)],
                                env=env, stdout=err, stderr=err)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the API server did not start:\n{log.read_text()}")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="questions per client")
    args = parser.parse_args()
    questions = load_questions()
    total = args.clients * args.requests
    with tempfile.TemporaryDirectory() as tmp:
        base, api_home, local_home = Path(tmp) / "base", Path(tmp) / "api", Path(tmp) / "local"
        with PageStore(StoreSettings(home=base)) as store:
            index_paths(store, sorted(sample_folder().glob("*.pdf")), progress=False)
        # Copies: Milvus Lite keeps a data folder locked until the process that opened it exits.
        shutil.copytree(base, api_home)
        shutil.copytree(base, local_home)

        port = free_port()
        proc = serve(api_home, port, Path(tmp) / "api.log")
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                   timeout=600)

            def ask_api(question: str) -> str:
                reply = client.chat.completions.create(model="pagelens",
                                                       messages=[{"role": "user", "content": question}])
                return reply.choices[0].message.content or ""

            load(ask_api, questions, 2, 2)  # warm-up: models loaded, caches filled
            api_ms, api_wall, api_correct = load(ask_api, questions, args.clients, args.requests)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

        with PageStore(StoreSettings(home=local_home)) as store:
            agent = Agent(store, ExtractivePolicy())

            def ask_local(question: str) -> str:
                return agent.ask(question).answer or ""

            load(ask_local, questions, 2, 2)
            local_ms, local_wall, local_correct = load(ask_local, questions, args.clients, args.requests)

    ratio = statistics.median(api_ms) / statistics.median(local_ms)
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {args.clients} "
          f"concurrent clients x {args.requests} questions, extractive policy, sample corpus")
    for label, ms, wall, correct in (("API (HTTP, openai client)", api_ms, api_wall, api_correct),
                                     ("in-process Agent.ask", local_ms, local_wall, local_correct)):
        print(f"  {label:<28} {total / wall:6.1f} req/s   p50 {statistics.median(ms):7.1f} ms   "
              f"p99 {percentile(ms, 0.99):7.1f} ms   correct {correct}/{total}")
    print(f"  API / in-process p50 ratio {ratio:.2f} (goal <= {GOAL_RATIO}): {'met' if ratio <= GOAL_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
