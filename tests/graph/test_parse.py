"""Protocol parsers (SPEC §1, §2, §2b): examples for every rule, properties over arbitrary and structured text."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagelens.errors import BadInputError
from pagelens.graph.parse import (
    Answer,
    Crop,
    EvidenceLine,
    EvisragResponse,
    Invalid,
    Search,
    Turn,
    bbox_to_seen_pixels,
    evidence_lines,
    parse_evisrag,
    parse_pagelens,
    parse_vrag,
)
from pagelens.tools.boxes import Box

MULTI_TURN = [parse_vrag, parse_pagelens]


# --- SPEC §1: vrag ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parse", MULTI_TURN)
@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("<search>revenue 2023</search>", Search("revenue 2023")),
        ("<search>\n  revenue\n 2023 \n</search>", Search("revenue\n 2023")),
        ("<bbox>[10, 20, 300, 400]</bbox>", Crop((10.0, 20.0, 300.0, 400.0))),
        ("<bbox>[10.5,20.25,300,4e2]</bbox>", Crop((10.5, 20.25, 300.0, 400.0))),
        ("<bbox> (1, 2, 3, 4) </bbox>", Crop((1.0, 2.0, 3.0, 4.0))),
        ("<bbox>[-1, 2, 3, 4]</bbox>", Crop((-1.0, 2.0, 3.0, 4.0))),
    ],
)
def test_actions(parse, text, action):
    assert parse(text).action == action


def test_vrag_answer_and_think():
    turn = parse_vrag("<think>\nthe table says 42\n</think>\n<answer> 42 </answer>")
    assert turn == Turn(Answer("42", (), insufficient=False), think="the table says 42")


@pytest.mark.parametrize("parse", MULTI_TURN)
def test_no_think_is_none(parse):
    assert parse("<search>x</search>").think is None
    assert parse("<think>unclosed <search>x</search>").think is None


@pytest.mark.parametrize("parse", MULTI_TURN)
def test_stray_text_around_the_action_is_ignored(parse):
    turn = parse("Sure! Let me look.\n<search>q</search>\nI hope that helps.")
    assert turn.action == Search("q")


@pytest.mark.parametrize("parse", MULTI_TURN)
def test_first_action_wins(parse):
    assert parse("<bbox>[1, 2, 3, 4]</bbox><search>q</search><answer>a</answer>").action == Crop((1.0, 2.0, 3.0, 4.0))
    assert parse("<search>first</search> <search>second</search>").action == Search("first")


@pytest.mark.parametrize("parse", MULTI_TURN)
def test_first_complete_action_wins_over_an_unclosed_one(parse):
    assert parse("<search>never closed <answer>done</answer>").action == Answer("done", (), False)


def test_vrag_takes_an_action_inside_think_like_the_reference():
    turn = parse_vrag("<think>maybe <search>plan</search></think><answer>a</answer>")
    assert turn.action == Search("plan")


def test_pagelens_ignores_actions_inside_think():
    turn = parse_pagelens("<think>maybe <search>plan</search></think><answer>a</answer>")
    assert turn == Turn(Answer("a", (), False), think="maybe <search>plan</search>")


@pytest.mark.parametrize("parse", MULTI_TURN)
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<search>   </search>", "the search query is empty"),
        ("<search></search>", "the search query is empty"),
        ("<answer> </answer>", "the answer is empty"),
        ("<search>q", "the <search> tag is never closed with </search>"),
        ("<think>x</think><bbox>[1, 2, 3, 4]", "the <bbox> tag is never closed with </bbox>"),
        ("<Search>q</Search>", "tags are lowercase: write <search>, not <Search>"),
        ("<ANSWER>q</ANSWER>", "tags are lowercase: write <answer>, not <ANSWER>"),
        ("<search>q</Search>", "tags are lowercase: write </search>, not </Search>"),
    ],
)
def test_invalid_reasons(parse, text, reason):
    assert parse(text).action == Invalid(reason)


@pytest.mark.parametrize("parse", MULTI_TURN)
@pytest.mark.parametrize(
    "content",
    ["[1, 2, 3]", "[1, 2, 3, 4, 5]", "1, 2, 3, 4", "[1, 2, three, 4]", '["1", 2, 3, 4]', "[true, 2, 3, 4]",
     "[[1, 2, 3, 4]]", "{}", "", "[1, 2, 3, 4", "(1, 2, 3)", "[" * 5000, f"[1{'0' * 400}, 2, 3, 4]"],
)
def test_bad_bbox_is_invalid(parse, content):
    action = parse(f"<bbox>{content}</bbox>").action
    assert isinstance(action, Invalid)
    assert action.reason.startswith("the bbox ")
    assert action.reason.endswith("is not four numbers; write it as [x1, y1, x2, y2]")


def test_bad_bbox_reason_quotes_a_long_box_briefly():
    reason = parse_vrag(f"<bbox>{'9' * 500}</bbox>").action.reason
    assert len(reason) < 150 and "…" in reason


@pytest.mark.parametrize("parse", MULTI_TURN)
def test_no_action_names_the_actions(parse):
    reason = parse("I think the answer is 42.").action.reason
    assert reason.startswith("the turn has no action; end it with exactly one of <search>query</search>")
    assert "<bbox>[x1, y1, x2, y2]</bbox>" in reason


def test_pagelens_no_action_mentions_evidence():
    assert "<evidence>…</evidence><answer>text</answer>" in parse_pagelens("nothing").action.reason


@pytest.mark.parametrize(
    "text", ["<answer>insufficient to answer</answer>", "<answer> Insufficient to  answer. </answer>"]
)
def test_insufficient(text):
    assert parse_vrag(text).action.insufficient
    assert parse_pagelens(text).action.insufficient


def test_an_answer_that_mentions_insufficiency_is_not_insufficient():
    assert not parse_pagelens("<answer>the data is insufficient to answer fully; 42</answer>").action.insufficient


# --- SPEC §2b: pagelens evidence --------------------------------------------------------------------------------


def test_pagelens_final_block():
    text = (
        "<think>page 2 has it</think>\n<evidence>\n[1]: no relevant information\n"
        "[2]: the table lists revenue of 42 M$ for 2023\n</evidence>\n<answer>42 M$</answer>"
    )
    assert parse_pagelens(text) == Turn(
        Answer(
            "42 M$",
            (EvidenceLine(1, "no relevant information", relevant=False),
             EvidenceLine(2, "the table lists revenue of 42 M$ for 2023", relevant=True)),
            insufficient=False,
        ),
        think="page 2 has it",
    )


def test_pagelens_answer_without_evidence_cites_nothing():
    assert parse_pagelens("<answer>yes</answer>").action == Answer("yes", (), False)


def test_pagelens_unclosed_evidence_runs_to_the_answer():
    action = parse_pagelens("<evidence>\n[1]: the logo\n<answer>ACME</answer>").action
    assert action == Answer("ACME", (EvidenceLine(1, "the logo", True),), False)


def test_pagelens_evidence_after_the_answer_is_not_its_evidence():
    assert parse_pagelens("<answer>a</answer><evidence>[1]: x</evidence>").action == Answer("a", (), False)


def test_pagelens_takes_the_evidence_block_nearest_the_answer():
    text = "<evidence>[1]: old</evidence> notes <evidence>[1]: new</evidence><answer>a</answer>"
    assert parse_pagelens(text).action.evidence == (EvidenceLine(1, "new", True),)


def test_pagelens_evidence_without_answer_is_invalid():
    action = parse_pagelens("<evidence>[1]: the logo</evidence>").action
    assert action == Invalid("the <evidence> block is not followed by <answer>text</answer>")


def test_pagelens_evidence_before_a_search_belongs_to_no_answer():
    assert parse_pagelens("<evidence>[1]: x</evidence><search>more</search>").action == Search("more")


def test_evidence_lines_rules():
    block = (
        "preamble that is not a line\n"
        "[3]: third\n"
        "see [5]: not at a line start\n"
        "  [1] : first,\n  wrapped onto a second line\n"
        "[3]: duplicate of three\n"
        "[0]: zero is not an image\n"
        "[2]:\n"
        "[4]: No relevant information.\n"
    )
    assert evidence_lines(block) == (
        EvidenceLine(1, "first,\n  wrapped onto a second line", True),
        EvidenceLine(2, "", False),
        EvidenceLine(3, "third\nsee [5]: not at a line start", True),
        EvidenceLine(4, "No relevant information.", False),
    )


def test_evidence_lines_of_nothing():
    assert evidence_lines("") == ()
    assert evidence_lines("no markers at all") == ()


# --- SPEC §2: evisrag -------------------------------------------------------------------------------------------

WELL_FORMED = (
    "<observe>image 1 shows a chart; image 2 a logo</observe>\n"
    "<evidence>\n[1]: the chart shows 2023 revenue of 42\n[2]: no relevant information\n</evidence>\n"
    "<think>the chart answers it</think>\n"
    "<answer>42</answer>"
)


def test_evisrag_well_formed():
    assert parse_evisrag(WELL_FORMED) == EvisragResponse(
        observe="image 1 shows a chart; image 2 a logo",
        evidence=(EvidenceLine(1, "the chart shows 2023 revenue of 42", True),
                  EvidenceLine(2, "no relevant information", False)),
        think="the chart answers it",
        answer="42",
        well_formed=True,
    )


def test_evisrag_surrounding_whitespace_is_allowed():
    assert parse_evisrag(f"\n  {WELL_FORMED}\n").well_formed


@pytest.mark.parametrize(
    "text",
    [
        "preamble " + WELL_FORMED,
        WELL_FORMED + " trailing",
        WELL_FORMED.replace("<think>the chart answers it</think>\n", ""),
        WELL_FORMED.replace("<observe>", "<Observe>").replace("</observe>", "</Observe>"),
        WELL_FORMED + "<answer>again</answer>",
        WELL_FORMED.replace("the chart answers it", "the chart <think> answers it"),
        "<evidence>[1]: x</evidence><observe>o</observe><think>t</think><answer>a</answer>",
        WELL_FORMED.replace("</answer>", ""),
    ],
)
def test_evisrag_malformed(text):
    assert not parse_evisrag(text).well_formed


def test_evisrag_answer_is_the_whole_output_without_answer_tags():
    response = parse_evisrag("  just 42 \n")
    assert response == EvisragResponse(None, (), None, "just 42", well_formed=False)


def test_evisrag_answer_inside_tags_even_when_malformed():
    response = parse_evisrag("blah <answer> yes </answer> blah")
    assert response.answer == "yes" and not response.well_formed


# --- bbox conventions (SPEC §1) ---------------------------------------------------------------------------------


def test_bbox_pixels_is_the_box_as_written():
    assert bbox_to_seen_pixels((10, 20, 30, 40), "pixels", 560, 840) == Box(10, 20, 30, 40)


def test_bbox_normalized_scales_to_the_seen_image():
    assert bbox_to_seen_pixels((0, 0, 1000, 500), "normalized-1000", 560, 840) == Box(0, 0, 560, 420)


def test_bbox_may_reach_past_the_far_edges():
    assert bbox_to_seen_pixels((500, 800, 700, 900), "pixels", 560, 840) == Box(500, 800, 700, 900)


@pytest.mark.parametrize(
    ("box", "convention", "message"),
    [
        ((float("nan"), 0, 1, 1), "pixels", "the bbox [nan, 0, 1, 1] has a coordinate that is not a finite number"),
        ((0, 0, float("inf"), 1), "normalized-1000", "not a finite number"),
        ((-1, 0, 10, 10), "pixels", "the bbox [-1, 0, 10, 10] has a negative coordinate; coordinates start at 0"),
        ((10, 0, 10, 10), "pixels", "is empty or inverted; write [x1, y1, x2, y2] with x1 < x2 and y1 < y2"),
        ((0, 20, 10, 10), "normalized-1000", "is empty or inverted"),
        ((560, 0, 600, 10), "pixels", "lies outside the image, which spans 560x840 pixels"),
        ((0, 1000, 10, 1010), "normalized-1000", "lies outside the image, which spans 0 to 1000 on both axes"),
    ],
)
def test_bbox_rejections(box, convention, message):
    with pytest.raises(BadInputError, match=re.escape(message)):
        bbox_to_seen_pixels(box, convention, 560, 840)


def test_bbox_unknown_convention():
    with pytest.raises(BadInputError, match="bbox convention 'percent' is unknown"):
        bbox_to_seen_pixels((1, 2, 3, 4), "percent", 560, 840)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(
    seen=st.tuples(st.integers(28, 2000), st.integers(28, 2000)),
    corners=st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4),
    convention=st.sampled_from(["pixels", "normalized-1000"]),
)
def test_bbox_round_trip_within_a_pixel(seen, corners, convention):
    width, height = seen
    # A box of at least 3 pixels each way, inside the seen image: what a model could mean.
    x1, x2 = sorted((corners[0] * (width - 3), corners[2] * (width - 3)))
    y1, y2 = sorted((corners[1] * (height - 3), corners[3] * (height - 3)))
    meant = Box(x1, y1, x2 + 3, y2 + 3)
    if convention == "pixels":
        written = tuple(round(v) for v in meant.as_list())
    else:
        written = (round(meant.x1 * 1000 / width), round(meant.y1 * 1000 / height),
                   round(meant.x2 * 1000 / width), round(meant.y2 * 1000 / height))
    got = bbox_to_seen_pixels(written, convention, width, height)
    assert all(abs(a - b) <= 1 for a, b in zip(got.as_list(), meant.as_list()))


# --- properties: never raise, round trip ------------------------------------------------------------------------

PARSERS = [parse_vrag, parse_pagelens, parse_evisrag]
TAGS = ["search", "answer", "bbox", "think", "evidence", "observe", "page_text", "Search", "ANSWER"]
SOUP = st.one_of(
    st.sampled_from(TAGS).map(lambda tag: f"<{tag}>"),
    st.sampled_from(TAGS).map(lambda tag: f"</{tag}>"),
    st.sampled_from(["[", "]", "(", ")", ",", ":", "\n", " ", "<", ">", "/", "-", ".", "e", "NaN", "true", "…"]),
    st.integers(-10**30, 10**30).map(str),
    st.floats().map(repr),
    st.integers(0, 12).map(lambda i: f"\n[{i}]: "),
    st.sampled_from(["no relevant information", "insufficient to answer", "Insufficient to answer."]),
    st.text(max_size=8),
)


@pytest.mark.parametrize("parse", PARSERS)
@settings(max_examples=300)
@given(text=st.text())
def test_parsers_never_raise_on_text(parse, text):
    parse(text)


@pytest.mark.parametrize("parse", PARSERS)
@settings(max_examples=500)
@given(text=st.lists(SOUP, max_size=40).map("".join))
def test_parsers_never_raise_on_tag_soup(parse, text):
    result = parse(text)
    if isinstance(result, Turn) and isinstance(result.action, Invalid):
        assert result.action.reason and not result.action.reason.endswith(".")


@settings(max_examples=300)
@given(text=st.lists(SOUP, max_size=40).map("".join))
def test_evidence_lines_never_raise_and_are_sorted_unique(text):
    indices = [line.index for line in evidence_lines(text)]
    assert indices == sorted(set(indices)) and all(i >= 1 for i in indices)


def _free_text(min_size: int = 0):
    """Text that holds no tag and no line break, stripped: what a tag's content parses back to."""
    alphabet = st.characters(blacklist_characters="<>\n\r", blacklist_categories=("Cs",))
    return st.text(alphabet, min_size=min_size, max_size=30).map(str.strip).filter(lambda s: len(s) >= min_size)


