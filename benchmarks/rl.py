"""RL step costs: pagelens's RS-GRPO step against TRL's GRPOTrainer step, and graph rollouts against a bare
`generate` loop, on the tiny random-weight Qwen2.5-VL (SPEC §8, 400-token vocabulary) on the CPU; optionally one
RS-GRPO step of a full-size random-weight Qwen2.5-VL-3B in bf16 on a CUDA GPU.

Setup: the sample corpus (servers/sample/*.pdf) indexed into a temporary store, the first `--prompts` sample
questions, the tiny checkpoint, float32, `--threads` torch threads (1 by default). Every reply is exactly
`--max-new-tokens` tokens long on both sides (min_new_tokens = max_new_tokens: the end token is banned until then),
so both sides generate the same number of tokens.

1. RS-GRPO step (issue 11 goal: pagelens / TRL <= 1.1).
   pagelens: `training.rsgrpo_loop._step` as `pagelens train rsgrpo` runs it: for each of the `--prompts` questions,
   n rollouts through the agent graph (protocol evisrag: the retriever picks `--pages` pages, the graph renders
   them as data URLs, the LocalPolicy decodes and processes them and samples one reply), the six EVisRAG rewards,
   group advantages, scopes, log-probs recomputed, the scoped loss, backward, AdamW (vision tower frozen, lr 1e-6,
   grad clip 1.0), all sequences in one micro-batch. Online filtering is off: a random model earns no reward, and
   the filter would drop every group; all groups are trained on.
   TRL: `GRPOTrainer.training_step` + grad clip + AdamW step (what `Trainer.train` does per step), over the SAME
   prompts with the SAME images: the graph's first-turn messages for each question, recorded once, given to TRL
   as a conversational dataset with an `images` column (TRL's VLM path; the processor is pagelens's
   `image_only_processor`, so torchvision is not needed). Batch = prompts x n completions in one generation batch,
   the same n, temperature 1, top-p 1, top-k off, beta 0 (no KL), clip 0.2 / 0.28, six reward functions (each
   EVisRAG reward column, computed once per completion as pagelens does), its default loss.
   Measured interleaved (pagelens, TRL, pagelens, TRL, ...) after one warm-up step each; medians. Each side's
   time inside `model.generate` is reported apart.
2. Rollout through the graph (issue 11 goal: overhead <= 1.2x). One rollout with protocol pagelens and
   `--turns` action turns: turn 0 is forced, token by token inside `generate` (a prefix constraint), to write a
   search, so the graph searches and shows page images; the later turns sample `--max-new-tokens` tokens each
   (invalid actions, answered by the graph's notes) and the last is the forced answer call. Against it:
   - bare: the same turns replayed as a bare loop of `model.generate` calls on the prompt ids and image patches
     the graph's turns recorded (prepared before timing), same generation settings and token counts;
   - bare + encode: the same loop, each turn starting from the recorded OpenAI messages (chat template, data-URL
     decoding, image processing: `LocalPolicy._encode`), to separate image processing from the graph's own work.
   The policy keeps each image's patches across runs (as across a group's n rollouts of one question), so after
   the warm-up no side processes an image again.
3. `--gpu-3b`: one RS-GRPO step (the part-1 pagelens path) of a random-weight model with Qwen2.5-VL-3B-Instruct's
   configuration (text: hidden 2048, 36 layers, 16 heads, 2 KV heads, intermediate 11008, vocabulary 151,936;
   vision: depth 32, hidden 1280, out 2048) in bf16 on CUDA: generated tokens/s, trained tokens/s, peak CUDA memory.
   It refuses when torch sees no CUDA GPU. `--dry-run-tiny` runs the same code on the CPU with the tiny config.

    python benchmarks/rl.py [--repeats 5] [--n 4] [--max-new-tokens 32] [--json] [--out FILE.json]
    python benchmarks/rl.py --gpu-3b [--dry-run-tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "servers" / "sample"
SEARCH_TURN = "<think>I need the table.</think><search>revenue Europe</search>"


# -- setup ---------------------------------------------------------------------------------------------------------

def machine() -> dict:
    import torch
    import transformers
    import trl

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "system": platform.system(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def sample_store(home: Path) -> Path:
    """The sample corpus indexed into `home` (as tests/conftest.py `sample_home` does)."""
    from pagelens.tools.corpus.ingest import index_paths
    from pagelens.tools.corpus.store import PageStore, StoreSettings

    with PageStore(StoreSettings(home=home)) as store:
        report = index_paths(store, sorted(SAMPLE.glob("*.pdf")), progress=False)
    if report.failures:
        raise SystemExit(f"indexing the sample corpus failed: {report.failures}")
    return home


def question_file(folder: Path, count: int) -> Path:
    lines = [line for line in (SAMPLE / "questions.jsonl").read_text().splitlines() if line.strip()]
    answerable = [line for line in lines if json.loads(line).get("is_sufficient", True)][:count]
    path = folder / "questions.jsonl"
    path.write_text("\n".join(answerable) + "\n")
    return path


class GenerateTimer:
    """Wraps `model.generate` (an instance attribute) to add up the seconds spent in it and the tokens it made."""

    def __init__(self, model):
        self.model, self.inner = model, model.generate
        self.seconds, self.calls, self.new_tokens = 0.0, 0, 0
        model.generate = self

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        sequences = out.sequences if hasattr(out, "sequences") else out
        prompt = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else 0
        self.new_tokens += sequences.shape[0] * (sequences.shape[1] - prompt)
        return out

    def take(self) -> tuple[float, int, int]:
        taken = self.seconds, self.calls, self.new_tokens
        self.seconds, self.calls, self.new_tokens = 0.0, 0, 0
        return taken


def fix_lengths(policy, tokens: int) -> None:
    """Make every reply of a LocalPolicy exactly `tokens` long (the end token banned until then)."""
    policy.generation_config.min_new_tokens = tokens
    policy.generation_config.max_new_tokens = tokens


# -- part 1: RS-GRPO step against TRL's GRPOTrainer ----------------------------------------------------------------

@dataclass
class PagelensStep:
    """pagelens's RS-GRPO step (rsgrpo_loop._step) on a PolicyTrainer over the store, and what it needs."""

    trainer: object
    agent: object
    stream: object
    settings: object
    micro_batch: int
    timer: GenerateTimer

    @classmethod
    def build(cls, model: Path, questions: Path, store, out: Path, *, n: int, prompts: int, tokens: int, pages: int,
              device: str) -> PagelensStep:
        from pagelens.graph.build import Agent
        from pagelens.graph.settings import AgentSettings
        from pagelens.tools.search import Retriever
        from pagelens.training.evaluate import gold_page_ids, read_questions
        from pagelens.training.loop import PolicyTrainer, QuestionStream
        from pagelens.training.rollout import RolloutSampling
        from pagelens.training.rsgrpo_loop import KIND
        from pagelens.training.settings import RSGRPOSettings

        settings = RSGRPOSettings(n=n, prompts_per_step=prompts, max_response_tokens=tokens, online_filter=False,
                                  max_steps=1_000_000)
        trainer = PolicyTrainer(
            KIND, model, out, sampling=RolloutSampling(settings.temperature, tokens),
            learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
            max_grad_norm=settings.max_grad_norm, freeze_vision=settings.freeze_vision, settings=settings,
            device=device)
        fix_lengths(trainer.policy, tokens)
        listed = read_questions(questions)
        agent = Agent(store, trainer.policy, AgentSettings(protocol="evisrag", evisrag_pages=pages),
                      retriever=Retriever(store))
        stream = QuestionStream(listed, gold_page_ids(listed, store, questions), settings.seed)
        trainer.model.train()
        return cls(trainer, agent, stream, settings, prompts * n, GenerateTimer(trainer.model))

    def step(self) -> dict:
        from pagelens.training import rsgrpo_loop

        seconds = {"update": 0.0}
        update = rsgrpo_loop._update

        def timed_update(*args, **kwargs):
            started = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                seconds["update"] = time.perf_counter() - started

        rsgrpo_loop._update = timed_update
        try:
            started = time.perf_counter()
            metrics = rsgrpo_loop._step(self.trainer, self.agent, self.stream, self.settings, self.micro_batch)
            total = time.perf_counter() - started
        finally:
            rsgrpo_loop._update = update
        self.trainer.step += 1
        generate, calls, tokens = self.timer.take()
        if metrics.get("loss") is None:
            raise SystemExit("the pagelens step trained on nothing; the benchmark needs every group kept.")
        return {"seconds": total, "generate_s": generate, "generate_calls": calls, "new_tokens": tokens,
                "update_s": seconds["update"], "rollout_and_rewards_s": total - seconds["update"]}

    def record_prompts(self) -> list[dict]:
        """Each question's first-turn messages as the graph renders them, its images and the gold (one rollout)."""
        from pagelens.training.rollout import _decode_data_url, rollout_group
        from pagelens.training.rsgrpo_loop import evisrag_ground_truth

        policy = self.trainer.policy
        seen: list[list[dict]] = []
        encode = policy._encode

        def recording(messages):
            seen.append(messages)
            return encode(messages)

        policy._encode = recording
        try:
            records = []
            for draw in range(self.settings.prompts_per_step):
                prompt = self.stream[draw]
                seen.clear()
                [rollout] = rollout_group(self.agent, prompt.question.question, 1, seed=10**9 + draw)
                messages, images = [], []
                for message in seen[0]:
                    content = message["content"]
                    if isinstance(content, list):
                        parts = []
                        for part in content:
                            if part.get("type") == "image_url":
                                images.append(_decode_data_url(part["image_url"]["url"]))
                                parts.append({"type": "image"})
                            else:
                                parts.append(part)
                        content = parts
                    messages.append({"role": message["role"], "content": content})
                records.append({"prompt": messages, "images": images,
                                "ground_truth": evisrag_ground_truth(prompt, rollout.shown_pages),
                                "prompt_tokens": len(rollout.turns[0].prompt_ids)})
        finally:
            del policy._encode
        self.timer.take()
        return records


