"""SFT with TRL on the tiny Qwen2.5-VL: the training template and loss mask, resuming after a kill, LoRA, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pagelens.training.data import read_rows
from pagelens.training.settings import SFTSettings
from pagelens.training.sft import image_only_processor


@pytest.fixture(scope="module")
def tiny_small(tmp_path_factory) -> Path:
    """The tiny Qwen2.5-VL with the 400-token vocabulary: training steps take a fraction of a second on the CPU."""
    from pagelens.training.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_small"), vocabulary="small")


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _render(processor, row: dict) -> tuple[Any, Any]:
    """The row's token ids as training sees them, and its assistant-token (loss) mask."""
    from PIL import Image

    images = iter([Image.open(path).convert("RGB") for path in row["images"]])
    messages = [{**m, "content": [dict(part) for part in m["content"]]} for m in row["messages"]]
    for part in (p for m in messages for p in m["content"] if p["type"] == "image"):
        part["image"] = next(images)
    out = processor.apply_chat_template([messages], tokenize=True, return_dict=True, return_tensors="pt",
                                        return_assistant_tokens_mask=True)
    return out, out["assistant_masks"][0].bool()


def test_the_loss_covers_exactly_the_assistant_turns_and_the_text_is_what_serving_renders(tiny_qwen, make_run,
                                                                                         write_runs):
    row = read_rows([write_runs([make_run("What was revenue in 2023?", "4.2 million", number=1)])]).rows[0]
    processor = image_only_processor(tiny_qwen, SFTSettings())

    # The training template renders the same text as the checkpoint's own (served) template.
    assert "endgeneration" not in processor.tokenizer.chat_template and "endgeneration" in processor.chat_template
    assert (processor.apply_chat_template(row["messages"], tokenize=False)
            == processor.tokenizer.apply_chat_template(row["messages"], tokenize=False))

    out, mask = _render(processor, row)
    ids = out["input_ids"][0]
    tokenizer = processor.tokenizer
    # Every assistant turn and its end token, nothing else: no instruction, no image, no turn header.
    replies = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
    assert tokenizer.decode(ids[mask]) == "".join(reply + "<|im_end|>" for reply in replies)
    # Image pads: one per merged 28x28 patch of each image at its recorded size (532x700 and 1008x224).
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == pad).sum()) == 19 * 25 + 36 * 8
    assert out["image_grid_thw"].tolist() == [[1, 50, 38], [1, 16, 72]]


def test_a_rejected_turn_stays_in_context_and_out_of_the_loss(tiny_qwen, make_run, write_runs):
    from pagelens.prompts.loader import load_template

    run = make_run("What was revenue in 2023?", "4.2 million", number=1)
    rejected = "<think>Zoom in.</think><bbox>[10, 90, 300, 20]</bbox>"
    retry = load_template("pagelens_invalid_action").render(reason="the box [10, 90, 300, 20] is inverted")
    run["messages"][3:3] = [{"role": "assistant", "content": rejected},
                            {"role": "user", "content": [{"type": "text", "text": retry}], "retry": True}]
    row = read_rows([write_runs([run])]).rows[0]
    assert [m.get("train", True) for m in row["messages"] if m["role"] == "assistant"] == [True, False, True, True]

    processor = image_only_processor(tiny_qwen, SFTSettings())
    served = processor.tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert processor.apply_chat_template(row["messages"], tokenize=False) == served and rejected in served
    out, mask = _render(processor, row)
    accepted = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant" and "train" not in m]
    assert processor.tokenizer.decode(out["input_ids"][0][mask]) == "".join(r + "<|im_end|>" for r in accepted)


