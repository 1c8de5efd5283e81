"""The whole loop offline on the CPU: record trajectories with the extractive policy on the sample corpus, SFT a
tiny Qwen2.5-VL on them, serve it, and evaluate it with `pagelens eval` on questions it was not trained on.

What it shows: the untrained model writes noise (valid_rate near 0); after a few CPU minutes of SFT, the model
follows the pagelens protocol in its search and zoom turns on most held-out questions (a `<search>` with a query,
then a `<bbox>` of four numbers, each a turn the protocol parser accepts).

What it does not reach: the issue's goal of valid_rate >= 0.9. The final turn, `<evidence>` lines quoting the page
and then `<answer>`, stays invalid: its text quotes a page the random-weight vision tower cannot read, so the tiny
model writes page-like text that greedy decoding drives into loops (`2020…`) and never closes the tags. Measured on
the held-out questions (greedy, one thread): valid_rate 0.3–0.4 in three runs, i.e. search and zoom valid, the final
turn and its retries not. What we tried (2 shared EPYC cores): the SPEC §8 model (width 64, 400-token vocabulary)
0.0–0.17 after 700–1,200 steps; width 128 with the 4,096 most frequent Qwen2 tokens 0.13–0.4 after 400–1,400 steps
on 150–700 runs; width 256: see the issue note. Neither decoding nor the data's surface fixed it (width 128, 700
steps, the six held-out questions): greedy 0.33, EVisRAG's authors' sampling (temperature 0.1, repetition penalty
1.05) 0.39, temperature 0.7 0.36, 1.0 0.17; training rows without the document name in the evidence and without the
extractive policy's "quoted from" suffix in the answer 0.0–0.43; the page's text in view (`page_text`) 0.4, its
final turns still garbled. Longer SFT of the same model (`--lr 3e-3 --warmup 0.03`, greedy): 700 runs and 2,000
steps 0.63, 6,000 steps 0.63 (8.5 passes over the runs; loss 0.08, it recites memorised page lines), 2,000 runs and
4,000 steps 0.70; 700 runs and 4,000 steps (23-30 minutes of SFT) 0.86, 0.90, 0.52, 0.95, 0.54, 0.54 with data-order
seeds 0-5. The good seeds end every held-out question in a valid answer (invalid: an inverted box, an empty
`<answer>`); the others end a turn right after `<think>` (the bigram `>`, `<|im_end|>` closes every trained turn) or
write noise after an "invalid action" turn they never saw in training; `--lr 1e-3` gave seeds 2 and 4 0.54 and 0.60.
Rows that teach the recovery (`slips`, pagelens.training.recording: 15% of the recorded turns first written
malformed, then retried after the real retry message, the malformed turn kept out of the loss; the test's default,
PAGELENS_SFT_SLIPS=0 for the figures above) lifted the worst seeds, 700 runs and 4,000 steps: seeds 0, 2, 4, 5 0.86
→ 0.91, 0.52 → 0.91, 0.54 → 0.81, 0.54 → 0.83 (at this test's 700 steps, seed 0: 0.50); what stays invalid is mostly
one turn a question, then recovered. 30% slips gave seeds 0, 2, 4 and 5 0.95, 0.95, 0.90 and 0.86 at 4,000 steps, but
0.17 at this test's 700 steps, so the default stays 15%. 0.9 is reached by three seeds of four, not by every seed, nor
in the minutes a CI run allows. Images of 64 merged patches (`min_pixels = max_pixels = 64·28²`, in training and
serving) make a step 1.7x cheaper, but gave 0.54 at 700 steps (seed 0) and 0.67 / 0.13 at 1,200 (seeds 0 / 2), and a
model trained below the size the agent sends reads its boxes in another frame, so the test keeps the agent's size.
A repetition penalty of 1.2 or 1.5 on that 700-step model gave 0.60 and 0.36 (none: 0.54). Four language layers
instead of two (same width, 700 steps, seeds 0 / 2) gave 0.4 / 0.0: at 700 steps its searches do not even copy the
question. Batches of 4 rows do not show the model more rows in the same minutes: 1.41 rows/s against 1.98 with
batches of 1 (one thread, 20 and 40 steps), so the 4,000 rows the good runs need cost about half an hour here.
It does close an answer now and then when sampling, which is what multi-turn GRPO starts from
(test_rl_reward_rise.py).

Training data: the first 14 sample questions plus questions cut from the pages' text lines (3 to 9 words), RUNS
runs in all, so the model sees many different questions rather than memorising a few. The model: `pagelens
tiny-model` with `--vocab-size 4096 --hidden-size 128` (SPEC §8's architecture, wider, with Qwen2's frequent
tokens), which learns the protocol's turns in 700 steps where SPEC §8's own size does not.

It takes about 6 minutes on two cores, a fifth of CI's time limit, and does not reach its goal, so it runs only with
PAGELENS_SFT_END_TO_END=1 (`PAGELENS_SFT_END_TO_END=1 pytest tests/training/test_sft_end_to_end.py -s`); the SFT
step itself (loss mask, checkpoint, serving the result) is tested on every run in test_sft.py. Run to run, on a
shared machine, one held-out question in six can still fail its first turn, so it asserts a majority.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pagelens.training.recording import record_extractive_runs

SAMPLE = Path(__file__).resolve().parents[2] / "servers" / "sample"
TRAIN = 14  # the first 14 sample questions are trained on, the last 6 held out
RUNS = 700
# The figures above: PAGELENS_SFT_STEPS=4000 PAGELENS_SFT_SEED=S (longer runs warm the learning rate up first).
STEPS = int(os.environ.get("PAGELENS_SFT_STEPS", "700"))
SEED = int(os.environ.get("PAGELENS_SFT_SEED", "0"))
SLIPS = float(os.environ.get("PAGELENS_SFT_SLIPS", "0.15"))
WARMUP = 0.03 if STEPS > 700 else 0.0


def _evaluate(cli, home: Path, url: str, questions: Path, folder: Path, *, max_tokens: int, max_turns: int,
              limit: int) -> tuple[float, list[dict]]:
    """`pagelens eval` with greedy decoding: the summary's valid_rate and the per-question records."""
    config = folder / "pagelens.toml"
    folder.mkdir()
    config.write_text(f"[policy]\ntemperature = 0.0\nmax_tokens = {max_tokens}\n\n[agent]\nmax_turns = {max_turns}\n")
    proc = cli("eval", str(questions), "--policy", url, "--protocol", "pagelens", "--limit", str(limit), "--json",
               "--report", str(folder / "report.md"), home=home, env={"PAGELENS_CONFIG": str(config)})
    summary = json.loads(proc.stdout)
    assert summary["n"] == limit
    lines = Path(summary["results"]).read_text().splitlines()[1:]  # a header line with the setup, then one a question
    return summary["turns"]["valid_rate"], [json.loads(line) for line in lines]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PAGELENS_SFT_END_TO_END") != "1",
                    reason="6 minutes of CPU SFT below its goal: set PAGELENS_SFT_END_TO_END=1 to run it")
