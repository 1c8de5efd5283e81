"""The multi-turn GRPO training loop of VRAG-RL (SPEC §3 reward, SPEC §4), over the vrag or pagelens protocol.

Per optimiser step: draw `prompts_per_step` prompts and roll each out n times through the agent graph with a
LocalPolicy (search, crop, answer over up to `max_turns` action turns, then one call told to answer now); score
each rollout with SPEC §3's composite reward `vrag_reward(format, judge, ndcg)`: format over every assistant turn
of the trajectory, the judge (training/judge.py, per JudgeSettings: the offline rule by default, an LLM endpoint
on request) on the graph's final answer against each gold answer (the best verdict counts; no answer scores 0),
nDCG of the pages shown against the gold pages. The GRPO advantage is the group z-score of that one scalar
(`group_advantages` with one column), placed on every sampled token of the rollout's sequences; the observation
tokens (user text, images) are outside the loss by construction (training/rollout.py). Loss: PPO-clip per token,
token mean over the batch, plus `kl_coef` × the low-variance KL (k3) to the frozen starting model, token mean.

Deviations: VRAG-RL puts the reward on the last response token and lets GAE-free GRPO broadcast the advantage over
the response; here the advantage is placed on every sampled token directly, which is the same thing. VRAG-RL
re-tokenises the trajectory; here the sampled ids are trained (SPEC §4). No online filter (VRAG-RL has none);
every drawn group is trained on (`kept_groups` = prompts drawn).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pagelens.errors import BadInputError
from pagelens.graph.build import Agent
from pagelens.graph.settings import AgentSettings
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.search import Retriever
from pagelens.training.evaluate import gold_page_ids, read_questions
from pagelens.training.judge import Judge, LLMJudge, make_judge
from pagelens.training.loop import (
    PolicyTrainer,
    Prompt,
    QuestionStream,
    RLResult,
    accumulate,
    check_micro_batch,
    check_out_folder,
    mean,
    rollout_seed,
    run_steps,
    total_steps,
)
from pagelens.training.rewards import ndcg, vrag_format, vrag_reward
from pagelens.training.rollout import Rollout, RolloutSampling, rollout_group, sequence_logprobs, training_sequences
from pagelens.training.rsgrpo import LOG_RATIO_LIMIT, group_advantages
from pagelens.training.settings import GRPOSettings, JudgeSettings
from pagelens.training.sft import check_model_folder

KIND = "grpo"
GRPO_PROTOCOLS = ("vrag", "pagelens")


def check_judge(settings: JudgeSettings) -> None:
    """An LLM judge's endpoint answers GET /v1/models (one try, no retries), or JudgeError naming it and the fix."""
    if settings.kind == "llm":
        probe = LLMJudge(replace(settings, retries=0, request_timeout=min(settings.request_timeout, 10.0)))
        probe.check()


def vrag_scores(prompt: Prompt, rollout: Rollout, judge: Judge) -> dict[str, float]:
    """SPEC §3 VRAG-RL reward of one rollout, with its terms: `reward`, `format`, `judge`, `ndcg`."""
    format_ok = vrag_format(rollout.response_text)
    answer = rollout.result.answer
    verdict = 0.0
    if format_ok and answer:  # the reward is 0 without the format: the judge is not asked
        question = prompt.question.question
        verdict = max(judge(question, gold, answer) for gold in prompt.gold_answers)
    relevance = ndcg(rollout.shown_pages, prompt.gold_pages)
    return {"reward": vrag_reward(format_ok, verdict, relevance), "format": format_ok, "judge": verdict,
            "ndcg": relevance}


def grpo_token_loss(logp, old_logp, advantages, mask, *, clip_ratio: float):
    """PPO-clip per token, summed (not averaged) over the masked tokens: logp, old_logp, mask (B, L), advantages (B,)
    -> []. The caller divides by the batch's token count."""
    import torch

    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # (B, L)
    ratio = log_ratio.exp()  # (B, L)
    scaled = advantages[:, None]  # (B, 1)
    loss = torch.maximum(-scaled * ratio, -scaled * ratio.clamp(1 - clip_ratio, 1 + clip_ratio))  # (B, L)
    return (loss * mask).sum()


