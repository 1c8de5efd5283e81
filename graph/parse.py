"""Protocol parsers: one assistant message in, one typed action out (SPEC §1, §2, §2b).

The parsers never raise. Whatever the model wrote becomes a valid action or an `Invalid` whose reason is a
lowercase clause with no final full stop, which the retry template quotes ("…was invalid: {{ reason }}.").

Decisions where the SPEC is silent:
- Tags are case-sensitive, as in the reference, so a turn is valid in serving exactly when it is in training's
  rewards; a tag in another case (`<Search>`) is Invalid, and the reason names the lowercase tag. Tags admit no
  inner whitespace (`< search >` is not a tag); the content between tags is stripped.
- Text before and after the action is ignored; with several actions the first complete one wins (SPEC §1).
- vrag takes the first action anywhere, inside <think> too, as the reference does, so a served checkpoint behaves
  as it did in training. pagelens (ours) looks for it outside closed <think> blocks only, so a plan such as
  "next I will <search>…</search>" in the reasoning is not acted on.
- `think` is the first closed <think> block, stripped, or None.
- An empty search query and an empty answer are Invalid: a retry costs a turn, an empty result costs the run.
- pagelens evidence: the last <evidence> block before the answer; one the model forgot to close runs up to the
  answer rather than losing the citations.
- Evidence lines start a line with `[i]:` (SPEC §2: one line per image); an entry runs to the next marker, so a
  finding may wrap. Entries come back sorted by i; i = 0 is dropped (i counts from 1); the first entry per i wins.
- `no relevant information` and `insufficient to answer` are recognised ignoring case, spacing and a final full stop.
- EVisRAG's format rule is checked on the response stripped of surrounding whitespace.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Literal, Union

from pagelens.errors import BadInputError
from pagelens.tools.boxes import Box

BboxConvention = Literal["pixels", "normalized-1000"]

NO_RELEVANT_INFORMATION = "no relevant information"
INSUFFICIENT = "insufficient to answer"


@dataclass(frozen=True)
class Search:
    query: str


@dataclass(frozen=True)
class Crop:
    """A bbox on the most recent image, as the model wrote it: its convention, not yet validated."""

    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class EvidenceLine:
    """What the model wrote about image `index` (1-based, in the order images were shown)."""

    index: int
    text: str
    relevant: bool

    @classmethod
    def read(cls, index: int, text: str) -> EvidenceLine:
        """The entry `[index]: text` as the parser reads it: stripped, relevant unless it says there is nothing."""
        text = text.strip()
        return cls(index, text, bool(text) and _phrase(text) != NO_RELEVANT_INFORMATION)


@dataclass(frozen=True)
class Answer:
    text: str
    evidence: tuple[EvidenceLine, ...]
    insufficient: bool

    @classmethod
    def read(cls, text: str, evidence: tuple[EvidenceLine, ...] = ()) -> Answer:
        """The answer `text` as the parser reads it: stripped, insufficient when it says `insufficient to answer`."""
        text = text.strip()
        return cls(text, evidence, insufficient=_phrase(text) == INSUFFICIENT)


@dataclass(frozen=True)
class Invalid:
    """A turn with no usable action; `reason` is quoted back to the model."""

    reason: str


Action = Union[Search, Crop, Answer, Invalid]


@dataclass(frozen=True)
class Turn:
    action: Action
    think: str | None


@dataclass(frozen=True)
class EvisragResponse:
    """An EVisRAG response in its four parts (SPEC §2); `well_formed` is the format rule of SPEC §3."""

    observe: str | None
    evidence: tuple[EvidenceLine, ...]
    think: str | None
    answer: str
    well_formed: bool


# SPEC §1: the action is the first match, non-greedy, dot matches newline.
_ACTION = re.compile(r"<(search|answer|bbox)>(.*?)</\1>", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_OPENING = re.compile(r"<(search|answer|bbox)>")
_ANY_TAG = re.compile(r"</?(search|answer|bbox|think|evidence|observe)>", re.IGNORECASE)
# SPEC §2: `[i]: …` starts a line; ASCII digits only, and few enough that int() always succeeds.
_EVIDENCE_MARKER = re.compile(r"^[ \t]*\[([0-9]{1,9})\][ \t]*:", re.MULTILINE)
# SPEC §3 (EVisRAG format reward): the four parts in order.
_EVISRAG_FORMAT = re.compile(
    r"<observe>.*?</observe>\s*<evidence>.*?</evidence>\s*<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL
)
_EVISRAG_TAGS = ("observe", "evidence", "think", "answer")

_VRAG_ACTIONS = "<search>query</search>, <bbox>[x1, y1, x2, y2]</bbox> or <answer>text</answer>"
_PAGELENS_ACTIONS = (
    "<search>query</search>, <bbox>[x1, y1, x2, y2]</bbox> or <evidence>…</evidence><answer>text</answer>"
)
# Long enough to show the model what it wrote, short enough to keep a retry message small.
_QUOTE_CHARS = 60


def parse_vrag(text: str) -> Turn:
    """The action of a VRAG-RL turn (SPEC §1)."""
    match = _ACTION.search(text)
    if match is None:
        return Turn(Invalid(_why_no_action(text, _VRAG_ACTIONS, evidence=False)), _block("think", text))
    return Turn(_action(match.group(1), match.group(2), ()), _block("think", text))


def parse_pagelens(text: str) -> Turn:
    """The action of a pagelens turn (SPEC §2b): a search, a bbox, or evidence and an answer."""
    outside = _THINK.sub(" ", text)
    match = _ACTION.search(outside)
    if match is None:
        return Turn(Invalid(_why_no_action(outside, _PAGELENS_ACTIONS, evidence=True)), _block("think", text))
    evidence = _evidence_before(outside[: match.start()]) if match.group(1) == "answer" else ()
    return Turn(_action(match.group(1), match.group(2), evidence), _block("think", text))


def parse_evisrag(text: str) -> EvisragResponse:
    """The four parts of an EVisRAG response (SPEC §2); the answer is the whole output when <answer> is missing."""
    stripped = text.strip()
    # SPEC §3: a full match, and each of the 8 tags exactly once.
    well_formed = _EVISRAG_FORMAT.fullmatch(stripped) is not None and all(
        stripped.count(f"<{tag}>") == 1 and stripped.count(f"</{tag}>") == 1 for tag in _EVISRAG_TAGS
    )
    evidence = _block("evidence", text)
    answer = _block("answer", text)
    return EvisragResponse(
        observe=_block("observe", text),
        evidence=evidence_lines(evidence) if evidence is not None else (),
        think=_block("think", text),
        # SPEC §5: the text inside <answer> if present, else the whole output.
        answer=answer if answer is not None else stripped,
        well_formed=well_formed,
    )


def evidence_lines(block: str) -> tuple[EvidenceLine, ...]:
    """The `[i]: text` entries of an evidence block (SPEC §2), sorted by i, the first per i kept."""
    markers = list(_EVIDENCE_MARKER.finditer(block))
    ends = [marker.start() for marker in markers[1:]] + [len(block)]
    lines: dict[int, EvidenceLine] = {}
    for marker, end in zip(markers, ends):
        index = int(marker.group(1))
        if index >= 1 and index not in lines:
            lines[index] = EvidenceLine.read(index, block[marker.end() : end])
    return tuple(lines[index] for index in sorted(lines))


def bbox_to_seen_pixels(
    box: tuple[float, float, float, float], convention: BboxConvention, seen_width: int, seen_height: int
) -> Box:
    """The bbox in pixels of the image the model saw, or a BadInputError whose message the retry can quote.

    The box may reach past the image's right or bottom edge (the crop clamps it) but must start inside it.

    SPEC §1: Qwen2.5-VL writes absolute pixels of the seen image, Qwen2-VL and some hosted models 0–1000
    normalised coordinates.
    """
    written = "[" + ", ".join(f"{value:g}" for value in box) + "]"
    if convention == "pixels":
        frame_width, frame_height, frame = float(seen_width), float(seen_height), f"{seen_width}x{seen_height} pixels"
    elif convention == "normalized-1000":
        frame_width, frame_height, frame = 1000.0, 1000.0, "0 to 1000 on both axes"
    else:
        raise BadInputError(f"bbox convention {convention!r} is unknown; set it to 'pixels' or 'normalized-1000'.")
    x1, y1, x2, y2 = box
    if not all(math.isfinite(value) for value in box):
        raise BadInputError(f"the bbox {written} has a coordinate that is not a finite number; write four numbers")
    # SPEC §1: all four numbers >= 0.
    if min(box) < 0:
        raise BadInputError(f"the bbox {written} has a negative coordinate; coordinates start at 0")
    if not (x1 < x2 and y1 < y2):
        raise BadInputError(f"the bbox {written} is empty or inverted; write [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
    if x1 >= frame_width or y1 >= frame_height:
        raise BadInputError(f"the bbox {written} lies outside the image, which spans {frame}; zoom into a part of it")
    # SPEC §1: scale from the model's frame to the seen image; a crop of a crop maps through the crop it saw.
    scale_x, scale_y = seen_width / frame_width, seen_height / frame_height
    return Box(x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y)


def _action(tag: str, content: str, evidence: tuple[EvidenceLine, ...]) -> Action:
    content = content.strip()
    if tag == "search":
        return Search(content) if content else Invalid("the search query is empty")
    if tag == "bbox":
        return _crop(content)
    if not content:
        return Invalid("the answer is empty")
    return Answer.read(content, evidence)


def _crop(content: str) -> Crop | Invalid:
    # Models also write the box as a tuple; the numbers are the same.
    written = f"[{content[1:-1]}]" if content.startswith("(") and content.endswith(")") else content
    try:
        values = json.loads(written)
        if isinstance(values, list) and len(values) == 4 and all(_is_number(value) for value in values):
            return Crop((float(values[0]), float(values[1]), float(values[2]), float(values[3])))
    except (ValueError, RecursionError, OverflowError):
        pass  # not JSON, nested too deep, or an integer too large for a float: not four numbers either way
    return Invalid(f"the bbox {_quote(content)} is not four numbers; write it as [x1, y1, x2, y2]")


def _is_number(value: object) -> bool:
    # JSON true/false arrive as bool, a subclass of int.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _why_no_action(text: str, actions: str, *, evidence: bool) -> str:
    for tag in _ANY_TAG.finditer(text):
        if tag.group(1) != tag.group(1).lower():
            return f"tags are lowercase: write {tag.group(0).lower()}, not {tag.group(0)}"
    opening = _OPENING.search(text)
    if opening is not None:
        return f"the <{opening.group(1)}> tag is never closed with </{opening.group(1)}>"
    if evidence and "<evidence>" in text:
        return "the <evidence> block is not followed by <answer>text</answer>"
    return f"the turn has no action; end it with exactly one of {actions}"


def _evidence_before(prefix: str) -> tuple[EvidenceLine, ...]:
    start = prefix.rfind("<evidence>")
    if start < 0:
        return ()  # SPEC §2b: an answer with no evidence block cites nothing.
    return evidence_lines(prefix[start + len("<evidence>") :].split("</evidence>", 1)[0])


def _block(tag: str, text: str) -> str | None:
    match = re.search(f"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return match.group(1).strip() if match else None


def _phrase(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".").rstrip()


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…")
