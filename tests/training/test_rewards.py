"""SPEC §3 rewards against the reference implementations' own values, and as TRL reward functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagelens.training.rewards import (
    EVISRAG_REWARD_FUNCS,
    REWARD_KEYS,
    evidence_score,
    evisrag_rewards,
    format_score,
    ndcg,
    overlong_score,
    vrag_format,
    vrag_reward,
)

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"
EVISRAG = json.loads((VECTORS / "evisrag_rewards_and_metrics.json").read_text())
VRAG = json.loads((VECTORS / "vrag_reward.json").read_text())
GOLD = ("<observe>x</observe><evidence>[1]: no relevant information\n[2]: the bolts take 1850 Nm</evidence>"
        "<think>y</think><answer>1850 Nm</answer>")


def test_the_vectors_are_all_there():
    assert len(EVISRAG) == 120 and len(VRAG) == 60


@pytest.mark.parametrize("case", EVISRAG, ids=[f"evisrag-{i}" for i in range(len(EVISRAG))])
def test_evisrag_rewards_match_the_reference(case):
    rewards = evisrag_rewards(case["response"], case["ground_truth"], case["response_length"])
    assert set(rewards) == {*REWARD_KEYS, "overall"}
    for key, expected in case["reference"]["rewards"].items():
        assert rewards[key] == pytest.approx(expected, abs=1e-6), key


@pytest.mark.parametrize("case", VRAG, ids=[f"vrag-{i}" for i in range(len(VRAG))])
def test_vrag_ndcg_and_reward_match_the_reference(case):
    value = ndcg(case["shown_pages"], case["gold_pages"])
    assert value == pytest.approx(case["reference"]["ndcg"], abs=1e-6)
    assert vrag_reward(case["format"], case["judge"], value) == pytest.approx(case["reference"]["reward"], abs=1e-6)


def test_vrag_reward_is_zero_without_the_format():
    assert vrag_reward(0.0, 1.0, 1.0) == 0.0
    assert vrag_reward(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert vrag_reward(1.0, 0.0, 0.5) == pytest.approx(0.2)


def test_vrag_format_needs_both_a_search_and_an_answer():
    assert vrag_format("<think>a</think><search>revenue</search>\n<think>b</think><answer>4.2</answer>") == 1.0
    assert vrag_format("<answer>4.2</answer>") == 0.0
    assert vrag_format("<search>revenue</search><answer>4.2") == 0.0
    # An answer that quotes a search still holds both.
    assert vrag_format("<answer>I ran <search>q</search></answer>") == 1.0


def test_evidence_slots_a_six_slot_gold_is_left_unnormalised_as_the_reference_does():
    five = "<evidence>" + "\n".join(f"[{i}]: no relevant information" for i in range(1, 6)) + "</evidence>"
    six = five.replace("</evidence>", "\n[6]: no relevant information</evidence>")
    assert evidence_score(five, five) == pytest.approx(1.0)
    assert evidence_score(six, six) == pytest.approx(6.0)


def test_evidence_short_gold_matches_inside_a_longer_span_and_a_missing_block_scores_zero():
    response = ("<observe>o</observe><evidence>[1]: no relevant information here\n[2]: the table says the bolts "
                "take 1850 Nm</evidence><think>t</think><answer>1850 Nm</answer>")
    # [1] weight 1 matches as a substring, [2] (5+ words) scores its set-F1 at weight 3.
    assert 0.5 < evidence_score(response, GOLD) < 1.0
    assert evidence_score("<answer>1850 Nm</answer>", GOLD) == 0.0


def test_format_and_overlong_edges():
    assert format_score(GOLD) == 1.0
    assert format_score(GOLD + "<answer>again</answer>") == 0.0
    assert format_score("<evidence>e</evidence><observe>o</observe><think>t</think><answer>a</answer>") == 0.0
    assert [overlong_score(n) for n in (199, 200, 1024, 1280, 1536, 1537)] == [-1.0, 0.0, 0.0, -0.5, -1.0, -1.0]


def test_trl_reward_functions_sum_to_overall_with_the_arguments_trl_passes():
    cases = EVISRAG[:16]
    # GRPOTrainer calls each function with these keywords, plus every dataset column (here ground_truth).
    kwargs = {
        "prompts": ["question"] * len(cases),
        "completions": [[{"role": "assistant", "content": case["response"]}] for case in cases],
        "completion_ids": [[7] * case["response_length"] for case in cases],
        "ground_truth": [case["ground_truth"] for case in cases],
        "trainer_state": None,
        "log_extra": lambda column, values: None,
        "log_metric": lambda name, value: None,
    }
    columns = {name: func(**kwargs) for name, func in EVISRAG_REWARD_FUNCS.items()}
    assert list(columns) == list(REWARD_KEYS)
    for i, case in enumerate(cases):
        for name in REWARD_KEYS:
            assert columns[name][i] == pytest.approx(case["reference"]["rewards"][name], abs=1e-6), name
        assert sum(columns[name][i] for name in REWARD_KEYS) == pytest.approx(case["reference"]["rewards"]["overall"],
                                                                             abs=1e-6)


def test_trl_reward_functions_take_plain_string_completions():
    accuracy = EVISRAG_REWARD_FUNCS["accuracy"]
    assert accuracy(completions=["<answer>1850 Nm</answer>", "no tags"], ground_truth=[GOLD, GOLD]) == [3.0, 0.0]
    assert EVISRAG_REWARD_FUNCS["format"](completions=[GOLD, "x"]) == [1.0, 0.0]


def test_the_docstring_examples_hold():
    import doctest

    from pagelens.training import judge, metrics, rewards

    for module in (rewards, metrics, judge):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
