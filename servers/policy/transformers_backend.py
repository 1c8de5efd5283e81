"""Serve a local Qwen2.5-VL-family checkpoint with transformers, on CPU or one CUDA GPU, without torchvision.

vLLM is the production policy server (SPEC §7); this backend exists for where vLLM cannot run (a CPU-only
machine, CI, a laptop) and for tests, and speaks the same OpenAI wire format through `policy_server`.

- No torchvision: `AutoProcessor` insists on a video processor, which needs torchvision, so the prompt is
  built here from the tokenizer's chat template and `Qwen2VLImageProcessorPil` (SPEC §8), the way the
  Qwen2.5-VL processor does it: each `<|image_pad|>` becomes one pad per merged patch.
- Images keep their size when their sides are already multiples of 28 and their area lies within
  [min_pixels, max_pixels]; pagelens sends them that way (SPEC §1), so the size it records as seen is the
  size the model sees.
- Sampling is fully set by the request: the checkpoint's own sampling defaults (Qwen2.5-VL ships
  temperature 0.1, top_k 1, repetition_penalty 1.05) are dropped at load, keeping only its stop tokens.
- Logprobs: the log-softmax of the distribution the token was drawn from, i.e. the logits after repetition
  penalty, temperature and top-p (renormalised over the nucleus). Under greedy decoding (temperature
  under 1e-5) it is the model's distribution after repetition penalty.
- `completion_tokens` and logprobs cover every generated token, including those of a stop string (cut
  from the text) and the end token.
- One generation runs at a time (a lock); `seed` seeds torch's global generator under that lock.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pagelens.errors import BadInputError
from pagelens.servers.chat_request import ChatMessage
from pagelens.servers.policy.server import Generation, SamplingParams, TokenLogprob
from pagelens.tools.regions import MAX_PIXELS, MIN_PIXELS

_DONE = object()


class TransformersBackend:
    """A Qwen2.5-VL-family checkpoint folder loaded through the transformers Auto classes."""

    def __init__(self, model: Path | str, *, device: Literal["auto", "cpu", "cuda"] = "auto",
                 name: str | None = None, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise BadInputError(f"model {model} is not a checkpoint folder (no config.json there); give the local "
                                "folder of a Qwen2.5-VL checkpoint, since nothing is downloaded.")
        if not 28 * 28 <= min_pixels <= max_pixels:
            raise BadInputError(f"min_pixels={min_pixels} and max_pixels={max_pixels} are not a range of image "
                                "areas; give 784 <= min_pixels <= max_pixels.")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise BadInputError("device 'cuda' was asked for but torch sees no CUDA GPU; use device 'cpu' or 'auto'.")
        elif device not in ("cpu", "cuda"):
            raise BadInputError(f"device {device!r} is not known; use 'auto', 'cpu' or 'cuda'.")
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=self.dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"model folder {folder} could not be loaded ({exc}); give a complete Qwen2.5-VL "
                                "checkpoint folder.") from None
        self.model.to(self.device).eval()
        self.image_processor = _image_processor(folder, min_pixels, max_pixels)
        if self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = _chat_template_file(folder)
        self.name = name or str(model)

        config = self.model.config
        self.image_token_id = int(config.image_token_id)
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.context = int(config.get_text_config().max_position_embeddings)
        self.vocabulary = len(self.tokenizer)
        shipped = self.model.generation_config.eos_token_id
        shipped = [shipped] if isinstance(shipped, int) else list(shipped or [])
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.eos_ids = sorted({*shipped, self.tokenizer.eos_token_id, *([im_end] if im_end is not None else [])}
                              - {None})
        pad = self.tokenizer.pad_token_id
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_ids,
                                                        pad_token_id=self.eos_ids[0] if pad is None else pad)
        self._pass_token_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        self._added_ids = set(self.tokenizer.added_tokens_decoder)
        self._lock = threading.Lock()

    def generate(self, messages: list[ChatMessage], params: SamplingParams) -> Generation:
        """Generate one completion; raises BadInputError for messages the model cannot take."""
        *_, final = self.stream(messages, params)
        return final

    def stream(self, messages: list[ChatMessage], params: SamplingParams) -> Iterator[str | Generation]:
        """Text deltas as they are decoded, then the finished Generation.

        The prompt is built before this returns, so bad input raises here rather than mid-stream.
        """
        with self._lock:  # a running generation decodes with the same fast tokenizer, which is not thread-safe
            inputs = self._prepare(messages)
        return self._run(inputs, params)

    def _prepare(self, messages: list[ChatMessage]) -> dict[str, Any]:
        """Chat template → text with one pad token per merged image patch → model input tensors."""
        from jinja2 import TemplateError

        images, rendered = [], []
        for message in messages:
            content = []
            for part in message.parts:
                if isinstance(part, str):
                    content.append({"type": "text", "text": part})
                else:
                    images.append(part)
                    content.append({"type": "image"})
            rendered.append({"role": message.role, "content": content})
        try:
            text = self.tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:
            raise BadInputError(f"the model's chat template rejected the messages ({exc}); "
                                "send system, user and assistant turns the template accepts.") from None
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(images):
            raise BadInputError(f"the messages' text contains the image placeholder {self.image_token}; "
                                "remove it, images go in image_url parts.")
        inputs: dict[str, Any] = {}
        if images:
            try:
                vision = self.image_processor(images=images, return_tensors="pt")
            except ValueError as exc:
                raise BadInputError(f"an image could not be prepared for the model ({exc}); send page-like "
                                    "images (aspect ratio under 200).") from None
            grid = vision["image_grid_thw"]
            pads = (grid.prod(-1) // self.image_processor.merge_size**2).tolist()
            text = pieces[0] + "".join(self.image_token * n + piece for n, piece in zip(pads, pieces[1:]))
            inputs["pixel_values"] = vision["pixel_values"].to(self.device, self.dtype)
            inputs["image_grid_thw"] = grid.to(self.device)
        encoded = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        input_ids = encoded["input_ids"]
        if input_ids.shape[1] >= self.context:
            raise BadInputError(f"the prompt is {input_ids.shape[1]} tokens, not less than the model's context of "
                                f"{self.context}; send fewer or smaller images or less text.")
        inputs["input_ids"] = input_ids.to(self.device)
        inputs["attention_mask"] = encoded["attention_mask"].to(self.device)
        if self._pass_token_types:  # 3D rope positions for image tokens are computed from these (0 text, 1 image)
            inputs["mm_token_type_ids"] = (input_ids == self.image_token_id).int().to(self.device)
        return inputs

    def _run(self, inputs: dict[str, Any], params: SamplingParams) -> Iterator[str | Generation]:
        prompt_tokens = int(inputs["input_ids"].shape[1])
        step = _Step(self, params)
        worker = threading.Thread(target=self._generate, args=(inputs, params, step), daemon=True)
        worker.start()
        emitted = ""
        try:
            while (item := step.events.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                safe = _safe_prefix(item, params.stop)
                if len(safe) > len(emitted) and safe.startswith(emitted):
                    yield safe[len(emitted):]
                    emitted = safe
            text = step.text
            if len(text) > len(emitted) and text.startswith(emitted):
                yield text[len(emitted):]
            finished = step.stopped or (bool(step.ids) and step.ids[-1] in self.eos_ids)
            yield Generation(
                text=text,
                finish_reason="stop" if finished else "length",
                prompt_tokens=prompt_tokens,
                completion_tokens=len(step.ids),
                logprobs=tuple(step.logprobs),
            )
        finally:
            step.cancel.set()  # a client that went away stops the generation at the next token

    def _generate(self, inputs: dict[str, Any], params: SamplingParams, step: _Step) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        sample = params.temperature >= 1e-5  # below, logits / temperature overflow; vLLM decodes greedily too
        processors: list = []
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if sample and params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if sample and params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
        processors.append(step.record)
        # Neutral values, not None: generate fills None fields with defaults (top_k 50 when sampling).
        config = GenerationConfig(
            max_new_tokens=min(params.max_tokens, self.context - int(inputs["input_ids"].shape[1])),
            do_sample=sample, temperature=1.0, top_p=1.0, repetition_penalty=1.0, **({"top_k": 0} if sample else {}),
            eos_token_id=self.eos_ids, pad_token_id=self.model.generation_config.pad_token_id,
        )
        try:
            with self._lock, torch.inference_mode():
                if step.cancel.is_set():
                    return
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                self.model.generate(**inputs, generation_config=config,
                                    logits_processor=LogitsProcessorList(processors),
                                    stopping_criteria=StoppingCriteriaList([step.criterion]))
        except BaseException as exc:  # handed to the consumer thread, which raises it
            step.events.put(exc)
        finally:
            step.events.put(_DONE)

    def _token_bytes(self, token_id: int) -> bytes:
        """The token's exact bytes: byte-level BPE pieces can be part of a UTF-8 character."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if token_id in self._added_ids or any(char not in self._byte_of for char in piece):
            return piece.encode()
        return bytes(self._byte_of[char] for char in piece)


