"""SPEC §4 token scopes on the real Qwen2 vocabulary: tags found by character position, and the reference's
token-sequence match that misses the tags byte-level BPE merges with their neighbours."""

from __future__ import annotations

import pytest
import torch

from pagelens.errors import BadInputError
from pagelens.training.rewards import REWARD_KEYS
from pagelens.training.scopes import REWARD_COLUMNS, reward_scopes, token_bytes

# EVisRAG's own reply format (SPEC §2): each tag on its own line, the reply closed by the end-of-turn token.
EVISRAG_REPLY = (
    "<observe>\nImage 1 shows a table of revenue by year.\n</observe>\n"
    "<evidence>\n[1]: the table lists revenue of 4.2 million for 2023\n[2]: no relevant information\n</evidence>\n"
    "<think>\nImage 1 gives the 2023 revenue: 4.2 million.\n</think>\n"
    "<answer>4.2 million</answer><|im_end|>"
)
ROW = {column: row for row, column in enumerate(REWARD_COLUMNS)}


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen):
    """The tiny checkpoint's tokenizer: the real Qwen2 vocabulary with the Qwen2.5-VL added tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def token_of(tokenizer, ids: list[int], tag: str) -> int:
    """Independently of pagelens: the token holding the tag's `<`, the last k whose suffix decode still has the tag."""
    return max(k for k in range(len(ids)) if tag in tokenizer.decode(ids[k:]))


def span(mask) -> tuple[int, int]:
    """(first, past-last) index of a contiguous True run."""
    where = mask.nonzero().flatten().tolist()
    assert where == list(range(where[0], where[-1] + 1)), "a scope is one contiguous run"
    return where[0], where[-1] + 1


def test_the_columns_are_the_rewards_columns():
    assert REWARD_COLUMNS == REWARD_KEYS == ("accuracy", "evidence", "format", "overlong", "isObserve", "isThink")


def test_characters_mode_finds_every_tag_in_evisrag_format(tokenizer):
    ids = encode(tokenizer, EVISRAG_REPLY)
    scopes = reward_scopes(ids, tokenizer)
    assert scopes.shape == (6, len(ids)) and scopes.dtype == torch.bool
    think, evidence, answer = (token_of(tokenizer, ids, tag) for tag in ("<think>", "<evidence>", "<answer>"))
    assert tokenizer.decode(ids[think]).startswith("<") and tokenizer.decode(ids[think - 1]).endswith(">\n")
    # accuracy starts exactly at the token where <think> begins and runs to the end.
    assert span(scopes[ROW["accuracy"]]) == (think, len(ids))
    assert span(scopes[ROW["evidence"]]) == (0, think)
    assert span(scopes[ROW["format"]]) == span(scopes[ROW["overlong"]]) == (0, len(ids))
    assert span(scopes[ROW["isObserve"]]) == (0, evidence)
    assert span(scopes[ROW["isThink"]]) == (think, answer)
    # accuracy and evidence split the reply between them.
    assert not (scopes[ROW["accuracy"]] & scopes[ROW["evidence"]]).any()
    assert (scopes[ROW["accuracy"]] | scopes[ROW["evidence"]]).all()


def test_reference_mode_misses_the_merged_tags_and_the_scopes_become_the_whole_reply(tokenizer):
    ids = encode(tokenizer, EVISRAG_REPLY)
    # The bug's cause: `>\n` is one token, so the tag's own token sequence (ending in a bare `>`) is not in the reply.
    for tag in ("<think>", "<evidence>"):
        needle = encode(tokenizer, tag)
        assert tag in tokenizer.decode(ids)
        assert not any(ids[i:i + len(needle)] == needle for i in range(len(ids)))
    scopes = reward_scopes(ids, tokenizer, mode="reference")
    # accuracy (from <think>) and evidence (up to <think>) should split the reply; both cover all of it instead.
    for column in ("accuracy", "evidence", "format", "overlong", "isObserve"):
        assert scopes[ROW[column]].all(), column
    # <answer>4.2 is not merged (`>` then `4`): only isThink's end is found, and its start falls back to 0.
    assert span(scopes[ROW["isThink"]]) == (0, token_of(tokenizer, ids, "<answer>"))


def test_a_tag_merged_with_the_space_before_it_starts_at_the_merged_token(tokenizer):
    ids = encode(tokenizer, "<evidence>[1]: yes</evidence> <think>The answer is yes.</think> <answer>yes</answer>")
    think = token_of(tokenizer, ids, "<think>")
    assert tokenizer.decode(ids[think]) == " <"
    assert span(reward_scopes(ids, tokenizer)[ROW["accuracy"]]) == (think, len(ids))
    assert reward_scopes(ids, tokenizer, mode="reference")[ROW["accuracy"]].all()


def test_both_modes_agree_when_no_tag_is_merged(tokenizer):
    ids = encode(tokenizer, "<observe> x</observe>\n\n<evidence> [1]: y</evidence>\n\n<think> z</think>\n\n"
                            "<answer> w</answer>")
    characters = reward_scopes(ids, tokenizer)
    assert characters.equal(reward_scopes(ids, tokenizer, mode="reference"))
    think, answer = token_of(tokenizer, ids, "<think>"), token_of(tokenizer, ids, "<answer>")
    assert span(characters[ROW["isThink"]]) == (think, answer)


def test_tokens_that_split_a_character_keep_exact_offsets(tokenizer):
    text = ("<observe>龘齉 🦜</observe>\n<evidence>\n[1]: 龘\n</evidence>\n"
            "<think>\n齉🦜\n</think>\n<answer>🦜</answer>")
    ids = encode(tokenizer, text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "some tokens hold part of a character"
    assert b"".join(token_bytes(ids, tokenizer)).decode("utf-8") == tokenizer.decode(ids) == text
    scopes = reward_scopes(ids, tokenizer)
    assert span(scopes[ROW["isObserve"]]) == (0, token_of(tokenizer, ids, "<evidence>"))
    assert span(scopes[ROW["isThink"]]) == (token_of(tokenizer, ids, "<think>"), token_of(tokenizer, ids, "<answer>"))


@pytest.mark.parametrize("mode", ["characters", "reference"])
def test_missing_tags_fall_back_to_the_reply_s_ends(tokenizer, mode):
    ids = encode(tokenizer, "I could not read the pages.")
    assert reward_scopes(ids, tokenizer, mode=mode).all()
    ids = encode(tokenizer, "<evidence> [1]: y</evidence>\n\n<think> z</think> and no answer")
    scopes = reward_scopes(ids, tokenizer, mode=mode)
    assert span(scopes[ROW["isThink"]]) == (token_of(tokenizer, ids, "<think>"), len(ids))


def test_an_empty_reply_has_empty_scopes_and_an_unknown_mode_is_refused(tokenizer):
    assert reward_scopes([], tokenizer).shape == (6, 0)
    with pytest.raises(BadInputError, match="scope mode"):
        reward_scopes(encode(tokenizer, "x"), tokenizer, mode="tokens")  # type: ignore[arg-type]
