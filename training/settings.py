"""Training settings, one typed object per concern: the answer judge (SPEC §3), evaluation runs (SPEC §5), SFT,
RS-GRPO and multi-turn GRPO (SPEC §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pagelens.errors import BadInputError
from pagelens.tools.regions import MAX_PIXELS, MIN_PIXELS

JUDGES = ("offline", "llm")
OFFLINE_MATCHES = ("exact", "contains")


@dataclass(frozen=True)
class JudgeSettings:
    kind: str = "offline"
    """Who judges an answer against the reference (SPEC §3 VRAG-RL judge): "llm", a chat model at `url`, or
    "offline", a rule on the CPU (see `offline_match`)."""
    offline_match: str = "contains"
    """The offline rule: "exact" (normalised answer equals the normalised reference) or "contains" (every token of
    the normalised reference is in the answer, so extra information is accepted, as SPEC §3 allows)."""
    url: str = ""
    """Base URL (…/v1) of the OpenAI-compatible endpoint serving the judge model; required for kind "llm"."""
    model: str = ""
    """Judge model name sent to the endpoint; empty asks the endpoint (GET /v1/models) and takes the first."""
    api_key: str = ""
    """Bearer key for the endpoint; empty sends a placeholder, which local servers accept."""
    prompt: str = "vrag_judge"
    """The judge's prompt: the bundled `vrag_judge` template, or a template file using question, reference, answer."""
    request_timeout: float = 60.0
    """Seconds one judge request may take before it counts as failed."""
    retries: int = 3
    """Retries after a failed request (timeout, 5xx, 429, refused connection); then the judge raises an error naming
    the endpoint (the reference retries forever)."""
    backoff: float = 1.0
    """Seconds before the first retry, doubling each retry."""

    def __post_init__(self) -> None:
        if self.kind not in JUDGES:
            raise BadInputError(f"judge kind {self.kind!r} is unknown; use one of {', '.join(JUDGES)}.")
        if self.offline_match not in OFFLINE_MATCHES:
            raise BadInputError(
                f"judge offline_match {self.offline_match!r} is unknown; use one of {', '.join(OFFLINE_MATCHES)}."
            )
        if self.kind == "llm" and not self.url.startswith(("http://", "https://")):
            raise BadInputError(
                f"the llm judge needs an http(s) url, got {self.url!r}; give e.g. http://127.0.0.1:8000/v1."
            )
        if not (math.isfinite(self.request_timeout) and self.request_timeout > 0):
            raise BadInputError(f"judge request_timeout={self.request_timeout} must be a positive number of seconds.")
        if self.retries < 0 or not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise BadInputError("judge retries and backoff must each be at least 0.")


@dataclass(frozen=True)
class EvalSettings:
    k: int = 10
    """Pages retrieved per question for the retrieval metrics; nDCG and Recall are also reported at this k."""
    limit: int = 0
    """Evaluate only the first `limit` questions of the file (0: all)."""
    worst: int = 10
    """Questions listed in the report's "worst questions" table, lowest F1 first."""

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 1000:
            raise BadInputError(f"eval k={self.k} is out of range; use 1 to 1000.")
        if self.limit < 0 or self.worst < 0:
            raise BadInputError("eval limit and worst must each be at least 0 (limit 0 evaluates every question).")


# The transformers schedules that need no extra arguments.
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


