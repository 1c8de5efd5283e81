"""The RS-GRPO training loop (EVisRAG's Reward-Scoped GRPO, SPEC §4) over the evisrag protocol (SPEC §2).

Per optimiser step:
1. Draw prompts from the question file and roll each out n times through the agent graph (`rollout_group`) with
   protocol "evisrag": the graph retrieves the question's pages and the policy (a LocalPolicy over the model being
   trained) answers once over them, as `pagelens ask --protocol evisrag` would.
2. Score each reply with the six EVisRAG rewards (`evisrag_rewards`, SPEC §3) against a ground truth built from
   the question's gold answer and gold pages (`evisrag_ground_truth`).
3. Online filter (SPEC §4, `settings.online_filter`): keep a prompt group only if its mean `overall` lies in
   (filter_low, filter_high), drawing more prompts until `prompts_per_step` groups are kept or
   `draw_rounds × prompts_per_step` were drawn; then train on what was kept (none kept: the step logs its rewards
   and takes no optimiser step).
4. Advantages per reward column and group (`group_advantages`), scopes per reply (`reward_scopes` on its sampled
   ids), log-probs recomputed (`sequence_logprobs`), the scoped loss (`reward_losses`, combined as `policy_loss`
   does), AdamW with gradient clipping; one optimiser step per rollout batch, `ppo_epochs` > 1 re-using the batch
   with the sampling log-probs as old_logp.

Deviations and choices:
- Ground truth. EVisRAG's rewards compare a reply with a gold tagged response. pagelens question files give answers
  and gold pages, not a tagged response, so the gold is `<observe></observe><evidence>[i]: …</evidence><think>
  </think><answer>A</answer>` where A is the question's first answer and, for each image i the rollout showed, the
  slot reads A when the image is a gold page and `no relevant information` otherwise (an unanswerable question's
  slots all read so, and A is `insufficient to answer`). Only the gold's `<evidence>` and `<answer>` are read by the
  rewards. A short A (under 5 words) scores as a substring of the reply's slot, so a slot that states the answer
  on a gold page, or says `no relevant information` elsewhere, scores.
- Micro-batches: the batch's sequences go through the model `micro_batch` at a time; each reward's loss is still
  the token mean over its scope in the whole batch (each chunk's scoped sum divided by the batch's scope count), and
  the count of non-zero rewards that divides the sum is taken over the whole batch, after every chunk's backward,
  by scaling the accumulated gradients (the reference decides it per micro-batch).
- `reward_mean` and the per-reward means in metrics.jsonl are over every reply drawn in the step, kept or not, so
  the curve shows what the policy did; `kept_groups` says how many groups were trained on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from pagelens.graph.build import Agent
from pagelens.graph.settings import AgentSettings
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.search import Retriever
from pagelens.training.evaluate import gold_page_ids, read_questions
from pagelens.training.loop import (
    PolicyTrainer,
    Prompt,
    QuestionStream,
    RLResult,
    accumulate,
    check_micro_batch,
    check_out_folder,
    mean,
    pad_to,
    rollout_seed,
    run_steps,
    total_steps,
)
from pagelens.training.rewards import NO_RELEVANT_INFORMATION, REWARD_KEYS, evisrag_rewards
from pagelens.training.rollout import Rollout, RolloutSampling, TrainingSequence, rollout_group, training_sequences
from pagelens.training.rsgrpo import combine_reward_losses, fill_batch, group_advantages, reward_losses
from pagelens.training.scopes import reward_scopes
from pagelens.training.settings import RSGRPOSettings
from pagelens.training.sft import check_model_folder

KIND = "rsgrpo"


@dataclass
class ScoredGroup:
    """One prompt's n rollouts and each reply's SPEC §3 rewards (REWARD_KEYS and `overall`)."""

    prompt: Prompt
    rollouts: list[Rollout]
    rewards: list[dict[str, float]]

    @property
    def overall(self) -> list[float]:
        return [reward["overall"] for reward in self.rewards]


def evisrag_ground_truth(prompt: Prompt, shown_pages: list[str]) -> str:
    """The gold tagged response for a reply over images showing `shown_pages` (in order); see the module doc."""
    answer = prompt.gold_answers[0]
    gold = set(prompt.gold_pages) if prompt.question.is_sufficient else set()
    lines = [f"[{i}]: {answer if page in gold else NO_RELEVANT_INFORMATION}" for i, page in enumerate(shown_pages, 1)]
    evidence = "\n".join(lines)
    return f"<observe></observe><evidence>{evidence}</evidence><think></think><answer>{answer}</answer>"


def score_rollout(prompt: Prompt, rollout: Rollout) -> dict[str, float]:
    """SPEC §3 EVisRAG rewards of a one-shot evisrag rollout (its reply: the last turn; no turn scores as empty)."""
    turn = rollout.turns[-1] if rollout.turns else None
    pages = [image.page_id for image in rollout.result.images]
    return evisrag_rewards(turn.text if turn else "", evisrag_ground_truth(prompt, pages),
                           len(turn.sampled_ids) if turn else 0)


def sequence_scopes(rollout: Rollout, sequence: TrainingSequence, tokenizer, mode: str):
    """SPEC §4 scopes of the sequence's replies placed on its sampled positions: bool [R, L]."""
    import torch

    scopes = torch.cat([reward_scopes(rollout.turns[k].sampled_ids, tokenizer, mode=mode)
                        for k in sequence.turns], dim=1)  # [R, sampled tokens]
    placed = torch.zeros(scopes.shape[0], len(sequence.input_ids), dtype=torch.bool)  # [R, L]
    placed[:, sequence.loss_mask.bool()] = scopes
    return placed