class TRLStep:
    """TRL's GRPOTrainer doing one optimiser step as `Trainer.train` does it, on the recorded prompts."""

    def __init__(self, model: Path, records: list[dict], out: Path, *, n: int, tokens: int, settings):
        import torch
        from datasets import Dataset
        from transformers import AutoModelForImageTextToText
        from trl import GRPOConfig, GRPOTrainer

        from pagelens.training.rewards import REWARD_KEYS, evisrag_rewards
        from pagelens.training.settings import SFTSettings
        from pagelens.training.sft import image_only_processor

        network = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32, local_files_only=True)
        network.model.visual.requires_grad_(False)  # as pagelens (SPEC §4)
        scored: dict[tuple[str, str, int], dict[str, float]] = {}

        def rewards_of(completions, ground_truth, completion_ids) -> list[dict[str, float]]:
            rows = []
            for completion, truth, ids in zip(completions, ground_truth, completion_ids, strict=True):
                text = completion[0]["content"] if isinstance(completion, list) else completion
                key = (text, truth, len(ids))
                if key not in scored:  # each completion scored once, as pagelens does, whatever the column
                    scored[key] = evisrag_rewards(text, truth, len(ids))
                rows.append(scored[key])
            return rows

        def column(name: str) -> Callable:
            def reward(completions, ground_truth, completion_ids, **_):
                return [row[name] for row in rewards_of(completions, ground_truth, completion_ids)]

            reward.__name__ = name
            return reward

        self.scored = scored
        rows = [{key: record[key] for key in ("prompt", "images", "ground_truth")} for record in records]
        config = GRPOConfig(
            output_dir=str(out), per_device_train_batch_size=len(records) * n, num_generations=n,
            max_completion_length=tokens, generation_kwargs={"min_new_tokens": tokens}, temperature=1.0, top_p=1.0,
            top_k=0, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
            max_grad_norm=settings.max_grad_norm, beta=0.0, epsilon=settings.clip_low,
            epsilon_high=settings.clip_high, use_cpu=not torch.cuda.is_available(), bf16=False, report_to="none",
            save_strategy="no", logging_steps=10**9, max_steps=10**6, dataloader_num_workers=0, seed=0)
        self.trainer = GRPOTrainer(model=network, reward_funcs=[column(name) for name in REWARD_KEYS], args=config,
                                   train_dataset=Dataset.from_list(rows), processing_class=image_only_processor(
                                       model, SFTSettings()))
        self.trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by GRPO's loss
        loader = self.trainer.get_train_dataloader()
        self.batches = (batch for _ in iter(int, 1) for batch in loader)  # epoch after epoch
        self.model = self.trainer.model
        self.model.train()
        self.timer = GenerateTimer(self.model)

    def step(self) -> dict:
        trainer = self.trainer
        started = time.perf_counter()
        inputs = next(self.batches)
        trainer.training_step(trainer.model, inputs, None)
        trainer.accelerator.clip_grad_norm_(self.model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        self.model.zero_grad()
        trainer.state.global_step += 1
        total = time.perf_counter() - started
        generate, calls, tokens = self.timer.take()
        self.scored.clear()
        return {"seconds": total, "generate_s": generate, "generate_calls": calls, "new_tokens": tokens,
                "rest_s": total - generate}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def part_rsgrpo(tmp: Path, model: Path, store, args) -> dict:
    import torch

    questions = question_file(tmp, args.prompts)
    ours = PagelensStep.build(model, questions, store, tmp / "pagelens-out", n=args.n, prompts=args.prompts,
                              tokens=args.max_new_tokens, pages=args.pages, device="cpu")
    records = ours.record_prompts()
    theirs = TRLStep(model, records, tmp / "trl-out", n=args.n, tokens=args.max_new_tokens, settings=ours.settings)
    ours.step(), theirs.step()  # warm-up: first calls, AdamW state
    pagelens, trl = [], []
    for _ in range(args.repeats):
        pagelens.append(ours.step())
        trl.append(theirs.step())
    expected = args.prompts * args.n * args.max_new_tokens
    for row in pagelens + trl:
        if row["new_tokens"] != expected:
            raise SystemExit(f"a step generated {row['new_tokens']} tokens, not {expected}; "
                             "the lengths were not fixed.")
    result = {
        "torch_threads": torch.get_num_threads(), "prompts": args.prompts, "n": args.n,
        "max_new_tokens": args.max_new_tokens, "pages": args.pages,
        "prompt_tokens": [record["prompt_tokens"] for record in records],
        "generated_tokens_per_step": expected,
        "pagelens": {key: median(pagelens, key) for key in pagelens[0]},
        "trl": {key: median(trl, key) for key in trl[0]},
        "pagelens_runs_s": [row["seconds"] for row in pagelens], "trl_runs_s": [row["seconds"] for row in trl],
    }
    result["ratio"] = result["pagelens"]["seconds"] / result["trl"]["seconds"]
    result["generate_ratio"] = result["pagelens"]["generate_s"] / result["trl"]["generate_s"]
    return result


# -- part 2: graph rollout against a bare generate loop ------------------------------------------------------------

def forced_search_policy(model: Path, tokens: int):
    """A LocalPolicy whose turn 0 is generated under a prefix constraint that spells SEARCH_TURN then the end
    token (so the graph searches and shows pages), and whose later turns sample exactly `tokens` tokens."""
    from pagelens.training.rollout import LocalPolicy, RolloutSampling

    class ForcedSearch(LocalPolicy):
        def _sample(self, inputs, turn):
            if turn != 0:
                return super()._sample(inputs, turn)
            with forced(self.model, self.forced_ids, inputs["input_ids"].shape[1], self.generation_config):
                return super()._sample(inputs, turn)

    policy = ForcedSearch.from_folder(model, RolloutSampling(1.0, tokens), device="cpu")
    fix_lengths(policy, tokens)
    end = policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    policy.forced_ids = policy.tokenizer.encode(SEARCH_TURN) + [end]
    return policy


@contextlib.contextmanager
def forced(model, ids: list[int], prompt_length: int, config):
    """Within the block, `model.generate` writes exactly `ids` (each step allows only the next one)."""
    inner = model.generate
    short = copy.deepcopy(config)
    short.min_new_tokens, short.max_new_tokens = 0, len(ids)

    def generate(*args, **kwargs):
        kwargs["generation_config"] = short
        return inner(*args, **kwargs, prefix_allowed_tokens_fn=lambda _, sofar: [ids[len(sofar) - prompt_length]])

    model.generate = generate
    try:
        yield
    finally:
        model.generate = inner


def part_graph(model: Path, store, args) -> dict:
    import torch

    from pagelens.graph.build import Agent
    from pagelens.graph.settings import AgentSettings
    from pagelens.training.rollout import rollout_group

    policy = forced_search_policy(model, args.max_new_tokens)
    policy.model.eval()
    agent = Agent(store, policy, AgentSettings(protocol="pagelens", max_turns=args.turns))
    question = "What was Northwind's revenue in Europe in Q3 2023?"

    # Record once: each turn's messages (for bare + encode) and its prompt ids and image patches (for bare).
    seen: list[list[dict]] = []
    encode = policy._encode
    policy._encode = lambda messages: (seen.append(messages), encode(messages))[1]
    [rollout] = rollout_group(agent, question, 1, seed=7)
    del policy._encode
    if not rollout.result.images:
        raise SystemExit("the forced search showed no page; the graph benchmark needs one.")
    replay = []
    for turn, messages in zip(rollout.turns, seen, strict=True):
        ids = torch.tensor([turn.prompt_ids])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": (ids == policy.image_token_id).int()}
        if turn.image_keys:
            inputs["pixel_values"] = torch.cat([rollout.images[key][0] for key in turn.image_keys])
            inputs["image_grid_thw"] = torch.stack([rollout.images[key][1] for key in turn.image_keys])
        replay.append((inputs, messages, len(turn.sampled_ids)))
    tokens = [len(turn.sampled_ids) for turn in rollout.turns]
    timer = GenerateTimer(policy.model)

    def graph() -> None:
        [again] = rollout_group(agent, question, 1, seed=7)
        if [len(turn.sampled_ids) for turn in again.turns] != tokens:
            raise SystemExit("the graph's token counts changed between runs.")

    def bare(encoded: bool) -> None:
        for turn, (inputs, messages, count) in enumerate(replay):
            if encoded:
                inputs, _ = policy._encode(messages)
            sampled, _ = policy._sample(inputs, turn)  # turn 0 under the same prefix constraint as in the graph
            if len(sampled) != count:
                raise SystemExit(f"bare turn {turn} made {len(sampled)} tokens, the graph's {count}.")

    runs: dict[str, list[float]] = {"graph": [], "bare": [], "bare_encode": []}
    inside: dict[str, list[float]] = {"graph": [], "bare": [], "bare_encode": []}
    cases = {"graph": graph, "bare": lambda: bare(False), "bare_encode": lambda: bare(True)}
    for name, case in cases.items():  # warm-up
        case()
    timer.take()
    for _ in range(max(args.repeats, 3)):
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            runs[name].append(time.perf_counter() - started)
            inside[name].append(timer.take()[0])
    result = {"torch_threads": torch.get_num_threads(), "turns": len(tokens), "tokens_per_turn": tokens,
              "prompt_tokens_per_turn": [len(turn.prompt_ids) for turn in rollout.turns],
              "images_shown": len(rollout.result.images)}
    for name in cases:
        result[name] = {"seconds": statistics.median(runs[name]), "generate_s": statistics.median(inside[name]),
                        "runs_s": runs[name]}
    result["overhead"] = result["graph"]["seconds"] / result["bare"]["seconds"]
    result["overhead_vs_bare_encode"] = result["graph"]["seconds"] / result["bare_encode"]["seconds"]
    return result


# -- part 3: one RS-GRPO step of a Qwen2.5-VL-3B config ------------------------------------------------------------

def qwen25vl_3b_config(vocab_size: int, ids: dict[str, int]):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 2048, "intermediate_size": 11008,
                     "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
                     "max_position_embeddings": 128000,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                         "mrope_section": [16, 24, 24]},
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": True},
        vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 2048, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)


