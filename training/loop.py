"""The machinery RS-GRPO (training/rsgrpo_loop.py) and multi-turn GRPO (training/grpo_loop.py) share: the policy
being trained and its optimiser, the question stream, gradient accumulation over micro-batches, the metrics file,
resumable checkpoints and the saved model.

OUT folder of a run:
- `metrics.jsonl`: one JSON line per optimiser step (`step`, `reward_mean`, the loop's reward means, `loss`,
  `kept_groups`, `seconds`, ...). On resume it is rewritten from the checkpoint, so steps a kill interrupted after
  the last checkpoint are dropped and then redone; the file always matches the weights that follow it.
- `checkpoint/`: the newest resumable state: `model.safetensors` (the weights), `optimizer.pt` (AdamW and the
  learning-rate schedule), `rng.pt` (torch's and Python's random states) and `state.json` (step, prompts drawn,
  metrics so far, settings), written LAST. It is written to a temporary folder that is renamed into place, the
  previous one moved aside first and removed after, so a kill at any moment leaves either the old or the new
  checkpoint whole, never a half-written one; a leftover temporary folder is removed on start. The checkpoint is
  kept when training ends: rerunning with more `--steps` continues from it.
- the trained model (config, weights, tokenizer, chat template, image processor config), written as
  training/sft.py writes it, so it reloads offline through the Auto classes and `pagelens serve policy --backend
  transformers --model OUT` serves it.

Determinism: the question order is a seeded permutation per pass over the file, and the rollouts of the k-th
prompt drawn use seeds fixed by (seed, k), so a resumed run draws and samples what an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pagelens.errors import BadInputError
from pagelens.training.evaluate import EvalQuestion
from pagelens.training.rollout import LocalPolicy, RolloutSampling, TrainingSequence, collate, sequence_logprobs
from pagelens.training.sft import output_folder, save_servable

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
_STATE = "state.json"
_OLD = ".checkpoint-old"
_TEMP_PREFIX = ".checkpoint-tmp-"
# SPEC §5: what an unanswerable question's reply should say (its gold when the file gives no answer).
INSUFFICIENT = "insufficient to answer"
# Rollout seeds of consecutive prompts are n apart; runs with different seeds lie this far apart.
_SEED_SPACING = 100_000_000


@dataclass(frozen=True)
class RLResult:
    """What a finished RS-GRPO or GRPO run wrote and did."""

    out: Path
    steps: int
    resumed_from: int | None
    metrics: list[dict]


@dataclass(frozen=True)
class Prompt:
    """The `draw`-th question drawn from the stream, with its gold pages as page ids of the store."""

    question: EvalQuestion
    gold_pages: tuple[str, ...]
    draw: int

    @property
    def gold_answers(self) -> tuple[str, ...]:
        """The file's answers; an unanswerable question without any has SPEC §5's `insufficient to answer`."""
        return self.question.answers or (INSUFFICIENT,)


class QuestionStream:
    """The questions, endlessly, in a seeded random order per pass: `stream[k]` is the k-th prompt drawn."""

    def __init__(self, questions: Sequence[EvalQuestion], gold: dict[str, list[str]], seed: int):
        self.questions, self.gold, self.seed = list(questions), gold, seed
        self._orders: dict[int, list[int]] = {}

    def __getitem__(self, draw: int) -> Prompt:
        passes, index = divmod(draw, len(self.questions))
        if passes not in self._orders:
            order = list(range(len(self.questions)))
            random.Random(f"{self.seed}/{passes}").shuffle(order)
            self._orders[passes] = order
        question = self.questions[self._orders[passes][index]]
        return Prompt(question, tuple(self.gold.get(question.question, ())), draw)


def rollout_seed(seed: int, draw: int, n: int) -> int:
    """The seed of the first of the n rollouts of the `draw`-th prompt (the others follow it)."""
    return seed * _SEED_SPACING + draw * n


def total_steps(max_steps: int | None, questions: int, prompts_per_step: int) -> int:
    """`max_steps`, or one pass over the questions."""
    return max_steps if max_steps is not None else math.ceil(questions / prompts_per_step)


def check_micro_batch(micro_batch: int) -> None:
    if micro_batch < 1:
        raise BadInputError(f"micro batch {micro_batch} is below 1; give a positive number of sequences.")


def check_out_folder(out: Path, model: Path, kind: str) -> Path:
    """`out` as a folder for a `kind` run: not the model folder, and not holding another kind's checkpoint."""
    out = output_folder(out, model)
    state = out / CHECKPOINT / _STATE
    if state.is_file():
        found = json.loads(state.read_text(encoding="utf-8")).get("kind")
        if found != kind:
            raise BadInputError(f"--out {out} holds a {found} checkpoint, not a {kind} one; give another folder or "
                                f"remove {out / CHECKPOINT}.")
    return out