@dataclass(frozen=True)
class SFTSettings:
    """Supervised fine-tuning of the policy on recorded trajectories; defaults are SPEC §4's SFT stage."""

    learning_rate: float = 5e-7
    """Peak learning rate (SPEC §4 SFT stage: 5e-7)."""
    scheduler: str = "cosine"
    """Learning-rate schedule after warm-up: one of SCHEDULERS (SPEC §4 SFT stage: cosine)."""
    warmup_ratio: float = 0.0
    """Share of the optimiser steps spent warming the learning rate up from 0."""
    epochs: float = 1.0
    """Passes over the training rows (SPEC §4 SFT stage: 1)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps, overriding `epochs`; None trains for `epochs`."""
    batch_size: int = 1
    """Trajectories per device per forward pass; one trajectory carries several images, so 1 fits most GPUs."""
    gradient_accumulation: int = 1
    """Forward passes summed into one optimiser step (effective batch = batch_size x this x devices)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    freeze_vision: bool = True
    """Keep the vision tower's weights fixed (SPEC §4: vision tower frozen); only the language model learns."""
    lora: bool = False
    """Train LoRA adapters through peft instead of every weight; they are merged into the saved model."""
    lora_rank: int = 16
    """LoRA rank r, when `lora` is set."""
    lora_alpha: int = 32
    """LoRA scaling alpha, when `lora` is set."""
    save_steps: int = 100
    """Write a resumable checkpoint (weights, optimiser, scheduler, RNG) every this many optimiser steps."""
    logging_steps: int = 1
    """Report the loss every this many optimiser steps."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory for about a third more compute."""
    min_pixels: int = MIN_PIXELS
    """Smallest image area the model sees; the serving bounds (SPEC §1), so recorded images are not resized again."""
    max_pixels: int = MAX_PIXELS
    """Largest image area the model sees (SPEC §1)."""
    loader_workers: int = 1
    """Processes that open and process the next rows' images while the model trains on the current one (0: the
    training process does it between steps, a quarter of a tiny model's step on the CPU)."""
    seed: int = 0
    """Seed of the data order and of any randomly initialised weights (LoRA adapters)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise BadInputError(f"learning rate {self.learning_rate} is not positive; give for example 5e-7.")
        if self.scheduler not in SCHEDULERS:
            raise BadInputError(f"scheduler {self.scheduler!r} is not known; use one of {', '.join(SCHEDULERS)}.")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise BadInputError(f"epochs {self.epochs} is not positive; give for example 1.")
        if self.max_steps is not None and self.max_steps < 1:
            raise BadInputError(f"max steps {self.max_steps} is below 1; give a positive number or leave it unset.")
        if self.loader_workers < 0:
            raise BadInputError(f"loader workers {self.loader_workers} is below 0; give 0 or more.")
        for name in ("batch_size", "gradient_accumulation", "lora_rank", "lora_alpha", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name.replace('_', ' ')} {getattr(self, name)} is below 1; give a positive "
                                    f"whole number.")
        if not 0 <= self.warmup_ratio < 1:
            raise BadInputError(f"warm-up ratio {self.warmup_ratio} is outside [0, 1); give for example 0.03.")
        if self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise BadInputError(f"weight decay {self.weight_decay} and gradient clip {self.max_grad_norm} must be "
                                f">= 0 and > 0; give for example 0.0 and 1.0.")
        if not 28 * 28 <= self.min_pixels <= self.max_pixels:
            raise BadInputError(f"min_pixels={self.min_pixels} and max_pixels={self.max_pixels} are not a range of "
                                f"image areas; give 784 <= min_pixels <= max_pixels.")


# SPEC §4 scopes: found by character position ("characters") or by the reference's token-sequence match.
SCOPE_MODES = ("characters", "reference")


def _check_policy_gradient(settings: RSGRPOSettings | GRPOSettings) -> None:
    """The checks RS-GRPO and multi-turn GRPO share: optimiser, sampling, batch and schedule."""
    if not (math.isfinite(settings.learning_rate) and settings.learning_rate > 0):
        raise BadInputError(f"learning rate {settings.learning_rate} is not positive; give for example 1e-6.")
    if settings.weight_decay < 0 or not settings.max_grad_norm > 0:
        raise BadInputError(f"weight decay {settings.weight_decay} and gradient clip {settings.max_grad_norm} must be "
                            f">= 0 and > 0; give for example 0.01 and 1.0.")
    if settings.n < 2:
        raise BadInputError(f"n={settings.n} rollouts per prompt is too few: group advantages need at least 2; "
                            f"give for example {type(settings).n}.")
    if not (math.isfinite(settings.temperature) and settings.temperature > 0):
        raise BadInputError(f"temperature {settings.temperature} is not positive; give for example 1.0.")
    for name in ("max_response_tokens", "prompts_per_step", "ppo_epochs", "save_steps"):
        if getattr(settings, name) < 1:
            raise BadInputError(f"{name.replace('_', ' ')} {getattr(settings, name)} is below 1; give a positive "
                                f"whole number.")
    if settings.max_steps is not None and settings.max_steps < 1:
        raise BadInputError(f"max steps {settings.max_steps} is below 1; give a positive number or leave it unset.")


@dataclass(frozen=True)
class RSGRPOSettings:
    """EVisRAG's Reward-Scoped GRPO over the evisrag protocol; defaults are SPEC §4's settings."""

    learning_rate: float = 1e-6
    """AdamW learning rate, constant (SPEC §4: 1e-6)."""
    weight_decay: float = 0.01
    """AdamW weight decay (SPEC §4: 0.01)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (SPEC §4: 1.0)."""
    n: int = 8
    """Rollouts per prompt, one group (SPEC §4: 8); at least 2, as the group z-scores need them."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (SPEC §4: 1.0)."""
    max_response_tokens: int = 1536
    """Most tokens one reply may sample (SPEC §3 overlong's maximum: 1536)."""
    prompts_per_step: int = 32
    """Prompt groups kept per optimiser step (SPEC §4: 32); lower it on a CPU."""
    ppo_epochs: int = 1
    """Optimiser steps over each rollout batch; from the second on, the ratio leaves 1 and the clips bind (SPEC §4:
    1, where the loss is scoped REINFORCE with group z-scores)."""
    clip_low: float = 0.2
    """Lower clip of the ratio, 1 − clip_low (SPEC §4: 0.2)."""
    clip_high: float = 0.28
    """Upper clip of the ratio, 1 + clip_high (SPEC §4: 0.28)."""
    dual_clip: float = 3.0
    """Dual clip c: a negative-advantage token's loss is capped at −c·A (SPEC §4: 3.0); above 1."""
    online_filter: bool = True
    """Keep a prompt group only if its mean `overall` lies in (filter_low, filter_high) (SPEC §4), resampling prompts
    to fill the step."""
    filter_low: float = 0.01
    """Lower bound of a kept group's mean `overall`, exclusive (SPEC §4: 0.01)."""
    filter_high: float = 6.9
    """Upper bound of a kept group's mean `overall`, exclusive (SPEC §4: 6.9; `overall` is at most 7)."""
    draw_rounds: int = 4
    """With the filter on, a step draws at most draw_rounds × prompts_per_step prompt groups to fill its batch, then
    trains on the groups it kept (the reference raises instead)."""
    scope_mode: str = "characters"
    """How reward scopes find the tags: "characters" (in the decoded text) or "reference" (the reference's
    token-sequence match, which misses merged tags; for parity checks only). See pagelens.training.scopes."""
    freeze_vision: bool = True
    """Keep the vision tower's weights fixed (SPEC §4: vision tower frozen); only the language model learns."""
    max_steps: int | None = None
    """Stop after this many optimiser steps, cycling through the questions; None makes one pass over them."""
    save_steps: int = 10
    """Write a resumable checkpoint (weights, optimiser, RNG, data position) every this many optimiser steps."""
    seed: int = 0
    """Seed of the question order and of the sampling."""

    def __post_init__(self) -> None:
        _check_policy_gradient(self)
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise BadInputError(f"clip_low={self.clip_low} and clip_high={self.clip_high} do not make a ratio range "
                                f"around 1; give 0 <= clip_low < 1 and clip_high >= 0, for example 0.2 and 0.28.")
        if not self.dual_clip > 1:
            raise BadInputError(f"dual_clip={self.dual_clip} must be above 1; give for example 3.0.")
        if not self.filter_low < self.filter_high:
            raise BadInputError(f"filter bounds ({self.filter_low}, {self.filter_high}) are empty; give low < high, "
                                f"for example 0.01 and 6.9.")
        if self.draw_rounds < 1:
            raise BadInputError(f"draw rounds {self.draw_rounds} is below 1; give a positive whole number.")
        if self.scope_mode not in SCOPE_MODES:
            raise BadInputError(f"scope mode {self.scope_mode!r} is unknown; use one of {', '.join(SCOPE_MODES)}.")

    @property
    def max_draws(self) -> int:
        """Most prompt groups one step may draw when filtering: draw_rounds × prompts_per_step."""
        return self.draw_rounds * self.prompts_per_step


