"""VisRAG-Gen for single-image policies (SPEC §6): page concatenation and weighted selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pagelens.errors import BadInputError
from pagelens.graph.visrag_gen import concatenate, weighted_selection

RED, GREEN, BLUE = (200, 30, 30), (30, 160, 30), (30, 30, 200)


def solid(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- concatenation -----------------------------------------------------------------------------------------------


def test_horizontal_scales_to_the_tallest_and_pastes_left_to_right():
    tallest = noise(30, 100, seed=1)
    out = concatenate([solid(100, 50, RED), tallest, solid(60, 60, BLUE)], "horizontal")
    assert out.size == (200 + 30 + 100, 100) and out.mode == "RGB"
    pixels = np.asarray(out)
    assert np.array_equal(pixels[:, 200:230], np.asarray(tallest))  # already the tallest: pasted untouched
    assert np.abs(pixels[:, 5:195].astype(int) - RED).max() <= 1
    assert np.abs(pixels[:, 235:325].astype(int) - BLUE).max() <= 1


def test_vertical_scales_to_the_widest_and_stacks_top_to_bottom():
    widest = noise(90, 20, seed=2)
    out = concatenate([solid(30, 60, GREEN), widest, solid(45, 45, RED)], "vertical")
    assert out.size == (90, 180 + 20 + 90)
    pixels = np.asarray(out)
    assert np.abs(pixels[5:175].astype(int) - GREEN).max() <= 1
    assert np.array_equal(pixels[180:200], np.asarray(widest))
    assert np.abs(pixels[205:285].astype(int) - RED).max() <= 1


def test_transparent_parts_are_white_and_one_image_comes_back_as_it_was():
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    out = concatenate([clear, solid(40, 40, BLUE)], "horizontal")
    assert np.array_equal(np.asarray(out)[:, :40], np.full((40, 40, 3), 255, dtype=np.uint8))
    page = noise(64, 48, seed=3)
    assert np.array_equal(np.asarray(concatenate([page], "vertical")), np.asarray(page))


def test_concatenation_refuses_nothing_and_unknown_directions():
    with pytest.raises(BadInputError, match="no images"):
        concatenate([], "horizontal")
    with pytest.raises(BadInputError, match="'diagonal'.*'horizontal' or 'vertical'"):
        concatenate([solid(4, 4, RED)], "diagonal")  # type: ignore[arg-type]


sizes = st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), min_size=1, max_size=5)


@settings(max_examples=50, deadline=None)
@given(sizes=sizes, direction=st.sampled_from(["horizontal", "vertical"]))
def test_every_image_keeps_its_aspect_along_the_common_side(sizes, direction):
    images = [solid(width, height, RED) for width, height in sizes]
    out = concatenate(images, direction)
    if direction == "horizontal":
        side = max(height for _, height in sizes)
        along = [max(1, round(width * side / height)) for width, height in sizes]
        assert out.size == (sum(along), side)
    else:
        side = max(width for width, _ in sizes)
        along = [max(1, round(height * side / width)) for width, height in sizes]
        assert out.size == (side, sum(along))
    for (width, height), length in zip(sizes, along):
        exact = width * side / height if direction == "horizontal" else height * side / width
        assert abs(length - exact) <= 0.5 or length == 1


# --- weighted selection ------------------------------------------------------------------------------------------


def test_picks_by_retrieval_weight_times_per_token_confidence():
    # Worked by hand: softmax([1, 2, 0]) = [0.244728, 0.665241, 0.090031];
    # exp(mean logprob) = [exp(-0.2), exp(-2.0), exp(-0.05)] = [0.818731, 0.135335, 0.951229];
    # products = [0.200367, 0.090031, 0.085640]: "a" wins, though "b" was retrieved best and "c" is most confident.
    index, combined = weighted_selection([("a", 1.0, [-0.1, -0.3]), ("b", 2.0, [-2.0]), ("c", 0.0, [-0.05])])
    assert index == 0
    assert combined == pytest.approx([0.200367, 0.090031, 0.085640], abs=1e-6)


def test_confidence_is_length_normalised():
    # A sum of log-probabilities would prefer the short answer (-0.5 > -1.0); the per-token mean prefers the long one.
    long_answer = ("fifty five million US dollars in 2023", 0.0, [-0.1] * 10)
    index, combined = weighted_selection([("55", 0.0, [-0.5]), long_answer])
    assert index == 1
    assert combined == pytest.approx([0.5 * math.exp(-0.5), 0.5 * math.exp(-0.1)])


def test_extreme_scores_neither_overflow_nor_tie_at_zero():
    # exp(1000) overflows a float: the softmax must subtract the largest score first.
    index, combined = weighted_selection([("a", 1000.0, [-900.0]), ("b", 999.0, [-1.0])])
    assert index == 1
    assert combined == pytest.approx([0.0, math.exp(-1.0) / (1 + math.e)])
    # Both products underflow to 0.0, yet "b" is e^10 times likelier: the argmax is taken in log space.
    index, combined = weighted_selection([("a", 0.0, [-800.0]), ("b", 0.0, [-790.0])])
    assert (index, combined) == (1, [0.0, 0.0])


def test_ties_go_to_the_first_candidate():
    assert weighted_selection([("a", 0.5, [-1.0]), ("b", 0.5, [-0.5, -1.5])])[0] == 0


@pytest.mark.parametrize("logprobs", [None, [], ()])
def test_a_candidate_without_logprobs_is_refused(logprobs):
    with pytest.raises(BadInputError, match="candidate 1 .*must return logprobs"):
        weighted_selection([("a", 1.0, [-0.1]), ("b", 0.5, logprobs)])


def test_no_candidates_and_non_finite_numbers_are_refused():
    with pytest.raises(BadInputError, match="no candidates"):
        weighted_selection([])
    with pytest.raises(BadInputError, match="non-finite"):
        weighted_selection([("a", float("nan"), [-0.1])])
    with pytest.raises(BadInputError, match="non-finite"):
        weighted_selection([("a", 1.0, [-math.inf])])


candidates = st.lists(
    st.tuples(st.text(max_size=5), st.floats(-20, 20), st.lists(st.floats(-20, 0), min_size=1, max_size=8)),
    min_size=1, max_size=6,
)


@settings(max_examples=100, deadline=None)
@given(candidates=candidates)
def test_matches_the_formula_computed_directly(candidates):
    index, combined = weighted_selection(candidates)
    scores = np.array([score for _, score, _ in candidates])
    weights = np.exp(scores) / np.exp(scores).sum()
    expected = weights * np.exp([np.mean(logprobs) for _, _, logprobs in candidates])
    assert combined == pytest.approx(expected.tolist(), rel=1e-9, abs=1e-300)
    assert combined[index] == max(combined)
    assert sum(combined) <= 1 + 1e-12
