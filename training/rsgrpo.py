"""RS-GRPO, EVisRAG's Reward-Scoped GRPO (SPEC §4): group advantages per reward, the scoped clipped loss, and the
online filter of prompt groups. Pure functions on tensors; the training loop composes them.

GRPO normalises one scalar reward within each group of rollouts of a prompt. RS-GRPO keeps the six EVisRAG rewards
(SPEC §3) apart: each column gets its own group z-score, and each reward's clipped loss is averaged only over the
tokens of its scope (pagelens.training.scopes), so a token's gradient sums the advantages of every scope covering
it. Shapes: B replies, R reward columns, L response tokens (padded; padding lies outside every scope).

Matches OpenBMB/VisRAG's RS-GRPO to 1e-6 (tests/data/vectors/rsgrpo.json), with these deviations:
- the final loss is the sum of the per-reward losses over the number of non-zero ones; when all are zero the
  reference divides 0/0 and yields nan, here it divides by 1 (0, still attached to the graph, so backward runs);
- a reward whose scope is empty in the batch has loss 0 (the reference's `+1e-8` denominator, written as a
  count of at least 1), so it drops out of the mean rather than making it nan;
- the non-zero rewards are chosen over the tensors given; the reference chooses them per micro-batch;
- advantages are computed in float64 and returned in the rewards' dtype, so a column whose values are all equal
  in a group gets advantage 0 rather than float32 rounding divided by 1e-6.
Like the reference, a group needs at least two rollouts (the unbiased std of one value is undefined; the
reference asserts), and with one optimiser step per rollout batch the ratio is 1, so clip and dual clip bind only
from the second PPO epoch on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

import torch

from pagelens.errors import BadInputError

# SPEC §4: A = (r − mean) / (std + 1e-6).
ADVANTAGE_EPS = 1e-6
# The reference clamps the log-ratio before exp, so a ratio never overflows into inf·0 = nan outside a scope.
LOG_RATIO_LIMIT = 20.0
Group = TypeVar("Group")


def group_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable]) -> torch.Tensor:
    """SPEC §4 advantages: each reward column z-scored within each group of rollouts of the same prompt.

    rewards [B, R], group_ids [B] (equal ids share a prompt) -> advantages [B, R]. Every group needs at least
    two rollouts.
    """
    if rewards.dim() != 2 or rewards.shape[0] != len(group_ids):
        raise BadInputError(f"rewards of shape {tuple(rewards.shape)} do not fit {len(group_ids)} group ids; "
                            f"give one row of reward columns per reply.")
    members: dict[Hashable, list[int]] = {}
    for row, group in enumerate(group_ids):
        members.setdefault(group, []).append(row)
    scores = rewards.double()  # [B, R]
    advantages = torch.zeros_like(scores)  # [B, R]
    for group, rows in members.items():
        if len(rows) < 2:
            raise BadInputError(f"group {group!r} has one rollout, and a z-score needs at least two; sample n >= 2 "
                                f"rollouts per prompt.")
        index = torch.tensor(rows)
        values = scores[index]  # [n, R]
        # SPEC §4: A_ij = (r_ij − mean_j) / (std_j + 1e-6), std unbiased, per column within the group.
        advantages[index] = (values - values.mean(0)) / (values.std(0, unbiased=True) + ADVANTAGE_EPS)
    return advantages.to(rewards.dtype)


def reward_losses(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, masks: torch.Tensor, *,
                  clip_low: float, clip_high: float, dual_clip: float) -> torch.Tensor:
    """SPEC §4 per-reward losses: the clipped, dual-clipped token loss, averaged over each reward's scope.

    logp, old_logp [B, L] (the policy's and the sampler's log-probs of the sampled tokens), advantages [B, R],
    masks [B, R, L] (each reply's scopes) -> [R].
    """
    if masks.dim() != 3 or masks.shape != (*advantages.shape, logp.shape[-1]) or logp.shape != old_logp.shape:
        raise BadInputError(f"shapes do not fit: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, "
                            f"advantages {tuple(advantages.shape)}, masks {tuple(masks.shape)}; give [B, L], [B, L], "
                            f"[B, R] and [B, R, L].")
    masks = masks.to(logp.dtype)  # [B, R, L]
    scoped = advantages.to(logp.dtype).unsqueeze(-1) * masks  # [B, R, L]: A inside each scope, 0 outside
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).unsqueeze(1)  # [B, 1, L]
    ratio = log_ratio.exp()  # [B, 1, L]: ρ = exp(logp − old_logp)
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)  # [B, 1, L]
    # SPEC §4: l = −min(ρ·A, clip(ρ, 1 − clip_low, 1 + clip_high)·A)
    loss = torch.maximum(-scoped * ratio, -scoped * clipped_ratio)  # [B, R, L]
    # SPEC §4 dual clip: for A < 0, l = min(l, −c·A)
    loss = torch.where(scoped < 0, torch.minimum(loss, -dual_clip * scoped), loss)  # [B, R, L]
    # SPEC §4: per reward, the token mean over its scope in the batch (an empty scope gives 0).
    return (loss * masks).sum(dim=(0, 2)) / masks.sum(dim=(0, 2)).clamp(min=1)  # [R]


def combine_reward_losses(per_reward: torch.Tensor) -> torch.Tensor:
    """SPEC §4 final loss: the mean of the non-zero per-reward losses [R] -> []; 0 when all are zero."""
    counted = (per_reward != 0).sum()
    # The reference divides by the count unguarded (0/0 = nan when every reward's loss is zero).
    return per_reward.sum() / counted.clamp(min=1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, masks: torch.Tensor, *,
                clip_low: float, clip_high: float, dual_clip: float) -> torch.Tensor:
    """SPEC §4 RS-GRPO loss, a scalar to minimise: `combine_reward_losses(reward_losses(...))`.

    logp, old_logp [B, L], advantages [B, R], masks [B, R, L] -> [].
    """
    per_reward = reward_losses(logp, old_logp, advantages, masks, clip_low=clip_low, clip_high=clip_high,
                               dual_clip=dual_clip)
    return combine_reward_losses(per_reward)


def keep_group(overall: Sequence[float], *, low: float, high: float) -> bool:
    """SPEC §4 online filtering: keep a prompt group only if the mean of its replies' `overall` lies in (low, high).

    The bounds drop the groups whose replies nearly all fail or nearly all score the maximum 7: their rewards
    barely vary, so they teach little.

    >>> keep_group([0.0, 0.0, 0.0], low=0.01, high=6.9), keep_group([0.0, 7.0], low=0.01, high=6.9)
    (False, True)
    """
    if not overall:
        raise BadInputError("a prompt group has no replies; sample at least two rollouts per prompt.")
    return low < math.fsum(overall) / len(overall) < high


def fill_batch(groups: Iterable[Group], overall: Callable[[Group], Sequence[float]], *, size: int,
               max_draws: int, low: float, high: float) -> tuple[list[Group], int]:
    """SPEC §4 bounded resampling: draw groups until `size` pass `keep_group` or `max_draws` were drawn.

    `groups` is lazy (each draw may roll a prompt out); `overall(group)` gives its replies' `overall` rewards.
    Returns the kept groups (at most `size`, fewer when the draws ran out) and how many were drawn. The reference
    raises after its last draw; here the caller decides what a short batch means.
    """
    kept: list[Group] = []
    drawn = 0
    for group in itertools.islice(groups, max_draws):
        drawn += 1
        if keep_group(overall(group), low=low, high=high):
            kept.append(group)
            if len(kept) == size:
                break
    return kept, drawn
