"""SPEC §4 RS-GRPO against the reference's own values, its gradient at ratio 1, the clips, the online filter, and
the RS-GRPO / GRPO settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pagelens.errors import BadInputError
from pagelens.training.rsgrpo import (
    combine_reward_losses,
    fill_batch,
    group_advantages,
    keep_group,
    policy_loss,
    reward_losses,
)
from pagelens.training.settings import GRPOSettings, RSGRPOSettings

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "data" / "vectors" / "rsgrpo.json").read_text())
CLIPS = {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": 3.0}


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_the_vectors_are_all_there():
    assert len(VECTORS) == 30


@pytest.mark.parametrize("case", VECTORS, ids=[f"rsgrpo-{i}" for i in range(len(VECTORS))])
def test_advantages_and_losses_match_the_reference(case):
    reference = case["reference"]
    clips = {key: case[key] for key in CLIPS}
    advantages = group_advantages(f64(case["rewards"]), case["group_ids"])
    assert advantages.numpy() == pytest.approx(f64(reference["advantages"]).numpy(), abs=1e-6)
    logp, old_logp, masks = f64(case["logp"]), f64(case["old_logp"]), f64(case["masks"])
    per_reward = reward_losses(logp, old_logp, advantages, masks, **clips)
    assert per_reward.numpy() == pytest.approx(reference["per_reward_loss"], abs=1e-6)
    loss = policy_loss(logp, old_logp, advantages, masks, **clips)
    assert loss.dim() == 0 and loss.item() == pytest.approx(reference["loss"], abs=1e-6)


def test_each_token_s_gradient_sums_the_advantages_of_the_scopes_covering_it():
    generator = torch.Generator().manual_seed(0)
    batch, rewards, length = 6, 6, 12
    advantages = group_advantages(torch.rand(batch, rewards, generator=generator, dtype=torch.float64),
                                  ["p0"] * 3 + ["p1"] * 3)
    masks = torch.rand(batch, rewards, length, generator=generator) < 0.6  # [B, R, L]
    logp = torch.randn(batch, length, generator=generator, dtype=torch.float64).requires_grad_()
    per_reward = reward_losses(logp, logp.detach(), advantages, masks, **CLIPS)  # ratio 1
    combine_reward_losses(per_reward).backward()

    # At ratio 1 the clips do not bind, so per reward j the loss is −Σ_{b,t in scope j} ρ_bt·A_bj / N_j, N_j the
    # tokens of scope j in the batch, and the final loss is the sum over the rewards divided by K, the number of
    # non-zero ones (a count, not differentiated):
    # ∂loss/∂logp_bt = −(1/K) Σ_{j: t in scope j of b} A_bj / N_j.
    tokens = masks.sum(dim=(0, 2)).double()  # [R]: N_j
    counted = int((per_reward.detach() != 0).sum())
    assert counted == rewards
    weights = 1 / (tokens * counted)  # [R]: 1 / (K·N_j)
    expected = -(advantages.unsqueeze(-1) * masks * weights[None, :, None]).sum(1)  # [B, L]
    assert logp.grad.numpy() == pytest.approx(expected.numpy(), abs=1e-12)

    # With equal token counts the normalisation is one constant: the gradient is −(sum of covering advantages)/(K·N).
    masks = torch.zeros(2, rewards, 4, dtype=torch.bool)
    masks[0, :3, :2] = masks[1, :3, 2:] = masks[0, 3:, 2:] = masks[1, 3:, :2] = True  # every N_j = 4
    advantages = f64([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2.0, -1.0, 0.5, 1.0, -2.0, 3.0]])
    logp = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    policy_loss(logp, logp.detach(), advantages, masks, **CLIPS).backward()
    covering = (advantages.unsqueeze(-1) * masks).sum(1)  # [B, L]: token (0, 0) sums A_00 + A_01 + A_02 = 6
    assert covering[0, 0] == 6.0 and covering[0, 3] == 15.0 and covering[1, 0] == 2.0
    assert logp.grad.numpy() == pytest.approx((-covering / (6 * 4)).numpy(), abs=1e-12)


def one_token_loss(ratio: float, advantage: float) -> tuple[float, float]:
    """The loss and its gradient for one in-scope token with this ratio and advantage."""
    logp = torch.tensor([[torch.log(torch.tensor(ratio)).item()]], dtype=torch.float64, requires_grad=True)
    masks = torch.ones(1, 1, 1, dtype=torch.bool)
    loss = policy_loss(logp, torch.zeros(1, 1, dtype=torch.float64), f64([[advantage]]), masks, **CLIPS)
    loss.backward()
    return loss.item(), logp.grad.item()


@pytest.mark.parametrize(("ratio", "advantage", "expected_loss", "gradient_flows"), [
    (10.0, -1.0, 3.0, False),  # dual clip binds: −ρA = 10 is capped at −c·A = 3
    (2.0, -1.0, 2.0, True),  # under the cap, the unclipped −ρA = 2 holds (its gradient flows)
    (0.1, -1.0, 0.8, False),  # far below on a negative advantage: the lower clip binds at (1 − 0.2)·|A|
    (10.0, 1.0, -1.28, False),  # far above on a positive advantage: the upper clip binds at −(1 + 0.28)·A
    (0.1, 1.0, -0.1, True),  # far below on a positive advantage: unclipped
])
def test_the_clips_bind_where_spec_says(ratio, advantage, expected_loss, gradient_flows):
    loss, gradient = one_token_loss(ratio, advantage)
    assert loss == pytest.approx(expected_loss)
    assert (gradient != 0) == gradient_flows


def test_an_overflowing_ratio_outside_every_scope_gives_no_nan():
    logp = f64([[0.0, 500.0]]).requires_grad_()
    masks = torch.tensor([[[True, False]]])
    loss = policy_loss(logp, torch.zeros(1, 2, dtype=torch.float64), f64([[-1.0]]), masks, **CLIPS)
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(logp.grad).all()


def test_all_zero_losses_give_zero_with_the_graph_intact():
    logp = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    # Each column equal within its group: every advantage is 0, so every per-reward loss is 0 (the reference: 0/0).
    advantages = group_advantages(f64([[1.0, 0.0]] * 4), ["a", "a", "b", "b"])
    assert advantages.abs().max() == 0
    loss = policy_loss(logp, logp.detach() - 0.1, advantages, torch.ones(4, 2, 5, dtype=torch.bool), **CLIPS)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logp.grad.abs().max() == 0
    # Otherwise the mean is over the non-zero rewards only.
    assert combine_reward_losses(f64([0.0, 2.0, 0.0, 4.0])).item() == 3.0


def test_an_empty_scope_drops_out_of_the_mean():
    masks = torch.zeros(2, 2, 3, dtype=torch.bool)
    masks[:, 0] = True  # reward 1 has no token anywhere in the batch
    logp = torch.zeros(2, 3, dtype=torch.float64)
    per_reward = reward_losses(logp, logp, f64([[1.0, 1.0], [-1.0, 3.0]]), masks, **CLIPS)
    assert per_reward.tolist() == [0.0, 0.0]


def test_group_advantages_need_two_rollouts_and_keep_the_dtype():
    with pytest.raises(BadInputError, match="group 'p1' has one rollout"):
        group_advantages(torch.rand(3, 6), ["p0", "p0", "p1"])
    with pytest.raises(BadInputError, match="do not fit"):
        group_advantages(torch.rand(3, 6), ["p0", "p0"])
    rewards = torch.tensor([[0.1, 1.0], [0.1, 3.0], [0.1, 2.0]], dtype=torch.float32)
    advantages = group_advantages(rewards, [7, 7, 7])
    assert advantages.dtype == torch.float32
    # A constant column gets exactly 0 (float32 would leave rounding / 1e-6); unbiased std of (1, 3, 2) is 1.
    assert advantages[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert advantages[:, 1].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-5)
    # Groups may interleave: rows are grouped by id, not by position.
    interleaved = group_advantages(f64([[1.0], [10.0], [3.0], [30.0]]), ["a", "b", "a", "b"])
    assert interleaved.flatten().tolist() == pytest.approx([-0.7071, -0.7071, 0.7071, 0.7071], abs=1e-4)


def test_keep_group_bounds_are_exclusive():
    assert keep_group([0.01, 0.01], low=0.01, high=6.9) is False
    assert keep_group([0.0, 0.04], low=0.01, high=6.9) is True
    assert keep_group([6.9, 6.9], low=0.01, high=6.9) is False
    assert keep_group([-1.0, -1.0, 3.0], low=0.01, high=6.9) is True
    with pytest.raises(BadInputError, match="no replies"):
        keep_group([], low=0.01, high=6.9)


def test_fill_batch_stops_when_full_or_after_its_draws_and_draws_lazily():
    means = [0.0, 3.0, 7.0, 2.0, 4.0, 5.0]
    pulled = []

    def groups():
        for number, mean in enumerate(means):
            pulled.append(number)
            yield {"id": number, "overall": [mean, mean]}

    kept, drawn = fill_batch(groups(), lambda group: group["overall"], size=2, max_draws=10, low=0.01, high=6.9)
    assert [group["id"] for group in kept] == [1, 3] and drawn == 4 and pulled == [0, 1, 2, 3]
    pulled.clear()
    kept, drawn = fill_batch(groups(), lambda group: group["overall"], size=5, max_draws=3, low=0.01, high=6.9)
    assert [group["id"] for group in kept] == [1] and drawn == 3 and pulled == [0, 1, 2]
    kept, drawn = fill_batch(groups(), lambda group: group["overall"], size=9, max_draws=99, low=0.01, high=6.9)
    assert len(kept) == 4 and drawn == 6


def test_settings_defaults_are_spec_s():
    rsgrpo = RSGRPOSettings()
    assert (rsgrpo.learning_rate, rsgrpo.weight_decay, rsgrpo.max_grad_norm, rsgrpo.n, rsgrpo.temperature) == (
        1e-6, 0.01, 1.0, 8, 1.0)
    assert (rsgrpo.max_response_tokens, rsgrpo.prompts_per_step, rsgrpo.ppo_epochs) == (1536, 32, 1)
    assert (rsgrpo.clip_low, rsgrpo.clip_high, rsgrpo.dual_clip) == (0.2, 0.28, 3.0)
    assert (rsgrpo.filter_low, rsgrpo.filter_high, rsgrpo.freeze_vision) == (0.01, 6.9, True)
    assert rsgrpo.max_draws == 4 * 32
    grpo = GRPOSettings()
    assert (grpo.n, grpo.learning_rate, grpo.kl_coef, grpo.max_turns) == (5, 1e-6, 0.01, 4)


@pytest.mark.parametrize(("settings", "changes", "words"), [
    (RSGRPOSettings, {"n": 1}, "n=1 rollouts"),
    (RSGRPOSettings, {"learning_rate": 0.0}, "learning rate"),
    (RSGRPOSettings, {"clip_low": 1.0}, "clip_low=1.0"),
    (RSGRPOSettings, {"dual_clip": 1.0}, "dual_clip=1.0"),
    (RSGRPOSettings, {"filter_low": 7.0}, "filter bounds"),
    (RSGRPOSettings, {"scope_mode": "tokens"}, "scope mode"),
    (RSGRPOSettings, {"prompts_per_step": 0}, "prompts per step"),
    (RSGRPOSettings, {"max_steps": 0}, "max steps"),
    (GRPOSettings, {"n": 1}, "give for example 5"),
    (GRPOSettings, {"kl_coef": -0.1}, "kl_coef"),
    (GRPOSettings, {"clip_ratio": 0.0}, "clip_ratio"),
    (GRPOSettings, {"max_turns": 0}, "max_turns"),
    (GRPOSettings, {"weight_decay": -1.0}, "weight decay"),
])
def test_settings_refuse_bad_values_naming_them(settings, changes, words):
    with pytest.raises(BadInputError, match=words):
        settings(**changes)


def test_the_docstring_examples_hold():
    import doctest

    from pagelens.training import rsgrpo

    result = doctest.testmod(rsgrpo)
    assert result.attempted > 0 and result.failed == 0
