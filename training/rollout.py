"""Rollouts through the agent graph with a local, trainable policy that keeps the ids it sampled (issue 11).

`LocalPolicy` is a graph `Policy` (`name`, `complete(request) -> Completion`) that samples with transformers
`generate` from a Qwen2.5-VL model held in memory, so a trainer can update the very object between rollouts. It
plugs into `Agent` in place of the HTTP policy: the nodes, protocols, parsers, tools and image sizing are the ones
pagelens serves with.

- The prompt is built as a server builds it: the graph's OpenAI messages (images as data URLs, SPEC §7) are
  rendered with the checkpoint's own chat template and go through `image_only_processor` (training/sft.py: the
  Qwen2.5-VL processor with the PIL image processor, no torchvision), which expands each image into one
  `<|image_pad|>` per merged patch. Images arrive already sized by the graph (SPEC §1) and are not resized again.
  Each image's patches are made once and kept by the hash of its data URL (`PATCH_CACHE` images): a multi-turn
  run sends every earlier image again each turn, and a group's n rollouts show the same pages.
- Per assistant turn it records the prompt ids, the SAMPLED ids exactly as `generate` produced them (the end token
  `<|im_end|>` included; none when the turn ran out of `max_new_tokens`) and their log-probs. The message handed
  to the graph is those ids decoded with special tokens skipped, as the transformers policy server does.
- Log-probs: `log_softmax(logits / T)` of the raw logits, where T is the sampling temperature, top-p 1, top-k off
  and no repetition penalty, so this is exactly the distribution each token was drawn from (what GRPO's ratio
  needs); ids past the tokenizer's vocabulary (padding rows of a checkpoint's embedding) and the image / video
  placeholder ids (`unsampleable_ids`) are masked to -inf in both sampling and scoring. `sequence_logprobs`
  recomputes the same quantity with the current model.
- Seeding: each turn samples under `torch.manual_seed(seed * 1_000_003 + turn)` inside `fork_rng`, so a rollout
  with a given seed is reproducible and the caller's random state is left as it was.
- The run's deadline (`PolicyRequest.timeout`) is not enforced inside a generation, which `max_new_tokens` bounds;
  a time limit would make what is sampled depend on the machine's speed.
- Rollouts run one after another; generation in one process is not made concurrent here (on the CPU there is
  nothing to gain; on a GPU, batching a group's generations is the next step).

Sequences (the prefix property). A multi-turn run is one training sequence, prompt 1 + sampled 1 + observation
ids + sampled 2 + ..., only when turn k+1's prompt ids, as the graph renders and the tokenizer encodes them, start
with turn k's prompt ids + sampled ids (and its images start with turn k's images). Often they do not: the
template re-renders the assistant message from its text, and byte-level BPE re-encodes a sampled reply to other
ids (on the real Qwen2 vocabulary, 4 of 16 eight-token replies of the tiny random model; SPEC §4: 4-7 of 8
VRAG-RL replies), special tokens sampled mid-reply are dropped from the text, and the graph replaces images beyond
`max_images` with a text note. Where it fails, the turn starts a new sequence with its own prompt. We chose that
over feeding the model our own concatenated ids (one sequence always) because the model is then trained on exactly
the contexts it is served with, where every turn's prompt is re-rendered from the messages; the cost is that split
turns re-encode their prompts. Each sequence's loss mask is 1 exactly on sampled ids: prompt, observation (user
text and images the graph adds after an action), template and image tokens are 0 by construction, never found
by re-tokenising text.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagelens.errors import BadInputError, PageLensError
from pagelens.graph.build import Agent
from pagelens.graph.images import LRU
from pagelens.graph.policies.interface import Completion, PolicyRequest
from pagelens.graph.run import RunResult

PATCH_CACHE = 64  # images: a group's pages and their crops, a few dozen
_SEED_STRIDE = 1_000_003  # turn seeds of neighbouring rollout seeds never collide within a million turns


@dataclass(frozen=True)
class RolloutSampling:
    """How the local policy samples (SPEC §4: temperature 1.0 for RS-GRPO rollouts)."""

    temperature: float = 1.0
    """Sampling temperature T; the recorded log-probs are those of softmax(logits / T)."""
    max_new_tokens: int = 1536
    """Most tokens sampled per assistant turn (SPEC §4: max response 1536)."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise BadInputError(f"rollout temperature {self.temperature} is not positive; give for example 1.0.")
        if self.max_new_tokens < 1:
            raise BadInputError(f"rollout max_new_tokens {self.max_new_tokens} is below 1; give a positive number.")