def k3_kl(logp, ref_logp, mask):
    """Low-variance KL estimate to the reference, summed over the masked tokens: exp(r) − r − 1 with
    r = ref − logp; (B, L) -> []."""
    delta = (ref_logp - logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # (B, L)
    return ((delta.exp() - delta - 1) * mask).sum()


def train_grpo(model: Path, questions: Path, out: Path, settings: GRPOSettings = GRPOSettings(), *, store: PageStore,
               protocol: str = "vrag", judge: JudgeSettings = JudgeSettings(),
               agent_settings: AgentSettings | None = None, progress: bool = True, device: str = "auto",
               micro_batch: int = 8) -> RLResult:
    """Train the Qwen2.5-VL checkpoint `model` with VRAG-RL's multi-turn GRPO over `protocol` ("vrag" or
    "pagelens") on the questions of `questions` and the pages of `store`; write metrics, checkpoints and the model
    to `out` (rerunning resumes, as for RS-GRPO)."""
    if protocol not in GRPO_PROTOCOLS:
        raise BadInputError(f"protocol {protocol!r} cannot be trained with multi-turn GRPO; use vrag or pagelens "
                            f"(evisrag is one-shot: train it with rsgrpo).")
    folder = check_model_folder(model)
    listed = read_questions(Path(questions))
    gold = gold_page_ids(listed, store, Path(questions))
    out = check_out_folder(out, folder, KIND)
    check_micro_batch(micro_batch)
    check_judge(judge)
    scorer = make_judge(judge)
    agent_settings = replace(agent_settings or AgentSettings(), protocol=protocol, max_turns=settings.max_turns)
    trainer = PolicyTrainer(
        KIND, folder, out, sampling=RolloutSampling(settings.temperature, settings.max_response_tokens),
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, freeze_vision=settings.freeze_vision, settings=settings,
        warmup_steps=settings.warmup_steps, device=device)
    reference = _reference_model(trainer) if settings.kl_coef > 0 else None
    agent = Agent(store, trainer.policy, agent_settings, retriever=Retriever(store))
    stream = QuestionStream(listed, gold, settings.seed)
    total = total_steps(settings.max_steps, len(listed), settings.prompts_per_step)
    return run_steps(trainer, total, lambda t: _step(t, agent, stream, settings, scorer, reference, micro_batch),
                     save_steps=settings.save_steps, progress=progress)


def _reference_model(trainer: PolicyTrainer):
    """A frozen copy of the starting model (the source folder, whatever a resumed run has learnt since)."""
    from transformers import AutoModelForImageTextToText

    model = trainer.model
    reference = AutoModelForImageTextToText.from_pretrained(trainer.source, dtype=model.dtype, local_files_only=True)
    return reference.to(model.device).eval().requires_grad_(False)


def _step(trainer: PolicyTrainer, agent: Agent, stream: QuestionStream, settings: GRPOSettings, judge: Judge,
          reference, micro_batch: int) -> dict:
    import torch

    scored = []  # (prompt draw, rollout, scores)
    for _ in range(settings.prompts_per_step):
        prompt = stream[trainer.draws]
        trainer.draws += 1
        for rollout in rollout_group(agent, prompt.question.question, settings.n,
                                     seed=rollout_seed(settings.seed, prompt.draw, settings.n)):
            scored.append((prompt.draw, rollout, vrag_scores(prompt, rollout, judge)))
    metrics: dict = {"reward_mean": mean([s["reward"] for _, _, s in scored])}
    metrics.update({key: mean([s[key] for _, _, s in scored]) for key in ("format", "judge", "ndcg")})
    metrics.update(kept_groups=settings.prompts_per_step, loss=None)

    rewards = torch.tensor([[s["reward"] for _, _, s in scored]]).T  # [B, 1]
    advantages = group_advantages(rewards, [draw for draw, _, _ in scored])[:, 0]  # [B]: GRPO's group z-score
    items = [(sequence, advantages[row]) for row, (_, rollout, _) in enumerate(scored)
             for sequence in training_sequences(rollout)]
    if not items:
        return metrics
    tokens = max(1, sum(int(sequence.loss_mask.sum()) for sequence, _ in items))  # sampled tokens in the batch
    for epoch in range(settings.ppo_epochs):
        totals = {"policy": 0.0, "kl": 0.0}

        def loss(chunk, batch, logp):
            mask = batch["loss_mask"].to(logp.device, logp.dtype)  # (B, L)
            chunk_advantages = torch.stack([a for _, a in chunk]).to(logp.device, logp.dtype)  # (B,)
            policy = grpo_token_loss(logp, batch["old_logp"].to(logp.device), chunk_advantages, mask,
                                     clip_ratio=settings.clip_ratio) / tokens
            total = policy
            totals["policy"] += float(policy.detach())
            if reference is not None:
                with torch.no_grad():
                    ref_logp = sequence_logprobs(reference, batch)  # (B, L)
                kl = k3_kl(logp, ref_logp, mask) / tokens
                totals["kl"] += float(kl.detach())
                total = total + settings.kl_coef * kl
            return total

        accumulate(trainer, items, lambda item: item[0], loss, micro_batch=micro_batch)
        norm = trainer.apply_gradients()
        if epoch == 0:
            metrics.update(loss=totals["policy"] + settings.kl_coef * totals["kl"], policy_loss=totals["policy"],
                           kl=totals["kl"], grad_norm=norm)
    return metrics
