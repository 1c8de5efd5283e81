"""Rollouts through the real agent graph with a local tiny random Qwen2.5-VL over the sample store: the sampled
ids are what the graph received, the loss mask covers exactly them, recomputed log-probs match the recorded ones,
re-tokenising a reply can change its ids, and a group's seeds make distinct, reproducible rollouts."""

from __future__ import annotations

import shutil

import pytest
import torch

from pagelens.errors import BadInputError
from pagelens.graph.build import Agent
from pagelens.graph.policies.extractive import ExtractivePolicy
from pagelens.graph.settings import AgentSettings
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.training.rollout import (
    LocalPolicy,
    RolloutSampling,
    collate,
    rollout_group,
    sequence_logprobs,
    training_sequences,
)

QUESTION = "What was the revenue in Europe?"
SEARCH_TURN = "<think>I need the table.</think><search>revenue Europe</search>"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from pagelens.training.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_small"), vocabulary="small")


@pytest.fixture(scope="module")
def store(sample_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("rollout") / "store"
    shutil.copytree(sample_home, home)
    with PageStore(StoreSettings(home=home)) as opened:
        yield opened


class SearchFirst(LocalPolicy):
    """Samples as LocalPolicy does, except that turn 0 is SEARCH_TURN, scored by the model like a sampled reply
    (teacher forcing), so the run shows a page: a random model would never write a valid search."""

    def _sample(self, inputs, turn):
        if turn != 0:
            return super()._sample(inputs, turn)
        ids = self.tokenizer.encode(SEARCH_TURN) + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        full = torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)
        with torch.no_grad():
            logits = self.model(input_ids=full).logits[0, -len(ids) - 1:-1].float()
        return ids, logits


def agent_with(store, policy, max_turns=2):
    return Agent(store, policy, AgentSettings(protocol="pagelens", max_turns=max_turns))


def assistant_texts(rollout):
    return [m["content"] for m in rollout.result.messages if m["role"] == "assistant"]


def test_rollout_ids_mask_and_logprobs_through_the_graph(store, small_model):
    policy = SearchFirst.from_folder(small_model, RolloutSampling(temperature=1.0, max_new_tokens=12), device="cpu")
    [rollout] = rollout_group(agent_with(store, policy), QUESTION, 1, seed=5)
    tokenizer = policy.tokenizer

    # (a) each turn's sampled ids decode to the message the graph put in the conversation
    assert len(rollout.turns) == 3  # two action turns, then the forced answer turn
    assert [turn.text for turn in rollout.turns] == assistant_texts(rollout)
    for turn in rollout.turns:
        assert tokenizer.decode(list(turn.sampled_ids), skip_special_tokens=True) == turn.text
        assert len(turn.logprobs) == len(turn.sampled_ids) and all(lp <= 0 for lp in turn.logprobs)
    assert [step.kind for step in rollout.result.steps][:2] == ["observe", "search"]
    assert len(rollout.result.images) == 1 and rollout.shown_pages == [rollout.result.images[0].page_id]
    assert rollout.turns[1].image_keys and not rollout.turns[0].image_keys

    # (b) sequences: turn 0 is re-encoded as sampled, so turn 1's prompt extends it and both share a sequence
    sequences = training_sequences(rollout)
    assert sequences[0].turns[:2] == (0, 1)
    assert [k for s in sequences for k in s.turns] == [0, 1, 2]
    for sequence in sequences:
        ids, mask = sequence.input_ids.tolist(), sequence.loss_mask.tolist()
        assert [i for i, m in zip(ids, mask) if m] == [i for k in sequence.turns
                                                       for i in rollout.turns[k].sampled_ids]
        end = 0  # each turn's prompt is exactly what precedes its sampled ids in the sequence
        for k in sequence.turns:
            turn = rollout.turns[k]
            start = len(turn.prompt_ids)
            assert ids[:start] == list(turn.prompt_ids) and not any(mask[end:start])
            assert all(mask[start:start + len(turn.sampled_ids)])
            end = start + len(turn.sampled_ids)
        assert end == len(ids)
        images = sequence.input_ids == policy.image_token_id
        assert not sequence.loss_mask[images].any()
        assert (sequence.old_logp[sequence.loss_mask == 0] == 0).all()
    merged = sequences[0]
    assert (merged.input_ids == policy.image_token_id).sum() > 0  # the page shown between turns 0 and 1
    assert int(merged.image_grid_thw.prod(-1).sum()) == merged.pixel_values.shape[0]
    assert int(merged.loss_mask.sum()) == len(rollout.turns[0].sampled_ids) + len(rollout.turns[1].sampled_ids)

    # (c) recomputed log-probs at temperature 1, all sequences in one padded batch, match the recorded ones
    batch = collate(sequences)
    with torch.no_grad():
        recomputed = sequence_logprobs(policy.model, batch)
    assert recomputed.shape == batch["input_ids"].shape
    masked = batch["loss_mask"].bool()
    assert torch.allclose(recomputed[masked], batch["old_logp"][masked], atol=1e-4)
    assert (recomputed[~masked] == 0).all()

    # gradients flow to the language model through the recomputation
    policy.model.zero_grad()
    sequence_logprobs(policy.model, batch)[masked].sum().backward()
    assert policy.model.lm_head.weight.grad is not None and policy.model.lm_head.weight.grad.abs().sum() > 0
    policy.model.zero_grad()