def test_sft_teaches_the_tiny_model_the_protocol_turns(sample_copy, cli, policy_server, tmp_path):
    questions = json.loads((SAMPLE / "questions.json").read_text())
    runs = tmp_path / "trajectories" / "runs.jsonl"
    # One question through the real command, the rest in-process through the same agent and trajectory writer.
    cli("ask", questions[0]["question"], "--policy", "extractive", "--protocol", "pagelens", "--trajectory", str(runs),
        home=sample_copy)
    recorded = 1 + record_extractive_runs(sample_copy, [q["question"] for q in questions[1:TRAIN]], RUNS, runs,
                                          slips=SLIPS)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"question": q["question"], "answers": [q["answer"]],
                                            "pages": [{"document": q["document"], "page": q["page"]}]}) + "\n"
                                for q in questions[TRAIN:]))

    tiny = tmp_path / "tiny"
    cli("tiny-model", "qwen2.5-vl", str(tiny), "--vocab-size", "4096", "--hidden-size", "128")
    trained = tmp_path / "trained"
    # One thread: on a shared two-core machine, two threads that wait for each other run several times slower;
    # the data loader's worker process takes the other core.
    proc = cli("train", "sft", "--model", str(tiny), "--data", str(runs), "--out", str(trained), "--lr", "3e-3",
               "--max-steps", str(STEPS), "--warmup", str(WARMUP), "--seed", str(SEED), "--save-steps", str(2 * STEPS),
               "--no-gradient-checkpointing",
               env={"OMP_NUM_THREADS": "1"})
    kept, read = map(int, re.search(r"(\d+) of (\d+) run\(s\) kept", proc.stderr).groups())
    assert read == recorded and kept >= 0.9 * recorded  # the answered runs

    url, _ = policy_server(model=trained)
    after, records = _evaluate(cli, sample_copy, url, held_out, tmp_path / "after", max_tokens=512, max_turns=4,
                               limit=len(questions) - TRAIN)
    # The untrained model runs every turn to max_tokens, so it is measured on fewer, shorter turns.
    url, _ = policy_server(model=tiny)
    before, _ = _evaluate(cli, sample_copy, url, held_out, tmp_path / "before", max_tokens=64, max_turns=1, limit=2)

    print(f"valid_rate: untrained {before:.2f}, after SFT {after:.2f}")
    assert before <= 0.25
    assert after >= before + 0.2
    # Most held-out questions: a valid search, then a valid zoom.
    assert sum(record["valid_turns"] >= 2 for record in records) > len(records) / 2, records
