"""RS-GRPO and multi-turn GRPO loops (issue 11) on the tiny small-vocabulary Qwen2.5-VL over the sample store.

In-process: a scripted policy (replies fixed per rollout seed, scored by the model like sampled ones) gives the
groups reward variance, so one optimiser step must raise the log-prob of the better reply. Through the real CLI:
metrics, resume after a stop, a reloadable and servable model, and bad input as one sentence with exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pagelens.graph.settings import AgentSettings
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.training import loop
from pagelens.training.evaluate import EvalQuestion
from pagelens.training.grpo_loop import train_grpo
from pagelens.training.loop import METRICS, Prompt
from pagelens.training.rewards import REWARD_KEYS
from pagelens.training.rollout import LocalPolicy, RolloutSampling, rollout_group
from pagelens.training.rsgrpo_loop import evisrag_ground_truth, train_rsgrpo
from pagelens.training.settings import GRPOSettings, RSGRPOSettings

QUESTION = {"question": "Who signed the letter from the chief executive in Northwind's 2023 annual report?",
            "answers": ["Margaret Okafor"], "pages": [{"document": "northwind_annual_report_2023.pdf", "page": 1}]}
GOOD_EVISRAG = ("<observe>a signed letter</observe><evidence>[1]: Margaret Okafor</evidence><think>It is signed."
                "</think><answer>Margaret Okafor</answer>")
BAD = "no idea"
GOOD_VRAG = ["<think>find it</think><search>chief executive letter</search>", "<answer>Margaret Okafor</answer>"]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    from pagelens.training.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_small"), vocabulary="small")


@pytest.fixture
def questions(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps(QUESTION) + "\n")
    return path


class Scripted(LocalPolicy):
    """Replies fixed by the rollout's seed (even: a good reply, odd: a bad one), scored by the model by teacher
    forcing like a sampled reply: a random model would never earn a reward."""

    protocol = "evisrag"

    def _sample(self, inputs, turn):
        good = self.seed % 2 == 0
        if self.protocol == "evisrag":
            text = GOOD_EVISRAG if good else BAD
        else:
            text = GOOD_VRAG[min(turn, 1)] if good else BAD
        ids = self.tokenizer.encode(text) + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)}
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        full["mm_token_type_ids"] = (full["input_ids"] == self.image_token_id).int()
        with torch.no_grad():
            logits = self.model(**full).logits[0, -len(ids) - 1:-1].float()
        return ids, logits


def reply_logprobs(folder: Path, store, protocol: str) -> list[float]:
    """Summed log-probs of the good (seed 0) and bad (seed 1) scripted rollouts under the model in `folder`."""
    from pagelens.graph.build import Agent

    Scripted.protocol = protocol
    policy = Scripted.from_folder(folder, RolloutSampling(max_new_tokens=64), device="cpu")
    agent = Agent(store, policy, AgentSettings(protocol=protocol, evisrag_pages=1, max_turns=1))
    return [sum(sum(turn.logprobs) for turn in rollout.turns)
            for rollout in rollout_group(agent, QUESTION["question"], 2, seed=0)]


def test_ground_truth_names_the_answer_on_gold_pages_only():
    question = EvalQuestion("q?", ("42",), (("a.pdf", 1),), True, 1)
    truth = evisrag_ground_truth(Prompt(question, ("p1",), 0), ["p2", "p1"])
    assert "<evidence>[1]: no relevant information\n[2]: 42</evidence>" in truth
    assert truth.endswith("<answer>42</answer>")
    unanswerable = EvalQuestion("q?", (), (), False, 1)
    assert evisrag_ground_truth(Prompt(unanswerable, (), 0), ["p1"]).endswith("<answer>insufficient to answer</answer>")


@pytest.mark.parametrize("protocol", ["evisrag", "vrag"])
def test_one_step_raises_the_better_reply_and_resumes(protocol, small_model, questions, sample_copy, tmp_path,
                                                      monkeypatch):
    """On fixed scripted groups one optimiser step raises the log-prob of the reply with positive advantages (the
    sign of the RS-GRPO / GRPO loss) and lowers the other's; a second run with more steps resumes from the first's
    checkpoint."""
    monkeypatch.setattr(loop, "LocalPolicy", Scripted)
    Scripted.protocol = protocol
    out = tmp_path / "out"
    agent = AgentSettings(evisrag_pages=1)
    with PageStore(StoreSettings(home=sample_copy)) as store:
        def train(steps):
            if protocol == "evisrag":
                settings = RSGRPOSettings(n=2, prompts_per_step=1, max_steps=steps, learning_rate=1e-3, save_steps=1)
                return train_rsgrpo(small_model, questions, out, settings, store=store, agent_settings=agent,
                                    progress=False, device="cpu")
            settings = GRPOSettings(n=2, prompts_per_step=1, max_steps=steps, learning_rate=1e-3, max_turns=1,
                                    warmup_steps=0, save_steps=1)
            return train_grpo(small_model, questions, out, settings, store=store, protocol="vrag",
                              agent_settings=agent, progress=False, device="cpu")

        first = train(1)
        [line] = first.metrics
        assert line["kept_groups"] == 1 and line["loss"] is not None and line["grad_norm"] > 0
        before, after = reply_logprobs(small_model, store, protocol), reply_logprobs(out, store, protocol)
        assert after[0] > before[0] and after[1] < before[1]  # good reply up, bad reply down
        second = train(2)
    assert first.resumed_from is None and second.resumed_from == 1
    lines = [json.loads(text) for text in (out / METRICS).read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [1, 2] and lines[0] == line


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_rsgrpo_and_grpo_through_the_cli(cli, small_model, questions, sample_copy, policy_server, tmp_path):
    # the cli runs in tmp_path: one page, short replies
    (tmp_path / "pagelens.toml").write_text("[agent]\nevisrag_pages = 1\n\n[policy]\nmax_tokens = 16\n")
    out = tmp_path / "rsgrpo"
    common = ["--model", str(small_model), "--data", str(questions), "--n", "2", "--prompts-per-step", "2",
              "--max-new-tokens", "24", "--device", "cpu", "--lr", "1e-3"]
    cli("train", "rsgrpo", *common, "--out", str(out), "--steps", "1", "--no-filter", home=sample_copy)
    assert (out / "checkpoint" / "state.json").is_file()
    rerun = cli("train", "rsgrpo", *common, "--out", str(out), "--steps", "2", "--no-filter", home=sample_copy)
    assert "resumed from the checkpoint at step 1" in rerun.stderr
    lines = [json.loads(text) for text in (out / METRICS).read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [1, 2]
    for entry in lines:
        assert {"reward_mean", *REWARD_KEYS, "loss", "kept_groups", "seconds"} <= set(entry)
        assert entry["kept_groups"] == 2
    from pagelens.servers.policy.transformers_backend import TransformersBackend

    served = TransformersBackend(out, device="cpu")  # what `pagelens serve policy --backend transformers` loads
    assert served.model.config.model_type == "qwen2_5_vl"
    trained, source = _weights(out), _weights(small_model)
    assert trained.keys() == source.keys()
    url, _ = policy_server(model=out)  # served, and scored by `pagelens eval`
    summary = json.loads(cli("eval", str(questions), "--policy", url, "--protocol", "evisrag", "--json",
                             home=sample_copy).stdout)
    assert summary["n"] == 1 and 0.0 <= summary["turns"]["valid_rate"] <= 1.0

    grpo = tmp_path / "grpo"
    cli("train", "grpo", *common, "--out", str(grpo), "--steps", "1", "--max-turns", "1", "--protocol", "pagelens",
        home=sample_copy)
    [entry] = [json.loads(text) for text in (grpo / METRICS).read_text().splitlines()]
    assert {"reward_mean", "format", "judge", "ndcg", "loss", "kl", "kept_groups", "seconds"} <= set(entry)
    TransformersBackend(grpo, device="cpu")


def test_bad_input_is_one_sentence_and_exit_2(cli, small_model, questions, sample_copy, tmp_path):
    out = tmp_path / "out"
    base = ["--out", str(out), "--device", "cpu"]
    no_answers = tmp_path / "no_answers.jsonl"
    no_answers.write_text(json.dumps({"question": "What?"}) + "\n")
    proc = cli("train", "rsgrpo", "--model", str(small_model), "--data", str(no_answers), *base, home=sample_copy,
               check=False)
    assert proc.returncode == 2 and f"{no_answers} line 1" in proc.stderr and '"answers"' in proc.stderr

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    proc = cli("train", "grpo", "--model", str(llama), "--data", str(questions), *base, home=sample_copy, check=False)
    assert proc.returncode == 2 and "not a Qwen2.5-VL" in proc.stderr

    proc = cli("train", "grpo", "--model", str(small_model), "--data", str(questions), "--judge",
               "http://127.0.0.1:9/v1", *base, home=sample_copy, check=False)
    assert proc.returncode == 2 and "judge endpoint http://127.0.0.1:9/v1" in proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing written, so no half-written checkpoint