@dataclass(frozen=True)
class TurnRecord:
    """One assistant turn: its prompt, the ids sampled after it and their log-probs (one per sampled id)."""

    prompt_ids: tuple[int, ...]
    sampled_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    image_keys: tuple[str, ...]
    """The prompt's images in order (a digest of each data URL); their pixels are kept once per rollout."""
    text: str
    """The message the graph received: `sampled_ids` decoded without special tokens."""


@dataclass
class Rollout:
    """One run of a question through the graph: its result (answer, evidence, images shown, messages, steps) and
    what the policy sampled on each turn, in order."""

    question: str
    seed: int
    result: RunResult
    turns: list[TurnRecord]
    temperature: float
    vocab_size: int
    image_token_id: int
    images: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    """Image key → (its pixel patches, its grid_thw row), as the processor made them."""

    @property
    def shown_pages(self) -> list[str]:
        """The pages shown, in order, de-duplicated (SPEC §3 nDCG)."""
        return list(dict.fromkeys(image.page_id for image in self.result.images))

    @property
    def response_text(self) -> str:
        """Every assistant message of the run joined (SPEC §3 VRAG-RL format is checked over the trajectory)."""
        return "\n".join(turn.text for turn in self.turns)


@dataclass(frozen=True)
class TrainingSequence:
    """One sequence to train on, every tensor aligned to `input_ids` (L,): `loss_mask` is 1 on sampled ids only and
    `old_logp` holds their log-probs at sampling time (0 elsewhere)."""

    input_ids: Any  # (L,) long
    attention_mask: Any  # (L,) long
    loss_mask: Any  # (L,) long
    old_logp: Any  # (L,) float32
    mm_token_type_ids: Any  # (L,) int: 1 on image tokens
    pixel_values: Any | None  # (patches, D) for the images in the sequence, in order; None without images
    image_grid_thw: Any | None  # (images, 3)
    turns: tuple[int, ...]  # which of the rollout's turns it holds
    temperature: float
    vocab_size: int


