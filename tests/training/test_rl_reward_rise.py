"""RS-GRPO and multi-turn GRPO raise the mean reward (issue 11): short runs of `benchmarks/rl_curves.py` in CI.

Each starts from a checkpoint in `tests/data/models/` (see its README), part 1's loop already run: the width-128,
4,096-token tiny Qwen2.5-VL SFT'd on runs the extractive policy recorded on the sample corpus, with the evisrag
protocol for RS-GRPO and the pagelens protocol for GRPO (`benchmarks/rl_curves.py --save-model DIR` makes them
again; recording and SFT in the test would double its time). Then `pagelens train rsgrpo|grpo` runs on the sample
questions as a user runs it, and the mean reward of the last quarter of the steps must beat the first quarter's
(the issue's measure).

- RS-GRPO, 16 steps of 2 prompts × n 4 (about 1.5 minutes): the evisrag model's replies start near −1 on EVisRAG's
  overall reward, nearly all under 200 tokens, which the overlong term scores −1 (none is well formed, none right),
  and RS-GRPO raises it by teaching longer replies: the overlong term is the one this model can earn, and the
  only one that moves (seed 0: −1 → −0.125 on the last step). From this model, seeds 0, 1, 2: −0.91 → −0.44,
  −0.72 → 0.00, −0.81 → −0.20.
- Multi-turn GRPO, 16 steps of 2 prompts × n 8: the pagelens model searches and zooms validly but closes an
  `<answer>` in few sampled rollouts, and VRAG-RL's reward is 0 without one, so it starts near 0 and GRPO learns
  from the rollouts that answered. From this model on a 2-core x86-64 machine, seeds 0, 1, 2: 0.031 → 0.061,
  0.030 → 0.059, 0.028 → 0.058 (first and last four steps; over 24 steps, the six-step quarters: 0.039 → 0.068,
  0.027 → 0.069, 0.028 → 0.057); with n 4 one seed in six did not rise, which is why it samples 8 (about 4 minutes,
  16 steps rather than 24 to keep CI's run under its time limit).

Both runs start together when the first test asks for them: each samples on one thread, so on two cores the pair
takes about the time of the longer one: 280 s here, against 360 s one after the other (258 s and 92 s).

The seed is fixed, yet another CPU's arithmetic samples other rollouts, so each test rests on its margin.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pagelens.training.loop import METRICS

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "data" / "models"
QUESTIONS = REPO / "servers" / "sample" / "questions.jsonl"
RUNS = {
    "rsgrpo": (MODELS / "sft-evisrag-tiny", 16, ["--n", "4", "--no-filter"]),
    "grpo": (MODELS / "sft-pagelens-tiny", 16, ["--n", "8", "--protocol", "pagelens", "--max-turns", "3"]),
}


@pytest.fixture(scope="module")
def started(request, sample_home, tmp_path_factory):
    """The runs this session's tests ask for, started at once as a user runs them (`pagelens train rsgrpo|grpo`),
    each on a copy of the indexed sample store: {kind: (process, output folder, log file)}."""
    asked = {item.callspec.params["kind"] for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec")}
    runs = {}
    for kind in sorted(asked):
        model, steps, options = RUNS[kind]
        folder = tmp_path_factory.mktemp(kind)
        home = folder / "home"
        shutil.copytree(sample_home, home)
        log = folder / "log.txt"
        # One thread each: on a shared two-core machine two threads that wait for each other run several times slower.
        env = {**os.environ, "PAGELENS_HOME": str(home), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "pagelens", "train", kind, "--model", str(model), "--data", str(QUESTIONS),
                   "--out", str(folder / "out"), "--seed", "0", "--steps", str(steps), "--prompts-per-step", "2",
                   "--lr", "3e-4", "--max-new-tokens", "320", "--device", "cpu", *options]
        with open(log, "w") as handle:
            process = subprocess.Popen(command, cwd=folder, env=env, stdout=handle, stderr=subprocess.STDOUT)
        runs[kind] = (process, folder / "out", log)
    yield runs
    for process, _, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RUNS))
def test_rl_raises_the_mean_reward(kind, started):
    process, out, log = started[kind]
    steps = RUNS[kind][1]
    assert process.wait(timeout=1200) == 0, log.read_text()[-4000:]
    lines = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [entry["step"] for entry in lines] == list(range(1, steps + 1))
    rewards = [entry["reward_mean"] for entry in lines]
    quarter = steps // 4
    first, last = statistics.fmean(rewards[:quarter]), statistics.fmean(rewards[-quarter:])
    print(f"{kind} reward_mean: first quarter {first:.4f}, last quarter {last:.4f}; per step {rewards}; "
          f"first step {lines[0]}, last step {lines[-1]}")
    assert last > first, rewards
