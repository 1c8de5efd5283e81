"""Rewards (SPEC §3): EVisRAG's rule-based terms and VRAG-RL's composite reward.

EVisRAG's terms score one response against a ground truth that is itself a full tagged response (its `<evidence>`
and `<answer>` are the gold). They match the reference's `sum_all` (OpenBMB/VisRAG), quirks included, so that a
policy trained here sees the signal the published checkpoints saw (tests/data/vectors holds its values):
- accuracy is a token F1 over SETS of tokens (evaluation F1, SPEC §5, counts tokens);
- evidence compares raw gold text with `no relevant information` to pick a slot's weight, scores slots 1 to 6
  only, and divides by the weight sum only when the gold has fewer than 6 slots (a 6-slot gold is unnormalised);
- a short gold span is matched as a substring of the generated span, so `[i]:` with a longer text still scores.
`accuracy` and `evidence` are reported ×3, as the reference reports them; `overall` is the sum of all six terms.

Each term is also a TRL reward function `(completions, **kwargs) -> list[float]` (completions as strings or as
one-message lists; the dataset's `ground_truth` column; `completion_ids` for the length), whose sum over the six
terms is `overall`.

VRAG-RL's reward combines the format gate, an LLM judge's verdict (pagelens.training.judge) and the nDCG of the
pages the trajectory showed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pagelens.training.metrics import dcg, normalize_answer

REWARD_KEYS = ("accuracy", "evidence", "format", "overlong", "isObserve", "isThink")
# SPEC §3: accuracy and evidence count three times in `overall`, and are reported already multiplied.
TERM_WEIGHT = 3.0
NO_RELEVANT_INFORMATION = "no relevant information"
# SPEC §3 evidence: a real finding weighs 3, a `no relevant information` slot 1; golds of 5+ words use set-F1.
FINDING_WEIGHT, EMPTY_WEIGHT, LONG_GOLD_WORDS = 3.0, 1.0, 5
# The reference scores evidence slots [1] to [6].
EVIDENCE_SLOTS = 6
# SPEC §3 overlong: max 1536 tokens, buffer 512, min 200.
MAX_RESPONSE_TOKENS, OVERLONG_BUFFER, MIN_RESPONSE_TOKENS = 1536, 512, 200
_FORMAT = re.compile(
    r"<observe>.*?</observe>\s*<evidence>.*?</evidence>\s*<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL
)
_FORMAT_TAGS = ("observe", "evidence", "think", "answer")
# SPEC §3 isObserve: the evidence markers [1]…[5] have no place in <observe>.
_OBSERVE_MARKERS = tuple(f"[{i}]" for i in range(1, 6))
_VRAG_SEARCH = re.compile(r"<search>.*?</search>", re.DOTALL)
_VRAG_ANSWER = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def _inside(text: str, tag: str) -> str | None:
    """The text between the first `<tag>` and the first `</tag>` after it, or None when either is missing."""
    if f"<{tag}>" not in text or f"</{tag}>" not in text:
        return None
    return text.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]


def set_f1(prediction: str, gold: str) -> float:
    """Token F1 over the SETS of normalised tokens (SPEC §3, as the reference's reward computes it)."""
    predicted, expected = set(normalize_answer(prediction).split()), set(normalize_answer(gold).split())
    same = len(predicted & expected)
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def answer_score(response: str, ground_truth: str) -> float:
    """SPEC §3 accuracy, unweighted: set-F1 of the `<answer>` texts; 0 without `<answer>…</answer>`.

    A ground truth without `<answer>` tags is taken as the gold answer itself.
    """
    answer = _inside(response, "answer")
    if answer is None:
        return 0.0
    gold = _inside(ground_truth, "answer")
    return set_f1(answer, ground_truth if gold is None else gold)


def _slot(evidence: str, index: int) -> str | None:
    """The text of slot `[index]:` up to the next `[index+1]`, stripped; None when the slot is missing."""
    marker = f"[{index}]:"
    if marker not in evidence:
        return None
    return evidence.split(marker, 1)[1].split(f"[{index + 1}]", 1)[0].strip()


def evidence_score(response: str, ground_truth: str) -> float:
    """SPEC §3 evidence, unweighted: per gold slot, set-F1 (gold of 5+ words) or gold-in-generated (shorter),
    weighted 3 for a finding and 1 for `no relevant information`; 0 without `<evidence>…</evidence>`."""
    generated, gold_evidence = _inside(response, "evidence"), _inside(ground_truth, "evidence")
    if generated is None or gold_evidence is None:
        return 0.0
    score = total_weight = 0.0
    for index in range(1, EVIDENCE_SLOTS + 1):
        gold = _slot(gold_evidence, index)
        if gold is None:
            # SPEC §4 reference quirk: normalised only here, when the slots run out before the sixth.
            return score / total_weight if total_weight > 0 else score
        weight = EMPTY_WEIGHT if gold == NO_RELEVANT_INFORMATION else FINDING_WEIGHT
        total_weight += weight
        span = _slot(generated, index)
        if span is None:
            continue
        if len(gold.split()) >= LONG_GOLD_WORDS:
            score += weight * set_f1(span, gold)
        else:
            score += weight * float(normalize_answer(gold) in normalize_answer(span))
    return score


def format_score(response: str) -> float:
    """SPEC §3 format: 1 iff observe, evidence, think, answer fill the response in order, each tag exactly once."""
    if not _FORMAT.fullmatch(response):
        return 0.0
    once = all(response.count(f"<{tag}>") == 1 and response.count(f"</{tag}>") == 1 for tag in _FORMAT_TAGS)
    return 1.0 if once else 0.0


def overlong_score(response_length: int, max_length: int = MAX_RESPONSE_TOKENS, buffer: int = OVERLONG_BUFFER,
                   min_length: int = MIN_RESPONSE_TOKENS) -> float:
    """SPEC §3 overlong: −1 below `min_length` tokens, 0 up to max − buffer, linear to −1 at max, −1 beyond."""
    if response_length < min_length:
        return -1.0
    expected = max_length - buffer
    if response_length <= expected:
        return 0.0
    if response_length <= max_length:
        return (expected - response_length) / buffer
    return -1.0


def observe_penalty(response: str) -> float:
    """SPEC §3 isObserve: −1 if the `<observe>` text holds an evidence marker [1]…[5], else 0."""
    observe = _inside(response, "observe")
    return -1.0 if observe is not None and any(marker in observe for marker in _OBSERVE_MARKERS) else 0.0


def think_penalty(response: str) -> float:
    """SPEC §3 isThink: −1 if the `<think>` text equals the `<answer>` text exactly, else 0."""
    think, answer = _inside(response, "think"), _inside(response, "answer")
    return -1.0 if think is not None and answer is not None and think == answer else 0.0


def evisrag_rewards(response: str, ground_truth: str, response_length: int) -> dict[str, float]:
    """All SPEC §3 EVisRAG terms of one response, reported as the reference's `sum_all` reports them.

    >>> gold = "<observe>x</observe><evidence>[1]: 41 percent</evidence><think>y</think><answer>41 percent</answer>"
    >>> rewards = evisrag_rewards(gold, gold, 300)
    >>> rewards["overall"], rewards["accuracy"], rewards["evidence"]
    (7.0, 3.0, 3.0)
    """
    rewards = {
        "accuracy": TERM_WEIGHT * answer_score(response, ground_truth),
        "evidence": TERM_WEIGHT * evidence_score(response, ground_truth),
        "format": format_score(response),
        "overlong": overlong_score(response_length),
        "isObserve": observe_penalty(response),
        "isThink": think_penalty(response),
    }
    # SPEC §3: overall = 3·accuracy + 3·evidence + overlong + format + isObserve + isThink (max 7)
    rewards["overall"] = sum(rewards.values())
    return rewards


# TRL reward functions: `completions` are strings (standard datasets) or one-message lists (conversational).
def _text(completion: str | list[dict]) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _texts(completions: Sequence[str | list[dict]]) -> list[str]:
    return [_text(completion) for completion in completions]


def accuracy_reward(completions: Sequence[str | list[dict]], ground_truth: Sequence[str], **kwargs) -> list[float]:
    """SPEC §3 accuracy ×3, per completion, against the dataset's `ground_truth` column.

    >>> accuracy_reward(["<answer>41 percent</answer>"], ground_truth=["<answer>41%</answer>"])
    [2.0]
    """
    pairs = zip(_texts(completions), ground_truth, strict=True)
    return [TERM_WEIGHT * answer_score(text, gold) for text, gold in pairs]


def evidence_reward(completions: Sequence[str | list[dict]], ground_truth: Sequence[str], **kwargs) -> list[float]:
    """SPEC §3 evidence ×3, per completion, against the dataset's `ground_truth` column."""
    pairs = zip(_texts(completions), ground_truth, strict=True)
    return [TERM_WEIGHT * evidence_score(text, gold) for text, gold in pairs]


def format_reward(completions: Sequence[str | list[dict]], **kwargs) -> list[float]:
    """SPEC §3 format, per completion."""
    return [format_score(text) for text in _texts(completions)]


def overlong_reward(completions: Sequence[str | list[dict]], completion_ids: Sequence[Sequence[int]],
                    **kwargs) -> list[float]:
    """SPEC §3 overlong, per completion, from its token count (TRL passes `completion_ids`)."""
    return [overlong_score(len(ids)) for ids in completion_ids]


def observe_reward(completions: Sequence[str | list[dict]], **kwargs) -> list[float]:
    """SPEC §3 isObserve, per completion."""
    return [observe_penalty(text) for text in _texts(completions)]


def think_reward(completions: Sequence[str | list[dict]], **kwargs) -> list[float]:
    """SPEC §3 isThink, per completion."""
    return [think_penalty(text) for text in _texts(completions)]


# The six terms as TRL reward functions, in the column order of REWARD_KEYS (the RS-GRPO reward columns, SPEC §4).
EVISRAG_REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "accuracy": accuracy_reward,
    "evidence": evidence_reward,
    "format": format_reward,
    "overlong": overlong_reward,
    "isObserve": observe_reward,
    "isThink": think_reward,
}


def vrag_format(trajectory: str) -> float:
    """SPEC §3 VRAG-RL format: 1 if the trajectory holds both `<answer>…</answer>` and `<search>…</search>`."""
    return 1.0 if _VRAG_SEARCH.search(trajectory) and _VRAG_ANSWER.search(trajectory) else 0.0


def ndcg(shown_pages: Sequence[str], gold_pages: Sequence[str]) -> float:
    """SPEC §3 VRAG-RL nDCG of the ordered, de-duplicated pages shown, binary relevance against the gold pages;
    the ideal ranking puts every gold page first, even when fewer pages were shown.

    >>> round(ndcg(["p2", "p1"], ["p1"]), 6)
    0.63093
    """
    gold = set(gold_pages)
    ideal = dcg([1] * len(gold))
    return dcg([int(page in gold) for page in shown_pages]) / ideal if ideal else 0.0


def vrag_reward(format_ok: float, judge: float, ndcg: float) -> float:
    """SPEC §3 VRAG-RL reward: 0 when the format is 0, else 0.7·judge + 0.1·format + 0.2·ndcg."""
    if format_ok == 0:
        return 0.0
    return 0.7 * judge + 0.1 * format_ok + 0.2 * ndcg