def _plain(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".").rstrip()


SPACE = st.sampled_from(["", " ", "\n", "\n\n", "  \t", " \u3000 "])
NUMBER = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
EVIDENCE = st.lists(
    st.tuples(
        st.integers(1, 20),
        st.one_of(st.just("no relevant information"),
                  _free_text(1).filter(lambda s: _plain(s) != "no relevant information")),
    ),
    max_size=5,
    unique_by=lambda pair: pair[0],
)
ANSWER_TEXT = st.one_of(st.just("insufficient to answer"),
                        _free_text(1).filter(lambda s: _plain(s) != "insufficient to answer"))


@st.composite
def rendered_turns(draw, protocol: str):
    """(text, expected Turn): a well-formed action written out with random think and whitespace."""
    think = draw(st.one_of(st.none(), _free_text()))
    kind = draw(st.sampled_from(["search", "bbox", "answer"]))
    gap = draw(SPACE)
    if kind == "search":
        query = draw(_free_text(1))
        body, action = f"<search>{draw(SPACE)}{query}{draw(SPACE)}</search>", Search(query)
    elif kind == "bbox":
        numbers = draw(st.tuples(NUMBER, NUMBER, NUMBER, NUMBER))
        written = json.dumps(list(numbers)) if draw(st.booleans()) else "(" + ", ".join(map(repr, numbers)) + ")"
        body, action = f"<bbox>{written}</bbox>", Crop(tuple(float(n) for n in numbers))
    else:
        text = draw(ANSWER_TEXT)
        lines = draw(EVIDENCE) if protocol == "pagelens" else []
        cited = tuple(
            EvidenceLine(i, line, relevant=line != "no relevant information") for i, line in sorted(lines)
        )
        block = ""
        if lines:
            block = "<evidence>\n" + "\n".join(f"[{i}]: {line}" for i, line in lines) + f"\n</evidence>{draw(SPACE)}"
        body = f"{block}<answer>{draw(SPACE)}{text}{draw(SPACE)}</answer>"
        action = Answer(text, cited, insufficient=text == "insufficient to answer")
    prefix = f"<think>{think}</think>{gap}" if think is not None else ""
    return f"{draw(SPACE)}{prefix}{body}{draw(SPACE)}", Turn(action, think)


@settings(max_examples=400)
@given(case=rendered_turns("vrag"))
def test_vrag_round_trip(case):
    text, expected = case
    assert parse_vrag(text) == expected


@settings(max_examples=400)
@given(case=rendered_turns("pagelens"))
def test_pagelens_round_trip(case):
    text, expected = case
    assert parse_pagelens(text) == expected


@settings(max_examples=200)
@given(
    observe=_free_text(),
    lines=EVIDENCE,
    think=_free_text(),
    answer=_free_text(1),
    gaps=st.tuples(SPACE, SPACE, SPACE, SPACE, SPACE),
)
def test_evisrag_round_trip(observe, lines, think, answer, gaps):
    evidence = "\n".join(f"[{i}]: {line}" for i, line in lines)
    text = (f"{gaps[0]}<observe>{observe}</observe>{gaps[1]}<evidence>{evidence}</evidence>{gaps[2]}"
            f"<think>{think}</think>{gaps[3]}<answer>{answer}</answer>{gaps[4]}")
    cited = tuple(EvidenceLine(i, line, relevant=line != "no relevant information") for i, line in sorted(lines))
    assert parse_evisrag(text) == EvisragResponse(observe, cited, think, answer, well_formed=True)
