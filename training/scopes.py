"""RS-GRPO token scopes (SPEC §4): which response tokens each EVisRAG reward column trains.

Each reward of SPEC §3 is credited to the part of the reply it judges: accuracy from `<think>` to the end,
evidence from the start to just before `<think>`, format and overlong the whole reply, isObserve from the start to
just before `<evidence>`, isThink from `<think>` to just before `<answer>`. A missing start tag starts a scope at
the reply's first token and a missing end tag runs it to the last, as in the reference.

pagelens finds each tag by its position in the decoded sampled text and maps that position to the token that
holds the tag's `<`. Positions are counted in bytes of the UTF-8 text, joined from each sampled token's own
bytes, so a token that ends inside a multi-byte character still has an exact offset; the tags are ASCII, and an
ASCII byte is never part of a multi-byte character, so a byte match is a character match. A token that straddles
a boundary (`>\\n<th`, ` <`) belongs to the scope that starts there.

Reference bug (OpenBMB/VisRAG's RS-GRPO reward manager; mode "reference" reproduces it for parity checks): it finds
a tag by searching the reply's token ids for `tokenizer.encode(tag)`. Byte-level BPE merges a tag with its
neighbours (`>\\n`, `>The`, ` <`, `><`), so the tag's own token sequence is usually absent from the reply: in
EVisRAG's own reply format, where each tag is followed by a newline, `<think>` and `<evidence>` are never found
and `<answer>` only when no merge touches it. The fallbacks then silently stretch accuracy, evidence, isObserve and
isThink over the whole reply, and every reward trains every token.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections.abc import Sequence
from typing import Literal

import torch

from pagelens.errors import BadInputError
from pagelens.training.rewards import REWARD_KEYS

# The reward columns, in the order of the rewards' and the advantages' columns (SPEC §3, §4).
REWARD_COLUMNS = REWARD_KEYS
ScopeMode = Literal["characters", "reference"]
# SPEC §4 scopes per column: (start tag, end tag), None meaning the reply's first / past its last token.
SCOPE_TAGS: dict[str, tuple[str | None, str | None]] = {
    "accuracy": ("<think>", None),
    "evidence": (None, "<think>"),
    "format": (None, None),
    "overlong": (None, None),
    "isObserve": (None, "<evidence>"),
    "isThink": ("<think>", "<answer>"),
}
_TAGS = ("<think>", "<evidence>", "<answer>")


def reward_scopes(token_ids: Sequence[int], tokenizer, *, mode: ScopeMode = "characters") -> torch.Tensor:
    """SPEC §4 scopes of one reply's sampled response tokens: a bool mask [len(REWARD_COLUMNS), L].

    `tokenizer` is the policy's (a Qwen2 byte-level BPE tokenizer). `mode` "characters" finds each tag in the
    decoded text; "reference" reproduces the reference's token-sequence match and its bug (see the module
    docstring).
    """
    if mode == "characters":
        found = _tags_by_characters(token_ids, tokenizer)
    elif mode == "reference":
        found = {tag: _tag_by_token_sequence(token_ids, tokenizer, tag) for tag in _TAGS}
    else:
        raise BadInputError(f"scope mode {mode!r} is not known; use 'characters' or 'reference'.")
    length = len(token_ids)
    scopes = torch.zeros(len(REWARD_COLUMNS), length, dtype=torch.bool)  # [R, L]
    for row, column in enumerate(REWARD_COLUMNS):
        start_tag, end_tag = SCOPE_TAGS[column]
        # SPEC §4: a missing start tag starts the scope at 0, a missing end tag runs it to the end.
        start = found[start_tag] if start_tag is not None and found[start_tag] is not None else 0
        end = found[end_tag] if end_tag is not None and found[end_tag] is not None else length
        scopes[row, start:end] = True
    return scopes


def token_bytes(token_ids: Sequence[int], tokenizer) -> list[bytes]:
    """The UTF-8 bytes each token contributes to the decoded text; joined they are the text's bytes.

    Added tokens (`<|im_end|>`, `<tool_call>`) give their content; every other token is a byte-level BPE string,
    one character per byte.
    """
    added = {index: token.content for index, token in tokenizer.added_tokens_decoder.items()}
    to_byte = _byte_decoder()
    pieces = []
    for index, token in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids)), strict=True):
        if index in added:
            pieces.append(added[index].encode("utf-8"))
            continue
        try:
            pieces.append(bytes(to_byte[char] for char in token))
        except (KeyError, TypeError):
            raise BadInputError(
                f"token id {index} ({token!r}) is not a byte-level BPE token; scopes need the policy's Qwen2 "
                f"tokenizer, give the tokenizer of the checkpoint that sampled the reply."
            ) from None
    return pieces


def _tags_by_characters(token_ids: Sequence[int], tokenizer) -> dict[str, int | None]:
    """The index of the token holding each tag's first character in the decoded text, or None when absent."""
    pieces = token_bytes(token_ids, tokenizer)
    text = b"".join(pieces)
    ends = list(itertools.accumulate(len(piece) for piece in pieces))  # ends[k]: byte offset just past token k
    found: dict[str, int | None] = {}
    for tag in _TAGS:
        offset = text.find(tag.encode("ascii"))
        found[tag] = bisect.bisect_right(ends, offset) if offset >= 0 else None
    return found


def _tag_by_token_sequence(token_ids: Sequence[int], tokenizer, tag: str) -> int | None:
    """The reference's match: where `tokenizer.encode(tag)` first occurs in the reply's ids, or None."""
    needle = list(tokenizer.encode(tag, add_special_tokens=False))
    ids = list(token_ids)
    for start in range(len(ids) - len(needle) + 1):
        if ids[start:start + len(needle)] == needle:
            return start
    return None


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's map from a token string's characters back to the bytes they stand for."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}