def _data_url(color: str, size: tuple[int, int]) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_prompts_equal_the_processors_own_with_each_image_processed_once(small_model):
    from PIL import Image

    policy = LocalPolicy.from_folder(small_model, device="cpu")
    page, crop = _data_url("red", (280, 200)), _data_url("blue", (120, 330))
    turn0 = [{"role": "system", "content": "Answer."},
             {"role": "user", "content": [{"type": "text", "text": "q"},
                                          {"type": "image_url", "image_url": {"url": page}}]}]
    turn1 = turn0 + [{"role": "assistant", "content": "<bbox>[0, 0, 10, 10]</bbox>"},
                     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": crop}}]}]
    calls = []
    make = policy._make_patches
    policy._make_patches = lambda url: calls.append(url) or make(url)
    policy._encode(turn0)
    inputs, keys = policy._encode(turn1)
    assert calls == [page, crop] and len(set(keys)) == 2  # the page once, then only the new crop

    rendered = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
                 [{"type": "image"} if part["type"] == "image_url" else part for part in m["content"]]} for m in turn1]
    text = policy.tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
    images = [Image.new("RGB", (280, 200), "red"), Image.new("RGB", (120, 330), "blue")]
    expected = policy.processor(text=[text], images=images, return_tensors="pt")
    for name in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(inputs[name], expected[name].to(inputs[name].dtype)), name


def test_reencoding_a_sampled_reply_can_change_its_ids(store, tiny_qwen):
    """(d) On the real Qwen2 vocabulary the text of a sampled reply can re-encode to other ids (here found by
    sampling at temperature 1 until a reply does), which is why sampled ids are kept: the sequence trains on the
    sampled ids, and the next prompt (re-rendered from the text, as served) does not extend them, so that turn starts
    its own sequence."""
    policy = LocalPolicy.from_folder(tiny_qwen, RolloutSampling(temperature=1.0, max_new_tokens=16), device="cpu")
    tokenizer = policy.tokenizer
    special = set(tokenizer.all_special_ids)
    for seed in range(8):
        [rollout] = rollout_group(agent_with(store, policy, max_turns=1), QUESTION, 1, seed=seed)
        changed = [k for k, turn in enumerate(rollout.turns)
                   if tokenizer.encode(turn.text) != [i for i in turn.sampled_ids if i not in special]]
        if any(k + 1 < len(rollout.turns) for k in changed):  # a changed reply with a turn after it
            break
    else:
        pytest.fail("no sampled reply re-encoded to other ids in 8 rollouts")
    sequences = training_sequences(rollout)
    owner = {k: s for s in sequences for k in s.turns}
    for k in changed:
        trained = owner[k].input_ids[owner[k].loss_mask.bool()].tolist()
        assert list(rollout.turns[k].sampled_ids) == trained[-len(rollout.turns[k].sampled_ids):]
        if k + 1 < len(rollout.turns):  # the next prompt holds the re-encoded text, not the sampled ids
            turn, after = rollout.turns[k], rollout.turns[k + 1]
            extended = list(turn.prompt_ids) + list(turn.sampled_ids)
            assert list(after.prompt_ids[:len(extended)]) != extended
            assert owner[k + 1].turns[0] == k + 1
    batch = collate(sequences)
    with torch.no_grad():
        recomputed = sequence_logprobs(policy.model, batch)
    masked = batch["loss_mask"].bool()
    assert torch.allclose(recomputed[masked], batch["old_logp"][masked], atol=1e-4)


def test_group_seeds_give_distinct_reproducible_rollouts(store, small_model):
    """(e) n rollouts with seeds seed..seed+n-1; the same seed samples the same ids; the caller's RNG is untouched."""
    policy = LocalPolicy.from_folder(small_model, RolloutSampling(max_new_tokens=6), device="cpu")
    agent = agent_with(store, policy, max_turns=1)
    state = torch.random.get_rng_state()
    group = rollout_group(lambda: agent, QUESTION, 3, seed=10)
    assert torch.equal(state, torch.random.get_rng_state())
    assert [r.seed for r in group] == [10, 11, 12]
    assert all(r.question == QUESTION and r.result.status for r in group)
    samples = [tuple(t.sampled_ids for t in r.turns) for r in group]
    assert len(set(samples)) == 3
    [again] = rollout_group(agent, QUESTION, 1, seed=11)
    assert tuple(t.sampled_ids for t in again.turns) == samples[1]
    assert [t.logprobs for t in again.turns] == [t.logprobs for t in group[1].turns]


def test_bad_rollout_input_is_one_clear_error(store):
    with pytest.raises(BadInputError, match="LocalPolicy"):
        rollout_group(Agent(store, ExtractivePolicy()), QUESTION, 1)
    with pytest.raises(BadInputError, match="temperature"):
        RolloutSampling(temperature=0.0)
    with pytest.raises(BadInputError, match="n >= 1"):
        rollout_group(Agent(store, ExtractivePolicy()), QUESTION, 0)