class PolicyTrainer:
    """The policy being trained (a LocalPolicy, which the rollouts sample from), its AdamW optimiser and learning-rate
    schedule (linear warm-up over `warmup_steps`, then constant), and the OUT folder's metrics and checkpoints.

    Creating it resumes from OUT's checkpoint when there is one (`resumed_from` is then its step).
    """

    def __init__(self, kind: str, model: Path, out: Path, *, sampling: RolloutSampling, learning_rate: float,
                 weight_decay: float, max_grad_norm: float, freeze_vision: bool, settings: Any, warmup_steps: int = 0,
                 device: str = "auto"):
        import torch

        self.kind, self.source, self.out = kind, Path(model), Path(out)
        self.settings, self.max_grad_norm = settings, max_grad_norm
        self.policy = LocalPolicy.from_folder(model, sampling, device=device)
        network = self.policy.model
        if freeze_vision:  # SPEC §4: vision tower frozen (the patch merger too: it belongs to the tower)
            network.model.visual.requires_grad_(False)
        self.parameters = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=learning_rate, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda done: min(1.0, (done + 1) / (warmup_steps + 1)))
        self.step = 0
        self.draws = 0
        self.metrics: list[dict] = []
        self.resumed_from = self._resume()

    @property
    def model(self):
        return self.policy.model

    @property
    def pad_id(self) -> int:
        pad = self.policy.tokenizer.pad_token_id
        return 0 if pad is None else pad

    # -- gradients ---------------------------------------------------------------------------------------------

    def apply_gradients(self, scale: float = 1.0) -> float:
        """Scale the accumulated gradients, clip them by global norm, take one AdamW step; the norm before clipping."""
        import torch

        for parameter in self.parameters:
            if parameter.grad is not None:
                parameter.grad.mul_(scale)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # -- metrics and checkpoints -------------------------------------------------------------------------------

    def record(self, metrics: dict) -> None:
        """Append one step's metrics to memory and to OUT/metrics.jsonl."""
        self.metrics.append(metrics)
        with open(self.out / METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")

    def checkpoint(self) -> None:
        """Write the resumable state atomically (module doc)."""
        import torch
        from safetensors.torch import save_model

        temp = self.out / f"{_TEMP_PREFIX}{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        save_model(self.model, str(temp / "model.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   temp / "optimizer.pt")
        torch.save({"torch": torch.random.get_rng_state(), "python": random.getstate()}, temp / "rng.pt")
        state = {"kind": self.kind, "step": self.step, "draws": self.draws, "source": str(self.source),
                 "settings": _jsonable(self.settings), "metrics": self.metrics}
        (temp / _STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")  # last: it marks completeness
        final, old = self.out / CHECKPOINT, self.out / _OLD
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        temp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _resume(self) -> int | None:
        import torch
        from safetensors.torch import load_model

        self.out.mkdir(parents=True, exist_ok=True)
        for leftover in self.out.glob(f"{_TEMP_PREFIX}*"):  # a kill while writing: never loaded
            shutil.rmtree(leftover, ignore_errors=True)
        final, old = self.out / CHECKPOINT, self.out / _OLD
        if not (final / _STATE).is_file() and (old / _STATE).is_file():  # a kill between the two renames
            shutil.rmtree(final, ignore_errors=True)
            old.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        if not (final / _STATE).is_file():
            self._write_metrics([])
            return None
        state = json.loads((final / _STATE).read_text(encoding="utf-8"))
        load_model(self.model, str(final / "model.safetensors"), device=str(self.model.device))
        saved = torch.load(final / "optimizer.pt", map_location=self.model.device, weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        rng = torch.load(final / "rng.pt", weights_only=False)
        torch.random.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.step, self.draws, self.metrics = state["step"], state["draws"], state["metrics"]
        self._write_metrics(self.metrics)
        return self.step

    def _write_metrics(self, lines: list[dict]) -> None:
        temp = self.out / f"{METRICS}.tmp"
        temp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        temp.replace(self.out / METRICS)

    def save_model(self) -> None:
        """The trained model in OUT, as SFT saves it (weights, tokenizer, the source's serving files)."""
        save_servable(self.model, self.policy.tokenizer, self.source, self.out)


def run_steps(trainer: PolicyTrainer, total: int, one_step: Callable[[PolicyTrainer], dict], *, save_steps: int,
              progress: bool = True) -> RLResult:
    """Run optimiser steps trainer.step+1 .. total (`one_step` draws, rolls out, updates and returns the step's
    metrics), recording each, checkpointing every `save_steps` and at the end, then save the model."""
    from tqdm import tqdm

    tty = progress and sys.stderr.isatty()
    bar = tqdm(total=total, initial=min(trainer.step, total), desc=trainer.kind, unit="step", disable=not tty)
    with bar:
        while trainer.step < total:
            started = time.perf_counter()
            metrics = one_step(trainer)
            trainer.step += 1
            metrics = {"step": trainer.step, **metrics, "seconds": round(time.perf_counter() - started, 3)}
            trainer.record(metrics)
            if trainer.step % save_steps == 0 or trainer.step == total:
                trainer.checkpoint()
            loss = "-" if metrics.get("loss") is None else f"{metrics['loss']:.4f}"
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=loss)
            bar.update(1)
            if progress and not tty:  # piped: one line a step instead of the bar
                print(f"{trainer.kind} step {trainer.step}/{total}: reward_mean {metrics['reward_mean']:.4f}, "
                      f"loss {loss}", file=sys.stderr)
    trainer.save_model()
    return RLResult(trainer.out, trainer.step, trainer.resumed_from, list(trainer.metrics))


def micro_batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def accumulate(trainer: PolicyTrainer, items: Sequence[Any], sequence: Callable[[Any], TrainingSequence],
               loss: Callable[[Sequence[Any], dict, Any], Any], *, micro_batch: int) -> None:
    """Backward `loss(chunk, batch, logp)` for each micro-batch of `items`: `batch` is the chunk's sequences collated
    (B, L), `logp` the current model's log-probs of their sampled tokens (B, L). Each loss must already be
    normalised over the whole batch (a sum over the chunk's tokens divided by the batch's count), so the gradients
    summed over the chunks are those of the whole batch's loss."""
    for chunk in micro_batches(items, micro_batch):
        batch = collate([sequence(item) for item in chunk], trainer.pad_id)
        logp = sequence_logprobs(trainer.model, batch)  # (B, L)
        loss(chunk, batch, logp).backward()


def pad_to(rows: Sequence[Any], length: int) -> Any:
    """Tensors (..., L_i) right-padded with 0 to (..., length) and stacked."""
    import torch

    return torch.stack([torch.nn.functional.pad(row, (0, length - row.shape[-1])) for row in rows])


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _jsonable(settings: Any) -> dict:
    try:
        return asdict(settings)
    except TypeError:
        return {}
