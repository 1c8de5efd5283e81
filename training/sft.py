"""Supervised fine-tuning of a Qwen2.5-VL policy on recorded trajectories with TRL's SFTTrainer (SPEC §4 SFT stage).

The recipe is SPEC §4's SFT stage: full fine-tune (LoRA as an option), vision tower frozen, lr 5e-7 on a cosine
schedule, 1 epoch, loss on assistant tokens only. How it is done here:
- Assistant-only loss: TRL renders each row with `chat_template.jinja`, Qwen2.5-VL's released template plus
  `{% generation %}` markers, and keeps the loss on the marked tokens (the assistant's text and its <|im_end|>).
  Before training, every row is rendered with that template and with the checkpoint's own one: they must give the
  same text, so the model is trained on exactly the tokens it is served with.
- No torchvision (DESIGN, Conventions): `AutoProcessor` wants a video processor, which needs torchvision, so TRL
  gets `ImageOnlyProcessor`, Qwen2.5-VL's processor with the PIL image processor and no video processor (SPEC §8).
  Images go through it with the serving bounds (SPEC §1), so a recorded image is not resized again.
- Resuming: a checkpoint (weights, optimiser, scheduler, RNG, data position) is written to `OUT/checkpoints` every
  `save_steps` steps; rerunning the same command after a kill resumes from the newest complete one. When training
  finishes, the model is written to OUT (LoRA adapters merged in) with the checkpoint's tokenizer, chat template
  and image processor config, and the checkpoints are removed.
- bf16 on CUDA, float32 on the CPU.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from pagelens.errors import BadInputError
from pagelens.training.data import Rows
from pagelens.training.settings import SFTSettings

CHECKPOINTS = "checkpoints"
# Files of the source checkpoint that configure serving rather than weights; copied to the output unchanged.
_SERVING_FILES = ("preprocessor_config.json", "chat_template.json", "chat_template.jinja")


def training_chat_template() -> str:
    """Qwen2.5-VL's chat template with generation markers around the assistant's turns (kept in this package)."""
    return (files("pagelens.training") / "chat_template.jinja").read_text(encoding="utf-8")


def check_model_folder(folder: Path) -> Path:
    """`folder` as a Qwen2.5-VL checkpoint folder, or BadInputError naming it and the fix."""
    folder = Path(folder).expanduser()
    config = folder / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        raise BadInputError(f"model folder {folder} has no readable config.json; give the local folder of a "
                            f"Qwen2.5-VL checkpoint (`pagelens tiny-model qwen2.5-vl DIR` writes a tiny one).") \
            from None
    if model_type != "qwen2_5_vl":
        raise BadInputError(f"model folder {folder} holds a {model_type!r} model, not a Qwen2.5-VL one; give the "
                            f"folder of a Qwen2.5-VL checkpoint.")
    return folder


def image_only_processor(folder: Path, settings: SFTSettings):
    """Qwen2.5-VL's processor over the checkpoint's tokenizer and the PIL image processor, with no video processor."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        # ProcessorMixin takes its parts from this signature: image processor and tokenizer, no video processor.
        def __init__(self, image_processor, tokenizer, chat_template=None):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.chat_template is None:  # released checkpoints keep it beside the processor config
        for name in ("chat_template.jinja", "chat_template.json"):
            if (folder / name).is_file():
                text = (folder / name).read_text(encoding="utf-8")
                tokenizer.chat_template = json.loads(text)["chat_template"] if name.endswith(".json") else text
                break
        else:
            raise BadInputError(f"model folder {folder} has no chat template; add the checkpoint's "
                                f"chat_template.jinja or chat_template.json.")
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(
        folder, min_pixels=settings.min_pixels, max_pixels=settings.max_pixels, local_files_only=True)
    return ImageOnlyProcessor(image_processor, tokenizer, chat_template=training_chat_template())


def row_dataset(rows: list[dict]):
    """The rows as a `datasets.Dataset` for TRL's vision collator, each row's images opened when it is drawn.

    Messages are stored as JSON text: Arrow would give every content part the union of all parts' keys, and the
    chat template takes any part with an `image` key for an image.
    """
    from datasets import Dataset

    def decode(batch: dict) -> dict:
        from PIL import Image

        images = []
        for paths in batch["images"]:
            opened = []
            for path in paths:
                with Image.open(path) as image:
                    opened.append(image.convert("RGB"))
            images.append(opened)
        return {"messages": [json.loads(text) for text in batch["messages"]], "images": images}

    table = Dataset.from_dict({"messages": [json.dumps(row["messages"]) for row in rows],
                               "images": [row["images"] for row in rows]})
    return table.with_transform(decode)


@dataclass(frozen=True)
class SFTResult:
    """What a finished SFT run wrote and did."""

    out: Path
    steps: int
    resumed_from: int | None
    final_loss: float | None