def _train(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pagelens", "train", "sft", *args], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _train_to_end(folder: Path, *args: str) -> None:
    proc = _train(folder, *args)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr


@pytest.mark.slow
def test_sft_resumes_after_a_kill_and_writes_a_servable_checkpoint(tiny_small, make_run, write_runs, tmp_path):
    path = write_runs([make_run(f"question {i}?", f"answer {i}", number=i) for i in range(3)])
    out = tmp_path / "sft"
    args = ["--model", str(tiny_small), "--data", str(path), "--out", str(out), "--lr", "1e-3", "--max-steps", "30",
            "--save-steps", "2", "--device", "cpu"]

    first = _train(tmp_path, *args)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert not (out / "config.json").exists(), "the run finished before the kill; nothing was resumed"
    saved = max(int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*/trainer_state.json"))

    second = _train(tmp_path, *args)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 30
    assert state["resumed_from"] >= saved >= 2
    assert f"resumed from the checkpoint at step {state['resumed_from']}" in stderr
    assert "loss" in stderr + stdout  # progress and loss reach the terminal
    assert not (out / "checkpoints").exists()

    # The output reloads offline through the Auto classes, with the released chat template (no training markers).
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    assert "endgeneration" not in AutoTokenizer.from_pretrained(out, local_files_only=True).chat_template
    assert AutoImageProcessor.from_pretrained(out, local_files_only=True).merge_size == 2
    # The vision tower stayed frozen (SPEC §4); the language model learned.
    before, after = _weights(tiny_small), _weights(out)
    vision = [name for name in before if name.startswith("visual.")]
    assert vision and all((before[name] == after[name]).all() for name in vision)
    assert any((before[name] != after[name]).any() for name in before if name not in vision)


@pytest.mark.slow
def test_lora_adapters_are_merged_into_a_plain_checkpoint(tiny_small, make_run, write_runs, tmp_path):
    path = write_runs([make_run("question?", "answer", number=1)])
    out = tmp_path / "lora"
    _train_to_end(tmp_path, "--model", str(tiny_small), "--data", str(path), "--out", str(out), "--lora",
                  "--lr", "1e-2", "--max-steps", "2", "--device", "cpu")

    after, before = _weights(out), _weights(tiny_small)
    assert set(after) == set(before)  # no adapter weights left: merged
    changed = [name for name in before if not (before[name] == after[name]).all()]
    # only the language model's projections: LoRA targets them, and the vision tower stays frozen
    assert changed and all(name.startswith("model.layers.") and "_proj." in name for name in changed)


@pytest.mark.slow
def test_seed_sets_the_data_order_so_a_run_repeats_exactly(tiny_small, make_run, write_runs, tmp_path):
    path = write_runs([make_run(f"question {i}?", f"answer {i}", number=i) for i in range(4)])

    def trained(seed: int, name: str) -> dict:
        _train_to_end(tmp_path, "--model", str(tiny_small), "--data", str(path), "--out", str(tmp_path / name),
                      "--lr", "1e-2", "--max-steps", "2", "--seed", str(seed), "--device", "cpu")
        return _weights(tmp_path / name)

    first, again, other = trained(1, "first"), trained(1, "again"), trained(0, "other")
    assert all((first[name] == again[name]).all() for name in first)
    # Seed 0 trains its two steps on other rows than seed 1 does, so the weights part.
    assert any((first[name] != other[name]).any() for name in first)


def test_bad_model_folder_or_missing_image_is_one_sentence_and_exit_2(cli, make_run, write_runs, runs_dir, tmp_path):
    path = write_runs([make_run("q1", "a", number=1)])
    not_qwen = tmp_path / "bert"
    not_qwen.mkdir()
    (not_qwen / "config.json").write_text(json.dumps({"model_type": "bert"}))

    proc = cli("train", "sft", "--model", str(not_qwen), "--data", str(path), "--out", str(tmp_path / "o"),
               check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: model folder {not_qwen} holds a 'bert' model, not a Qwen2.5-VL one; give the folder of a "
        f"Qwen2.5-VL checkpoint."]

    config = tmp_path / "tiny-config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    image = json.loads(path.read_text())["images"][0]["path"]
    (runs_dir / image).unlink()
    proc = cli("train", "sft", "--model", str(config), "--data", str(path), "--out", str(tmp_path / "o"),
               check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: trajectory file {path} line 1 points at image {image}")
    assert lines[0].endswith("copy the images/ folder beside the trajectory file.")

    proc = cli("train", "sft", "--model", str(config), "--data", str(path), "--out", str(tmp_path / "o"),
               "--warmup", "1.5", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: warm-up ratio 1.5 is outside [0, 1); give for example 0.03."]


def test_tiny_model_command_writes_a_checkpoint_that_loads_offline(cli, tmp_path):
    proc = cli("tiny-model", "qwen2.5-vl", str(tmp_path / "tiny"), "--vocab", "small")
    assert f"to {tmp_path / 'tiny'}" in proc.stdout
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny", local_files_only=True)
    assert model.config.model_type == "qwen2_5_vl"


def test_tiny_model_command_keeps_the_most_frequent_qwen_tokens_and_widens(cli, tmp_path):
    cli("tiny-model", "qwen2.5-vl", str(tmp_path / "tiny"), "--vocab-size", "4096", "--hidden-size", "128")
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny", local_files_only=True)
    assert len(tokenizer) == 4096 + 22 and tokenizer.convert_tokens_to_ids("<|image_pad|>") == 4096 + 12
    text = "<search>What torque is specified for the KX-40 blade root bolts? 安全</search>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text and max(ids) < 4096  # rare words and scripts are spelled in pieces
    assert len(ids) < len(text.encode()) / 2  # frequent words stay whole
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny", local_files_only=True)
    assert model.config.text_config.hidden_size == 128 and model.config.vision_config.out_hidden_size == 128
    assert sum(model.config.text_config.rope_parameters["mrope_section"]) == 128 // 4 // 2

    proc = cli("tiny-model", "qwen2.5-vl", str(tmp_path / "bad"), "--vocab", "small", "--vocab-size", "300",
               check=False)
    assert proc.returncode == 2 and "applies to the 'qwen' vocabulary" in proc.stderr
    proc = cli("tiny-model", "qwen2.5-vl", str(tmp_path / "bad"), "--hidden-size", "96", check=False)
    assert proc.returncode == 2 and "not a positive multiple of 64" in proc.stderr
    assert not (tmp_path / "bad").exists()