def big_step(tmp: Path, store, args, *, dry_run_tiny: bool) -> dict:
    """One pagelens RS-GRPO step (part 1's path) of the 3B config in bf16 on CUDA, or of the tiny config on the CPU."""
    import torch

    from pagelens.training.tiny_model import build_tiny_qwen25vl

    if dry_run_tiny:
        folder, device = build_tiny_qwen25vl(tmp / "dry-tiny", vocabulary="small"), "cpu"
    else:
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        source = build_tiny_qwen25vl(tmp / "qwen-tokenizer", vocabulary="qwen")  # tokenizer, template, processor
        folder, device = tmp / "qwen3b", "cuda"
        folder.mkdir()
        for path in source.iterdir():  # all but the tiny model's weights and config
            if path.is_file() and path.name not in ("config.json", "generation_config.json", "model.safetensors"):
                shutil.copy(path, folder / path.name)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in
               ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = Qwen2_5_VLForConditionalGeneration(qwen25vl_3b_config(151936, ids)).to(torch.bfloat16)
        model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
        model.generation_config.pad_token_id = ids["<|endoftext|>"]
        model.save_pretrained(folder)  # PolicyTrainer loads it from there in bf16
        del model
        torch.cuda.empty_cache()
    questions = question_file(tmp, args.prompts)
    ours = PagelensStep.build(folder, questions, store, tmp / "big-out", n=args.n, prompts=args.prompts,
                              tokens=args.max_new_tokens, pages=args.pages, device=device)
    dtype = str(ours.trainer.model.dtype)
    steps = []
    for _ in range(2):  # the first allocates AdamW's state and warms the kernels; the second is reported
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        steps.append(ours.step())
        if device == "cuda":
            torch.cuda.synchronize()
    row = steps[-1]
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run, tiny config)",
              "dtype": dtype, "parameters": sum(p.numel() for p in ours.trainer.model.parameters()),
              "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens, **row,
              "generated_tokens_per_s": row["new_tokens"] / row["generate_s"]}
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return result