@dataclass(frozen=True)
class GRPOSettings:
    """VRAG-RL's multi-turn GRPO (SPEC §3 reward, SPEC §4); defaults from SPEC §4, else VRAG-RL's training script."""

    learning_rate: float = 1e-6
    """AdamW learning rate after warm-up (SPEC §4: 1e-6)."""
    warmup_steps: int = 5
    """Optimiser steps warming the learning rate up from 0, then constant (VRAG-RL: 5)."""
    weight_decay: float = 0.01
    """AdamW weight decay (VRAG-RL's trainer default: 0.01)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (VRAG-RL's trainer default: 1.0)."""
    n: int = 5
    """Rollouts per prompt, one group (SPEC §4: 5); at least 2, as the group z-scores need them."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    max_turns: int = 4
    """Action turns per rollout, then one call told to answer now (SPEC §1: training uses at most 4)."""
    max_response_tokens: int = 2048
    """Most tokens one assistant turn may sample (VRAG-RL: 2048)."""
    prompts_per_step: int = 32
    """Prompts per optimiser step (VRAG-RL: 32); lower it on a CPU."""
    ppo_epochs: int = 1
    """Optimiser steps over each rollout batch; from the second on, the ratio leaves 1 and the clip binds."""
    clip_ratio: float = 0.2
    """The ratio is clipped to [1 − clip_ratio, 1 + clip_ratio] (VRAG-RL's trainer default: 0.2)."""
    kl_coef: float = 0.01
    """Weight of the low-variance KL (k3) to the frozen starting policy, per response token (SPEC §4: 0.01); 0 drops
    the KL term and its reference model."""
    freeze_vision: bool = True
    """Keep the vision tower's weights fixed; only the language model learns."""
    max_steps: int | None = None
    """Stop after this many optimiser steps, cycling through the questions; None makes one pass over them."""
    save_steps: int = 25
    """Write a resumable checkpoint (weights, optimiser, RNG, data position) every this many steps (VRAG-RL: 25)."""
    seed: int = 0
    """Seed of the question order and of the sampling."""

    def __post_init__(self) -> None:
        _check_policy_gradient(self)
        if self.warmup_steps < 0:
            raise BadInputError(f"warm-up steps {self.warmup_steps} is below 0; give for example 5.")
        if not 1 <= self.max_turns <= 50:
            raise BadInputError(f"max_turns={self.max_turns} is out of range; use 1 to 50.")
        if not 0 < self.clip_ratio < 1:
            raise BadInputError(f"clip_ratio={self.clip_ratio} is outside (0, 1); give for example 0.2.")
        if not (math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise BadInputError(f"kl_coef={self.kl_coef} must be a number >= 0; give 0.01, or 0 for no KL term.")
