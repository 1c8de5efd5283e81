"""Training settings, one typed object per concern: the answer judge (SPEC §3), evaluation runs (SPEC §5) and SFT
(SPEC §4)."""

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