# -- output --------------------------------------------------------------------------------------------------------

def table(report: dict) -> str:
    lines = [f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"{report['machine']['torch_threads']} torch thread(s), torch {report['machine']['torch']}, "
             f"transformers {report['machine']['transformers']}, trl {report['machine']['trl']}"]
    if "rsgrpo" in report:
        r = report["rsgrpo"]
        lines += ["", f"RS-GRPO step, tiny Qwen2.5-VL, {r['prompts']} prompts x n={r['n']} x {r['max_new_tokens']} "
                      f"tokens, {r['pages']} page images per prompt (prompt tokens {r['prompt_tokens']}); medians "
                      f"of {len(r['pagelens_runs_s'])}",
                  f"{'':<10}{'step s':>9}{'generate s':>12}{'gen calls':>11}{'other s':>9}"]
        for name in ("pagelens", "trl"):
            row = r[name]
            lines.append(f"{name:<10}{row['seconds']:>9.3f}{row['generate_s']:>12.3f}{row['generate_calls']:>11.0f}"
                         f"{row['seconds'] - row['generate_s']:>9.3f}")
        lines.append(f"pagelens: rollout + rewards {r['pagelens']['rollout_and_rewards_s']:.3f} s, update "
                     f"{r['pagelens']['update_s']:.3f} s")
        lines.append(f"ratio pagelens / TRL: {r['ratio']:.2f} (goal <= 1.1; generate alone {r['generate_ratio']:.2f})")
    if "graph" in report:
        g = report["graph"]
        lines += ["", f"rollout, protocol pagelens, {g['turns']} turns of {g['tokens_per_turn']} tokens, "
                      f"{g['images_shown']} image(s) shown (prompt tokens {g['prompt_tokens_per_turn']}); medians",
                  f"{'':<14}{'run s':>8}{'generate s':>12}"]
        for name in ("graph", "bare", "bare_encode"):
            lines.append(f"{name:<14}{g[name]['seconds']:>8.3f}{g[name]['generate_s']:>12.3f}")
        lines.append(f"graph overhead: {g['overhead']:.2f}x bare generate (goal <= 1.2), "
                     f"{g['overhead_vs_bare_encode']:.2f}x bare + encode")
    if "gpu_3b" in report:
        b = report["gpu_3b"]
        peak = "n/a" if b["peak_memory_gib"] is None else f"{b['peak_memory_gib']:.1f} GiB"
        lines += ["", f"RS-GRPO step, {b['parameters'] / 1e9:.2f}B parameters, {b['dtype']} on {b['device']}: "
                      f"{b['seconds']:.2f} s, {b['generated_tokens_per_s']:,.0f} generated tokens/s, update "
                      f"{b['update_s']:.2f} s, peak memory {peak}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps / rollouts per side (after a warm-up)")
    parser.add_argument("--n", type=int, default=4, help="replies per prompt (group size)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per RS-GRPO step")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per reply, on both sides")
    parser.add_argument("--pages", type=int, default=2, help="page images per evisrag prompt")
    parser.add_argument("--turns", type=int, default=3, help="action turns of the graph rollout")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--skip", choices=["rsgrpo", "graph"], action="append", default=[], help="skip a part")
    parser.add_argument("--gpu-3b", action="store_true", help="one RS-GRPO step of a Qwen2.5-VL-3B config on CUDA")
    parser.add_argument("--dry-run-tiny", action="store_true", help="with --gpu-3b: the same path, tiny, on the CPU")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args()
    if args.n < 2 or args.prompts < 1 or args.repeats < 1 or args.max_new_tokens < 1:
        parser.error("--n must be at least 2 and --prompts, --repeats, --max-new-tokens at least 1")

    import torch

    if args.gpu_3b and not args.dry_run_tiny and not torch.cuda.is_available():
        print("--gpu-3b needs a CUDA GPU and torch sees none; run it on a GPU machine, or add --dry-run-tiny to "
              "run the same path with the tiny model on the CPU.", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from pagelens.training.tiny_model import build_tiny_qwen25vl
    from pagelens.tools.corpus.store import PageStore, StoreSettings

    report: dict = {"machine": machine(), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home = sample_store(tmp / "store")
        with PageStore(StoreSettings(home=home)) as store:
            if args.gpu_3b:
                report["gpu_3b"] = big_step(tmp, store, args, dry_run_tiny=args.dry_run_tiny)
            else:
                model = build_tiny_qwen25vl(tmp / "tiny", vocabulary="small")
                if "rsgrpo" not in args.skip:
                    report["rsgrpo"] = part_rsgrpo(tmp, model, store, args)
                if "graph" not in args.skip:
                    report["graph"] = part_graph(model, store, args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1) if args.json else table(report))


if __name__ == "__main__":
    main()