class _Step:
    """Sees each token right after it is sampled: records it and its logprob, decodes, checks stop strings.

    generate calls stopping criteria once per step after sampling, so this is its hook; it also keeps the
    log-softmax of the last processor output, which is the distribution the token was drawn from. It runs in
    the generation thread, under the backend's lock, as every use of the tokenizer does.
    """

    def __init__(self, backend: TransformersBackend, params: SamplingParams) -> None:
        from transformers import LogitsProcessor, StoppingCriteria

        self.backend, self.stops = backend, params.stop
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.text = ""
        self.stopped = False
        self.events: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self.last_logprobs = None
        vocabulary = backend.vocabulary
        step = self

        class Record(LogitsProcessor):
            def __call__(self, input_ids, scores):
                # checkpoints pad the embedding past the tokenizer; those ids decode to nothing
                scores[:, vocabulary:] = float("-inf")
                step.last_logprobs = scores[0].float().log_softmax(-1)
                return scores

        class Observe(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return step.observe(input_ids)

        self.record, self.criterion = Record(), Observe()

    def observe(self, input_ids):
        import torch

        token = int(input_ids[0, -1])
        self.ids.append(token)
        raw = self.backend._token_bytes(token)
        self.logprobs.append(TokenLogprob(raw.decode("utf-8", errors="replace"), float(self.last_logprobs[token]), raw))
        text = self.backend.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [text.find(stop) for stop in self.stops if stop in text]
        if cuts:
            text, self.stopped = text[:min(cuts)], True
        self.text = text
        self.events.put(text)
        return torch.full((input_ids.shape[0],), self.stopped or self.cancel.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """What can be sent now: not a trailing partial UTF-8 character, nor text that may begin a stop string."""
    text = text.rstrip("\ufffd")
    hold = max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
    return text[:len(text) - hold]


def _image_processor(folder: Path, min_pixels: int, max_pixels: int):
    """The PIL Qwen2-VL image processor (no torchvision), with the checkpoint's patch settings where it has them."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # min_pixels/max_pixels, not size: released configs carry both, and their min_pixels would win over size
    if (folder / "preprocessor_config.json").is_file():
        return Qwen2VLImageProcessorPil.from_pretrained(folder, min_pixels=min_pixels, max_pixels=max_pixels,
                                                        local_files_only=True)
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def _chat_template_file(folder: Path) -> str:
    """Released Qwen2.5-VL checkpoints keep the template in the processor's chat_template.json."""
    import json

    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    raise BadInputError(f"model folder {folder} has no chat template; add chat_template.jinja or chat_template.json.")
