"""`pagelens serve policy --backend vllm`: the `vllm serve` command sized for what a protocol sends, and its launch.

vLLM profiles memory for the largest request it is configured to accept, so the defaults (many images at the
model's own maximum resolution, the model's full context) waste GPU memory or fail to start (SPEC §7). The command
built here caps each of them at what the agent actually sends:

- `--limit-mm-per-prompt {"image": N, "video": 0}`: N = the images one request carries (SPEC §1: the 10 most
  recent for vrag and pagelens; SPEC §2: 5 pages for evisrag, one when its pages go as one image); no video.
- `--mm-processor-kwargs {"min_pixels": …, "max_pixels": …}`: the image area bounds pagelens resizes to
  (SPEC §1: 256·28·28 to 512·28·28), so the processor never resizes again and the token count per image is known.
- `--max-model-len`: the longest request plus its reply (formula in `needed_model_len`; a reply is `[policy]
  max_tokens`, what the agent asks for), in steps of 1024.

vLLM itself needs a CUDA GPU; it is an optional dependency (`pip install 'pagelens[vllm]'`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pagelens.errors import BadInputError, DependencyError
from pagelens.graph.settings import AgentSettings
from pagelens.tools.regions import MAX_PIXELS, MIN_PIXELS

# Qwen2.5-VL cuts images into 14-pixel patches and merges 2x2 of them into one token: one token per 28x28 pixels.
IMAGE_TOKEN_PIXELS = 28 * 28
# <|vision_start|> and <|vision_end|> around each image's tokens.
IMAGE_MARKER_TOKENS = 2
# The chat template's default system message, the protocol's instruction (the bundled ones are under 500 tokens;
# a --template may be longer) and the question.
PROMPT_TOKENS = 1024
# The text of one observation turn besides its image ("[image 3]", the invalid-action or answer-now message).
OBSERVATION_TOKENS = 128
# An image's extracted text when `page_text` sends it with the image, as delimited data (a dense page).
PAGE_TEXT_TOKENS = 1024
MODEL_LEN_STEP = 1024

NOT_INSTALLED = ("vLLM is not installed; it needs a CUDA GPU: pip install 'pagelens[vllm]' on a GPU machine, "
                 "or use --backend transformers.")


def images_per_prompt(agent: AgentSettings) -> int:
    """The most images one request to the policy carries under `agent`'s protocol."""
    if agent.protocol == "evisrag":
        # Concatenated pages go as one image, and weighted selection asks about one page per request (SPEC §6).
        return 1 if agent.single_image else min(agent.evisrag_pages, agent.max_images)
    return agent.max_images


def needed_model_len(agent: AgentSettings, max_pixels: int, reply: int) -> int:
    """Context length that fits the longest request and its reply (`reply` tokens: the max_tokens the policy asks
    for), rounded up to a multiple of 1024.

    Tokens = N · (max_pixels / (28·28) + 2 [+ page text])    the images, each at most max_pixels
           + PROMPT_TOKENS                                    system message, instruction, question
           + T · (reply + OBSERVATION_TOKENS)                 T earlier action turns: T = max_turns (multi-turn), 0
                                                              (evisrag); every reply taken at its full max_tokens
           + reply                                            the reply to this request
    e.g. pagelens with the defaults (reply 1024): 10·514 + 1024 + 6·1152 + 1024 = 14,100 → 14,336.
    """
    per_image = math.ceil(max_pixels / IMAGE_TOKEN_PIXELS) + IMAGE_MARKER_TOKENS
    if agent.page_text:
        per_image += PAGE_TEXT_TOKENS
    turns = 0 if agent.protocol == "evisrag" else agent.max_turns
    tokens = images_per_prompt(agent) * per_image + PROMPT_TOKENS + turns * (reply + OBSERVATION_TOKENS) + reply
    return math.ceil(tokens / MODEL_LEN_STEP) * MODEL_LEN_STEP


def served_name(model: str) -> str:
    """What clients call the model: a local checkpoint folder by its name, a Hugging Face model by its full name."""
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


def vllm_command(model: str, agent: AgentSettings, *, reply_tokens: int, host: str, port: int,
                 served_model_name: str | None, max_model_len: int | None, min_pixels: int,
                 max_pixels: int) -> list[str]:
    """The `vllm serve MODEL …` command line serving `model` for `agent`'s protocol, replies of up to
    `reply_tokens` (`[policy] max_tokens`)."""
    if not model.strip():
        raise BadInputError("the model is empty; give --model a checkpoint folder or a Hugging Face name.")
    if not 1 <= port <= 65535:
        raise BadInputError(f"port {port} is out of range; use 1 to 65535.")
    if not 0 < min_pixels <= max_pixels:
        raise BadInputError(f"--min-pixels {min_pixels} and --max-pixels {max_pixels} are not 0 < min <= max; "
                            f"use e.g. {MIN_PIXELS} and {MAX_PIXELS}.")
    images = images_per_prompt(agent)
    needed = needed_model_len(agent, max_pixels, reply_tokens)
    # Below the images and the prompt alone no request fits; a length between that and `needed` is the user's call
    # (replies and turns are budgeted at their maximum).
    smallest = images * max_pixels // IMAGE_TOKEN_PIXELS + PROMPT_TOKENS
    if max_model_len is not None and max_model_len < smallest:
        raise BadInputError(
            f"--max-model-len {max_model_len} cannot hold the {agent.protocol} protocol's {images} images and "
            f"prompt ({smallest} tokens); raise it, lower --max-pixels, or leave it out to get {needed}."
        )
    return [
        "vllm", "serve", model,
        "--served-model-name", served_model_name or served_name(model),
        "--host", host,
        "--port", str(port),
        "--limit-mm-per-prompt", json.dumps({"image": images, "video": 0}),
        "--mm-processor-kwargs", json.dumps({"min_pixels": min_pixels, "max_pixels": max_pixels}),
        "--max-model-len", str(max_model_len or needed),
    ]


def run_vllm(command: list[str]) -> int:
    """Run the `vllm serve` command until it exits; SIGINT, SIGTERM and SIGHUP go on to it; returns its exit status."""
    on_path = shutil.which("vllm") is not None
    if not on_path and importlib.util.find_spec("vllm") is None:
        raise DependencyError(NOT_INSTALLED)
    if command[0] == "vllm" and not on_path:
        # Installed in this interpreter without its script on PATH (a virtualenv that is not activated).
        command = [sys.executable, "-m", "vllm.entrypoints.cli.main", *command[1:]]
    # Its own session: a Ctrl-C at the terminal then reaches vLLM once, through this process, not twice (a second
    # SIGINT makes its HTTP server skip the graceful shutdown).
    process = subprocess.Popen(command, start_new_session=True)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        # vLLM shuts down cleanly on these (stops its engine processes, frees the GPU); this process waits for it
        # instead of dying first and leaving it running.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, lambda received, _frame: process.send_signal(received))
    try:
        status = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # A child killed by signal N reports -N; a shell would report 128 + N.
    return 128 - status if status < 0 else status