class LocalPolicy:
    """A graph policy sampling from an in-memory Qwen2.5-VL model and recording its turns (see the module doc).

    Usage: set `seed`, run a question through an Agent built with this policy, then `take()` the turns.
    """

    def __init__(self, model: Any, processor: Any, sampling: RolloutSampling = RolloutSampling(), *,
                 name: str = "local"):
        from transformers import GenerationConfig

        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.sampling, self.name = sampling, name
        self.seed = 0
        self.vocab_size = len(self.tokenizer)
        self.image_token_id = int(model.config.image_token_id)
        self.banned_ids = unsampleable_ids(model.config)
        shipped = model.generation_config.eos_token_id
        shipped = [shipped] if isinstance(shipped, int) else list(shipped or [])
        ends = {*shipped, self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None}
        eos = sorted(ends)
        pad = self.tokenizer.pad_token_id
        # Neutral values, not None: generate would fill None with defaults (top_k 50 when sampling).
        self.generation_config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=True, temperature=sampling.temperature, top_p=1.0,
            top_k=0, repetition_penalty=1.0, eos_token_id=eos, pad_token_id=eos[0] if pad is None else pad,
            return_dict_in_generate=True, output_logits=True)
        self._turns: list[TurnRecord] = []
        self._images: dict[str, tuple[Any, Any]] = {}
        self._patches: LRU[str, tuple[Any, Any]] = LRU(PATCH_CACHE)

    @classmethod
    def from_folder(cls, folder: Path | str, sampling: RolloutSampling = RolloutSampling(), *,
                    device: str = "auto") -> LocalPolicy:
        """Load a Qwen2.5-VL checkpoint folder (float32 on the CPU, bf16 on CUDA) with the serving image bounds."""
        from pagelens.training.settings import SFTSettings
        from pagelens.training.sft import check_model_folder, image_only_processor, load_model

        folder = check_model_folder(Path(folder))
        model, _ = load_model(folder, device)
        return cls(model.eval(), image_only_processor(folder, SFTSettings()), sampling, name=str(folder))

    def take(self) -> tuple[list[TurnRecord], dict[str, tuple[Any, Any]]]:
        """The turns recorded since the last run began and their images; clears them."""
        turns, images = self._turns, self._images
        self._turns, self._images = [], {}
        return turns, images

    def complete(self, request: PolicyRequest) -> Completion:
        import torch

        if request.turn == 0:  # a new run
            self._turns, self._images = [], {}
        if request.turn != len(self._turns):
            raise PageLensError(f"the local policy was asked for turn {request.turn} after recording "
                                f"{len(self._turns)}; it records one call per turn (weighted selection, which asks "
                                f"several times per turn, cannot be trained).")
        inputs, keys = self._encode(request.messages())
        prompt = inputs["input_ids"][0].tolist()
        sampled, logits = self._sample(inputs, request.turn)
        logprobs = token_logprobs(logits, torch.tensor(sampled, device=logits.device), self.sampling.temperature,
                                  self.vocab_size, self.banned_ids)
        text = self.tokenizer.decode(sampled, skip_special_tokens=True)
        self._turns.append(TurnRecord(tuple(prompt), tuple(sampled), tuple(logprobs.tolist()), keys, text))
        return Completion(text=text, logprobs=self._turns[-1].logprobs, prompt_tokens=len(prompt),
                          completion_tokens=len(sampled))

    def _encode(self, messages: list[dict]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """OpenAI messages → model inputs on the model's device, and the keys of their images in order; what the
        processor's own call gives, with each image's patches made once (`_patches`)."""
        import torch

        urls, rendered = [], []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image_url":
                        urls.append(part["image_url"]["url"])
                        parts.append({"type": "image"})
                    else:
                        parts.append(part)
                content = parts
            rendered.append({"role": message["role"], "content": content})
        text = self.tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
        keys = tuple(hashlib.sha1(url.encode()).hexdigest() for url in urls)
        patches = [self._patches.get(key, lambda url=url: self._make_patches(url)) for key, url in zip(keys, urls)]
        for key, patch in zip(keys, patches):  # this run's images, for its training sequences
            self._images.setdefault(key, patch)
        inputs = {}
        if patches:
            grid = torch.stack([row for _, row in patches])
            replacements = [self.processor.replace_image_token({"image_grid_thw": grid}, image_idx=i)
                            for i in range(len(patches))]
            text = self.processor.get_text_with_replacements([text], replacements)[0][0]
            inputs = {"pixel_values": torch.cat([chunk for chunk, _ in patches]), "image_grid_thw": grid}
        inputs.update(self.tokenizer([text], return_tensors="pt"))
        device, dtype = self.model.device, self.model.dtype
        inputs = {name: value.to(device) for name, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).int()
        return inputs, keys

    def _make_patches(self, url: str) -> tuple[Any, Any]:
        """One image's patches (n_patches, C) and its grid row (t, h, w), on the CPU."""
        encoded = self.processor.image_processor([_decode_data_url(url)], return_tensors="pt")
        return encoded["pixel_values"], encoded["image_grid_thw"][0]

    def _sample(self, inputs: dict[str, Any], turn: int) -> tuple[list[int], Any]:
        """Sample one reply: its ids and the raw logits (new tokens, V) each id was drawn from."""
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList

        vocab, banned = self.vocab_size, list(self.banned_ids)

        class MaskPadding(LogitsProcessor):  # embedding rows past the tokenizer decode to nothing
            def __call__(self, input_ids, scores):
                scores[:, vocab:] = float("-inf")
                scores[:, banned] = float("-inf")  # image / video placeholders (unsampleable_ids)
                return scores

        device = self.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(self.seed * _SEED_STRIDE + turn)
            out = self.model.generate(**inputs, generation_config=self.generation_config,
                                      logits_processor=LogitsProcessorList([MaskPadding()]))
        sampled = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        return sampled, torch.stack(out.logits, dim=1)[0].float()


def unsampleable_ids(config: Any) -> tuple[int, ...]:
    """The image and video placeholder ids: never sampled (a sampled `<|image_pad|>` in a training sequence would be
    read as an image slot without pixels, and the model's forward refuses the mismatch)."""
    return tuple(int(i) for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
                 if i is not None)


def token_logprobs(logits: Any, ids: Any, temperature: float, vocab_size: int, banned: Sequence[int] = ()) -> Any:
    """log_softmax(logits / T) at `ids`: logits (N, V) float, ids (N,) → (N,); ids >= vocab_size and `banned` ids
    masked out."""
    if logits.shape[-1] > vocab_size or banned:
        logits = logits.clone()
        logits[:, vocab_size:] = float("-inf")
        logits[:, list(banned)] = float("-inf")
    return (logits.float() / temperature).log_softmax(-1).gather(-1, ids[:, None].long())[:, 0]


def _decode_data_url(url: str):
    """The PIL image in a base64 data URL as the graph writes them."""
    from PIL import Image

    if not url.startswith("data:") or "," not in url:
        raise BadInputError("an image reached the local policy as a web address; the graph sends data URLs only.")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return image.convert("RGB")


def rollout_group(agent: Agent | Callable[[], Agent], question: str, n: int, *, seed: int = 0) -> list[Rollout]:
    """`n` rollouts of `question` (one group), run one after another with seeds seed, seed + 1, ...

    `agent` is an Agent whose policy is a LocalPolicy, or a factory returning one (called once per rollout).
    """
    if n < 1:
        raise BadInputError(f"a rollout group of {n} is empty; give n >= 1.")
    rollouts = []
    for i in range(n):
        runner = agent if isinstance(agent, Agent) else agent()
        policy = runner.policy
        if not isinstance(policy, LocalPolicy):
            raise BadInputError(f"rollouts need an Agent built with a LocalPolicy, not {type(policy).__name__}; "
                                f"build it with LocalPolicy.from_folder(MODEL).")
        policy.seed = seed + i
        policy.take()
        result = runner.ask(question)
        turns, images = policy.take()
        rollouts.append(Rollout(question, seed + i, result, turns, policy.sampling.temperature, policy.vocab_size,
                                policy.image_token_id, images))
    return rollouts


def training_sequences(rollout: Rollout) -> list[TrainingSequence]:
    """The rollout's turns as training sequences: consecutive turns share one sequence while the prefix property
    holds (module doc), and a turn where it fails starts a new one with its own prompt."""
    sequences: list[TrainingSequence] = []
    ids: list[int] = []
    mask: list[int] = []
    logp: list[float] = []
    keys: tuple[str, ...] = ()
    members: list[int] = []
    for k, turn in enumerate(rollout.turns):
        prompt = list(turn.prompt_ids)
        if ids and prompt[:len(ids)] == ids and turn.image_keys[:len(keys)] == keys:
            added = prompt[len(ids):]  # the observation between turn k-1's end and this prompt's end
        else:
            if ids:
                sequences.append(_sequence(rollout, ids, mask, logp, keys, members))
            ids, mask, logp, members, added = [], [], [], [], prompt
        ids += added + list(turn.sampled_ids)
        mask += [0] * len(added) + [1] * len(turn.sampled_ids)
        logp += [0.0] * len(added) + list(turn.logprobs)
        keys = turn.image_keys
        members.append(k)
    if ids:
        sequences.append(_sequence(rollout, ids, mask, logp, keys, members))
    return sequences


def _sequence(rollout: Rollout, ids: list[int], mask: list[int], logp: list[float], keys: tuple[str, ...],
              members: list[int]) -> TrainingSequence:
    import torch

    input_ids = torch.tensor(ids, dtype=torch.long)
    pixels = grid = None
    if keys:
        pixels = torch.cat([rollout.images[key][0] for key in keys])
        grid = torch.stack([rollout.images[key][1] for key in keys])
    return TrainingSequence(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
        loss_mask=torch.tensor(mask, dtype=torch.long), old_logp=torch.tensor(logp, dtype=torch.float32),
        mm_token_type_ids=(input_ids == rollout.image_token_id).int(), pixel_values=pixels, image_grid_thw=grid,
        turns=tuple(members), temperature=rollout.temperature, vocab_size=rollout.vocab_size)


def collate(sequences: list[TrainingSequence], pad_token_id: int = 0) -> dict[str, Any]:
    """Sequences → one batch, right-padded to the longest: (B, L) tensors, the images of all sequences in order,
    and the `temperature` and `vocab_size` the log-probs were recorded with."""
    import torch

    if not sequences:
        raise BadInputError("no training sequences to batch; run rollouts first.")
    if len({(s.temperature, s.vocab_size) for s in sequences}) > 1:
        raise BadInputError("the sequences were sampled at different temperatures or vocabularies; batch them apart.")
    length = max(len(s.input_ids) for s in sequences)

    def pad(name: str, value: float | int) -> Any:
        rows = [getattr(s, name) for s in sequences]
        return torch.stack([torch.nn.functional.pad(row, (0, length - len(row)), value=value) for row in rows])

    batch: dict[str, Any] = {
        "input_ids": pad("input_ids", pad_token_id),  # (B, L)
        "attention_mask": pad("attention_mask", 0),  # (B, L)
        "loss_mask": pad("loss_mask", 0),  # (B, L)
        "old_logp": pad("old_logp", 0.0),  # (B, L)
        "mm_token_type_ids": pad("mm_token_type_ids", 0),  # (B, L)
        "temperature": sequences[0].temperature,
        "vocab_size": sequences[0].vocab_size,
    }
    with_images = [s for s in sequences if s.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([s.pixel_values for s in with_images])  # (patches, D)
        batch["image_grid_thw"] = torch.cat([s.image_grid_thw for s in with_images])  # (images, 3)
    return batch


def sequence_logprobs(model: Any, batch: dict[str, Any]) -> Any:
    """Per-token log-probs of the batch's sampled tokens under `model` now, at the batch's temperature: (B, L),
    aligned to `input_ids` like `old_logp`, 0 where `loss_mask` is 0. Differentiable; run it under no_grad for
    reference log-probs. Only the masked positions go through the LM head, so the (B, L, V) logits never exist."""
    import torch

    device = model.device
    inputs = {name: batch[name].to(device) for name in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "pixel_values" in batch:
        inputs["pixel_values"] = batch["pixel_values"].to(device, model.dtype)
        inputs["image_grid_thw"] = batch["image_grid_thw"].to(device)
    hidden = model.model(**inputs, use_cache=False).last_hidden_state  # (B, L, H)
    target = batch["loss_mask"][:, 1:].to(device).bool()  # (B, L-1): token t+1 is predicted at position t
    logits = model.lm_head(hidden[:, :-1][target])  # (N, V)
    ids = inputs["input_ids"][:, 1:][target]  # (N,)
    logp = token_logprobs(logits, ids, batch["temperature"], batch["vocab_size"],
                          unsampleable_ids(model.config))  # (N,)
    shifted = torch.zeros(target.shape, dtype=logp.dtype, device=device).masked_scatter(target, logp)
    return torch.nn.functional.pad(shifted, (1, 0))  # (B, L)