def train_rsgrpo(model: Path, questions: Path, out: Path, settings: RSGRPOSettings = RSGRPOSettings(), *,
                 store: PageStore, agent_settings: AgentSettings | None = None, progress: bool = True,
                 device: str = "auto", micro_batch: int = 8) -> RLResult:
    """Train the Qwen2.5-VL checkpoint `model` with RS-GRPO on the questions of `questions` (a JSONL file as `pagelens
    eval` reads) over the pages of `store`; write metrics, checkpoints and the trained model to `out`.

    Rerunning with the same `out` resumes from its checkpoint (module doc of training/loop.py). `agent_settings`
    (protocol forced to evisrag) sets retrieval depth and image limits; `micro_batch` sequences go through the model
    at once.
    """
    folder = check_model_folder(model)
    listed = read_questions(Path(questions))
    gold = gold_page_ids(listed, store, Path(questions))
    out = check_out_folder(out, folder, KIND)
    check_micro_batch(micro_batch)
    agent_settings = replace(agent_settings or AgentSettings(), protocol="evisrag")
    trainer = PolicyTrainer(
        KIND, folder, out, sampling=RolloutSampling(settings.temperature, settings.max_response_tokens),
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, freeze_vision=settings.freeze_vision, settings=settings, device=device)
    agent = Agent(store, trainer.policy, agent_settings, retriever=Retriever(store))
    stream = QuestionStream(listed, gold, settings.seed)
    total = total_steps(settings.max_steps, len(listed), settings.prompts_per_step)
    return run_steps(trainer, total, lambda t: _step(t, agent, stream, settings, micro_batch),
                     save_steps=settings.save_steps, progress=progress)


def _step(trainer: PolicyTrainer, agent: Agent, stream: QuestionStream, settings: RSGRPOSettings,
          micro_batch: int) -> dict:
    drawn: list[ScoredGroup] = []

    def groups() -> Iterator[ScoredGroup]:
        while True:
            prompt = stream[trainer.draws]
            trainer.draws += 1
            rollouts = rollout_group(agent, prompt.question.question, settings.n,
                                     seed=rollout_seed(settings.seed, prompt.draw, settings.n))
            group = ScoredGroup(prompt, rollouts, [score_rollout(prompt, r) for r in rollouts])
            drawn.append(group)
            yield group

    if settings.online_filter:  # SPEC §4 online filtering, bounded resampling
        kept, _ = fill_batch(groups(), lambda g: g.overall, size=settings.prompts_per_step,
                             max_draws=settings.max_draws, low=settings.filter_low, high=settings.filter_high)
    else:
        kept = list(itertools.islice(groups(), settings.prompts_per_step))
    replies = [reward for group in drawn for reward in group.rewards]
    metrics: dict = {"reward_mean": mean([r["overall"] for r in replies])}
    metrics.update({key: mean([r[key] for r in replies]) for key in REWARD_KEYS})
    metrics.update(kept_groups=len(kept), drawn_groups=len(drawn), loss=None)
    if kept:
        metrics.update(_update(trainer, kept, settings, micro_batch))
    return metrics


def _update(trainer: PolicyTrainer, kept: list[ScoredGroup], settings: RSGRPOSettings, micro_batch: int) -> dict:
    """Advantages, scopes and `ppo_epochs` optimiser steps on the kept groups; the first epoch's loss."""
    import torch

    rewards = torch.tensor([[reward[key] for key in REWARD_KEYS] for group in kept for reward in group.rewards])
    group_ids = [group.prompt.draw for group in kept for _ in group.rollouts]
    advantages = group_advantages(rewards, group_ids)  # [B, R], SPEC §4
    tokenizer = trainer.policy.tokenizer
    items = []  # (sequence, its reply's advantages [R], its scopes [R, L])
    for row, rollout in enumerate(rollout for group in kept for rollout in group.rollouts):
        for sequence in training_sequences(rollout):
            items.append((sequence, advantages[row], sequence_scopes(rollout, sequence, tokenizer,
                                                                     settings.scope_mode)))
    if not items:
        return {"loss": None}
    counts = torch.stack([scopes.sum(-1) for _, _, scopes in items]).sum(0).clamp(min=1)  # [R] scope tokens in batch
    reported = None
    for _ in range(settings.ppo_epochs):
        per_reward = torch.zeros(len(REWARD_KEYS))  # [R] the batch's per-reward losses, accumulated

        def loss(chunk, batch, logp):
            masks = pad_to([scopes for _, _, scopes in chunk], logp.shape[-1]).to(logp.device)  # [B, R, L]
            chunk_advantages = torch.stack([a for _, a, _ in chunk]).to(logp.device)  # [B, R]
            means = reward_losses(logp, batch["old_logp"].to(logp.device), chunk_advantages, masks,
                                  clip_low=settings.clip_low, clip_high=settings.clip_high,
                                  dual_clip=settings.dual_clip)  # [R] token means over the chunk's scopes
            # the chunk's share of SPEC §4's token mean over the whole batch's scope, per reward
            shares = means * masks.sum(dim=(0, 2)).to(means.dtype) / counts.to(means.device, means.dtype)
            per_reward.add_(shares.detach().cpu())
            return shares.sum()

        accumulate(trainer, items, lambda item: item[0], loss, micro_batch=micro_batch)
        counted = int((per_reward != 0).sum().clamp(min=1))  # SPEC §4: mean over the non-zero rewards
        norm = trainer.apply_gradients(scale=1.0 / counted)
        if reported is None:
            reported = {"loss": float(combine_reward_losses(per_reward)), "grad_norm": norm}
    return reported