def output_folder(out: Path, model: Path) -> Path:
    """`out` as the folder a trained model is written to: not a file, and not the model it starts from."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file; give a folder for the trained model.")
    if out.resolve() == Path(model).expanduser().resolve():
        raise BadInputError(f"--out {out} is the model folder itself; give a new folder for the trained model.")
    return out


def train_sft(model: Path, rows: Rows, out: Path, settings: SFTSettings = SFTSettings(), *,
              progress: bool = True, device: str = "auto") -> SFTResult:
    """Fine-tune the Qwen2.5-VL checkpoint `model` on `rows` and write the trained checkpoint to `out`.

    Rerunning with the same `out` after an interruption resumes from its newest checkpoint. `device` is "auto"
    (CUDA when torch sees it), "cuda" or "cpu".
    """
    from trl import SFTConfig, SFTTrainer

    folder = check_model_folder(model)
    if not rows.rows:
        raise BadInputError(f"no training rows: {rows.summary()}; record answered runs with `pagelens ask "
                            f"--trajectory FILE.jsonl` or relax the filters.")
    out = output_folder(out, folder)
    processor = image_only_processor(folder, settings)
    _check_same_text(processor, rows.rows, folder)
    policy, cuda = load_model(folder, device)
    if settings.freeze_vision:  # SPEC §4: vision tower frozen (the patch merger too: it belongs to the tower)
        policy.model.visual.requires_grad_(False)

    checkpoints = out / CHECKPOINTS
    resume = _last_complete_checkpoint(checkpoints)
    config = SFTConfig(
        output_dir=str(checkpoints),
        assistant_only_loss=True,  # SPEC §4 SFT stage: only assistant tokens trained
        learning_rate=settings.learning_rate,  # SPEC §4 SFT stage: 5e-7
        lr_scheduler_type=settings.scheduler,  # SPEC §4 SFT stage: cosine
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps in transformers 5
        num_train_epochs=settings.epochs,  # SPEC §4 SFT stage: 1
        max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        activation_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=cuda,
        use_cpu=not cuda,
        max_length=None,  # truncating a trajectory could cut its images' tokens from their pixels
        remove_unused_columns=False,
        dataloader_num_workers=settings.loader_workers,
        report_to="none",
        disable_tqdm=not (progress and sys.stderr.isatty()),  # piped: the loss lines without the bar
    )
    trainer = SFTTrainer(model=policy, args=config, train_dataset=row_dataset(rows.rows), processing_class=processor,
                         peft_config=_lora_config(settings) if settings.lora else None)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    trained = trainer.model
    if settings.lora:
        trained = trained.merge_and_unload()
    save_servable(trained, processor.tokenizer, folder, out)
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    (out / "trainer_state.json").write_text(json.dumps(
        {"global_step": state.global_step, "resumed_from": _step(resume), "log_history": state.log_history},
        indent=1))
    shutil.rmtree(checkpoints, ignore_errors=True)
    return SFTResult(out=out, steps=state.global_step, resumed_from=_step(resume),
                     final_loss=losses[-1] if losses else None)


def load_model(folder: Path, device: str) -> tuple[Any, bool]:
    """The Qwen2.5-VL checkpoint in `folder` (checked) on `device` ("auto", "cpu" or "cuda"): bf16 on CUDA,
    float32 on the CPU; and whether it is on CUDA."""
    import torch
    from transformers import AutoModelForImageTextToText

    if device not in ("auto", "cpu", "cuda"):
        raise BadInputError(f"device {device!r} is not known; use 'auto', 'cpu' or 'cuda'.")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device 'cuda' was asked for but torch sees no CUDA GPU; use device 'cpu' or 'auto'.")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            folder, dtype=torch.bfloat16 if cuda else torch.float32, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"model folder {folder} could not be loaded ({exc}); give a complete Qwen2.5-VL "
                            f"checkpoint folder.") from None
    return model.to("cuda" if cuda else "cpu"), cuda


def _check_same_text(processor, rows: list[dict], folder: Path) -> None:
    """Each row renders to the same text with the training template as with the checkpoint's own template."""
    from jinja2 import TemplateError

    for row in rows:
        try:
            served = processor.tokenizer.apply_chat_template(row["messages"], tokenize=False)
            trained = processor.apply_chat_template(row["messages"], tokenize=False)
        except TemplateError as exc:
            raise BadInputError(f"run {row['id']} cannot be rendered by the chat template of {folder} ({exc}); "
                                f"record it again with `pagelens ask --trajectory`.") from None
        if served != trained:
            raise BadInputError(f"the chat template of {folder} renders run {row['id']} differently from "
                                f"Qwen2.5-VL's released template, which training uses; give a checkpoint with "
                                f"Qwen2.5-VL's own chat template.")


def _lora_config(settings: SFTSettings):
    from peft import LoraConfig

    # The language model's projections only: the vision tower stays frozen (SPEC §4).
    return LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")


def _last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (it is written last). A kill mid-save leaves a
    checkpoint without it, which is removed: resuming from it would fail on the files it lacks."""
    complete = []
    for checkpoint in checkpoints.glob("checkpoint-*"):
        if (checkpoint / "trainer_state.json").is_file():
            complete.append(checkpoint)
        else:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return max(complete, key=_step, default=None)


def _step(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else None


def save_servable(model, tokenizer, source: Path, out: Path) -> None:
    """Write the trained weights and the source's serving files (tokenizer, its chat template, image processor)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name in _SERVING_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
