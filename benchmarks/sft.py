"""SFT throughput and peak memory: the tiny Qwen2.5-VL on the CPU, a full-size Qwen2.5-VL-3B config on a GPU.

CPU: the tiny random-weight checkpoint (SPEC §8, 400-token vocabulary) trains `--steps` optimiser steps with
`pagelens.training.sft.train_sft` on synthetic pagelens-protocol trajectories (one 532x700 page and one 1008x224
crop each, as the extractive policy records them). Reported: trained tokens per second (every token of the
sequences, prompt and images included, over the wall time of the steps) and the process's peak RSS.

GPU (only when torch sees CUDA): one SFT step, forward and backward in bf16 with the vision tower frozen and AdamW,
of a random-weight model with Qwen2.5-VL-3B-Instruct's configuration (text: hidden 2048, 36 layers, 16 heads, 2 KV
heads, intermediate 11008, vocabulary 151,936; vision: depth 32, hidden 1280, out 2048) on the same kind of
sequence; tokens per second and peak CUDA memory. Untested where no GPU was available; it says so and skips.

    python benchmarks/sft.py [--steps 10]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw


def _trajectories(folder: Path, runs: int) -> Path:
    """`runs` pagelens-protocol runs in the SPEC §2c layout, with page-like images."""
    lines = []
    for number in range(runs):
        paths = []
        for size in ((532, 700), (1008, 224)):
            image = Image.new("RGB", size, "white")
            draw = ImageDraw.Draw(image)
            for row in range(10, size[1] - 10, 18):
                draw.text((12, row), f"line {row} of page {number}: revenue 4.{number} million", fill="black")
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            name = f"images/{hashlib.sha256(buffer.getvalue()).hexdigest()}.png"
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(buffer.getvalue())
            paths.append(name)
        question = f"What was the revenue in quarter {number}?"
        messages = [
            {"role": "user", "content": [{"type": "text", "text": "Answer the question by searching the pages. " * 20
                                          + question}]},
            {"role": "assistant", "content": f"<think>I need a page about the question.</think><search>{question}"
                                             f"</search>"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": paths[0]}}]},
            {"role": "assistant", "content": "<think>I zoom in.</think><bbox>[74, 162, 337, 170]</bbox>"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": paths[1]}}]},
            {"role": "assistant", "content": f"<evidence>\n[1]: the page\n[2]: revenue 4.{number} million\n"
                                             f"</evidence><answer>4.{number} million</answer>"},
        ]
        lines.append(json.dumps({"id": str(number), "messages": messages, "answer": f"4.{number} million",
                                 "images": [{"path": path} for path in paths]}))
    path = folder / "runs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_tiny(steps: int) -> None:
    from pagelens.training.tiny_model import build_tiny_qwen25vl
    from pagelens.training.data import read_rows
    from pagelens.training.settings import SFTSettings
    from pagelens.training.sft import train_sft

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_qwen25vl(tmp / "tiny", vocabulary="small")
        rows = read_rows([_trajectories(tmp / "runs", 8)])
        settings = SFTSettings(learning_rate=1e-3, max_steps=steps, save_steps=10 * steps, logging_steps=steps)
        train_sft(model, rows, tmp / "out", settings, progress=False, device="cpu")
        history = json.loads((tmp / "out" / "trainer_state.json").read_text())["log_history"]
    # TRL counts every token of the sequences (prompt and image pads included); the runtime covers the steps only.
    tokens = max(entry.get("num_tokens", 0) for entry in history)
    seconds = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"cpu  tiny Qwen2.5-VL (small vocabulary), {steps} steps of {tokens / steps:,.0f} tokens: "
          f"{tokens / seconds:,.0f} tokens/s ({seconds:.1f} s)  peak RSS {peak_mb:,.0f} MB")


def gpu_3b() -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu  Qwen2.5-VL-3B config: skipped, torch sees no CUDA GPU (this branch is untested without one)")
        return
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from pagelens.training.tiny_model import build_tiny_qwen25vl
    from pagelens.training.data import read_rows
    from pagelens.training.settings import SFTSettings
    from pagelens.training.sft import image_only_processor, row_dataset
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                     "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                         "mrope_section": [16, 24, 24]},
                     "tie_word_embeddings": True},
        vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 2048, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112},
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = build_tiny_qwen25vl(tmp / "tokenizer", vocabulary="qwen")  # the real vocabulary and template
        rows = read_rows([_trajectories(tmp / "runs", 1)])
        processor = image_only_processor(tiny, SFTSettings())
        batch = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)(
            [row_dataset(rows.rows)[0]])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.model.visual.requires_grad_(False)  # SPEC §4: vision tower frozen
    model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-7)
    batch = {key: value.to("cuda") for key, value in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    tokens = int(batch["attention_mask"].sum())
    for _ in range(2):  # the first step compiles kernels and allocates AdamW's state; the second is the one timed
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    print(f"gpu  Qwen2.5-VL-3B config, bf16, one SFT step of {tokens} tokens on {torch.cuda.get_device_name()}: "
          f"{tokens / seconds:,.0f} tokens/s ({seconds:.2f} s)  peak CUDA memory {peak_gb:.1f} GiB "
          f"(weights and bf16 AdamW states included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps of the CPU run")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}")
    cpu_tiny(args.steps)
    gpu_3b()


if __name__ == "__main__":
    main()
