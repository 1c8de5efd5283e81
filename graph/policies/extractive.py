"""The offline extractive policy: no generative model, the same graph and protocols as a served one.

It searches with the question, reads the text lines stored with the page it is shown, picks the region that
best matches the question, zooms into it, and answers with the text of that region, saying the answer is
extractive. Regions it considers:
- sentences, rebuilt from lines grouped into paragraphs by their vertical gaps;
- table rows (lines side by side in one band), and cells: the cell of a matching row under a matching column
  header, answered with the cell and both labels;
- labels with the values aligned above or below them (chart axes: "2021" with the bar value "38.9").
A region scores the summed weight of the question's terms it holds: inverse frequency among the page's lines,
tripled for numbers, doubled again when a whole line is the term (a label). Ties go to the smaller region.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from pagelens.errors import BadInputError
from pagelens.graph.parse import INSUFFICIENT, NO_RELEVANT_INFORMATION, Answer, Crop, EvidenceLine, Search, Turn
from pagelens.graph.policy import Completion, PolicyRequest, ShownImage
from pagelens.tools.pages import Box, TextLine
from pagelens.tools.regions import from_page_box
from pagelens.tools.retrieval.lexical import tokenize
from pagelens.tools.untrusted import defuse

# Pages a run looks at before it settles for the best region seen.
MAX_PAGES = 3
# Words too common to say anything about where an answer is.
_STOPWORDS = frozenset(
    "a an the of in on at to for by with from and or is are was were be been did do does what which who whom whose "
    "when where why how much many it its this that these those as than into per each any all there their our your "
    "his her they we you i me my show shows shown report reported".split()
)
_NUMBER = re.compile(r"^\d+([.,]\d+)?$")
# A value printed beside a bar or in a cell: a number with an optional currency and a short unit.
_VALUE = re.compile(r"^[$€£]?\s*[-+]?\d[\d.,]*\s*(%|[A-Za-z/]{1,6})?$")
NUMBER_WEIGHT = 2.0
# A table's header row lies at most this many row heights above a row.
TABLE_ROWS = 30


def _terms(text: str) -> set[str]:
    # A light stem (plural s) so "quadrat" finds "quadrats".
    return {t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t
            for t in tokenize(text) if t not in _STOPWORDS}


@dataclass(frozen=True)
class Candidate:
    """A candidate answer region: its box in page pixels, the answer text, and the text the score counts."""

    box: Box
    answer: str
    terms: frozenset[str]
    size: int
    anchors: tuple[str, ...] = ()


def _union(lines: list[TextLine]) -> Box:
    return Box(min(l.box.x1 for l in lines), min(l.box.y1 for l in lines),
               max(l.box.x2 for l in lines), max(l.box.y2 for l in lines))


def _same_band(a: TextLine, b: TextLine) -> bool:
    overlap = min(a.box.y2, b.box.y2) - max(a.box.y1, b.box.y1)
    return overlap > 0.5 * min(a.box.height, b.box.height)


def _rows(lines: list[TextLine]) -> list[list[TextLine]]:
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda l: (l.box.y1, l.box.x1)):
        for row in rows:
            if _same_band(row[0], line):
                row.append(line)
                break
        else:
            rows.append([line])
    return [sorted(row, key=lambda l: l.box.x1) for row in rows]


def _sentences(lines: list[TextLine]) -> list[tuple[str, list[TextLine]]]:
    """Sentences with the lines they span; a paragraph ends where the gap to the next line exceeds 3/4 of a line."""
    paragraphs: list[list[TextLine]] = []
    for line in lines:
        last = paragraphs[-1][-1] if paragraphs else None
        # OCR boxes of consecutive lines often overlap: a negative gap continues the paragraph too.
        if last is not None and line.box.y1 > last.box.y1 and line.box.y1 - last.box.y2 <= 0.75 * max(last.box.height, 1):
            paragraphs[-1].append(line)
        else:
            paragraphs.append([line])
    out = []
    for paragraph in paragraphs:
        spans, text = [], ""
        for line in paragraph:
            start = len(text) + (1 if text else 0)
            text = f"{text} {line.text}" if text else line.text
            spans.append((start, len(text), line))
        for match in re.finditer(r"[^.!?]+(?:[.!?]+(?=\s|$)|$)", text):
            covered = [line for start, end, line in spans if start < match.end() and end > match.start()]
            sentence = match.group(0).strip()
            if sentence and covered:
                out.append((sentence, covered))
    return out


def _is_label(line: TextLine) -> bool:
    """A short horizontal line standing alone: a row name, a column header, an axis tick, a bar value."""
    horizontal = line.box.width >= line.box.height or len(line.text) <= 3
    return len(line.text) <= 24 and len(line.text.split()) <= 4 and horizontal


def _header_x(header: TextLine, wanted: set[str]) -> float:
    """Where in a header line the asked-for column sits, in page x: a text layer can merge a header row into one
    line, so take the segment (split after ")" or at wide spaces) holding most asked-for words, and its middle."""
    text = header.text
    segments = [m for m in re.finditer(r"[^()]*(?:\([^)]*\))?", text) if m.group(0).strip()]
    best = max(segments, key=lambda m: len(_terms(m.group(0)) & wanted), default=None)
    if best is None or not _terms(best.group(0)) & wanted:
        return (header.box.x1 + header.box.x2) / 2
    fraction = (best.start() + best.end()) / 2 / max(len(text), 1)
    return header.box.x1 + fraction * header.box.width


def _regions(lines: list[TextLine], wanted: set[str]) -> list[Candidate]:
    regions = [Candidate(_union(covered), text, frozenset(_terms(text)), len(covered))
               for text, covered in _sentences(lines)]
    rows = _rows(lines)
    for row_index, row in enumerate(rows):
        if len(row) < 2:
            continue
        text = " ".join(line.text for line in row)
        regions.append(Candidate(_union(row), text, frozenset(_terms(text)), len(row)))
        label, cells = row[0], row[1:]
        for header_row in rows[:row_index]:
            if (len(header_row) < 2 or label.box.y1 - header_row[0].box.y1 > TABLE_ROWS * label.box.height
                    or any(_VALUE.match(line.text.strip()) for line in header_row)):
                continue  # a caption or paragraph line, a data row, or a row of another table (a page footer)
            for header in header_row:
                if not (_terms(header.text) - _terms(label.text)) & wanted:
                    continue
                x = _header_x(header, wanted)
                cell = min(cells, key=lambda c: abs((c.box.x1 + c.box.x2) / 2 - x))
                terms = _terms(label.text) | _terms(header.text) | _terms(cell.text)
                answer = f"{cell.text} ({label.text}, {header.text})"
                regions.append(Candidate(_union([label, cell]), answer, frozenset(terms), 2, (label.text, header.text)))
    for label in filter(_is_label, lines):
        center = (label.box.x1 + label.box.x2) / 2
        tolerance = max(label.box.width, label.box.height)
        aligned = [line for line in lines if line is not label and _VALUE.match(line.text.strip())
                   and abs((line.box.x1 + line.box.x2) / 2 - center) <= tolerance
                   and abs(line.box.y1 - label.box.y1) <= 25 * label.box.height]
        # A bar's value (a number) sits above its tick (below it for a negative bar): the nearest aligned line, above first.
        above = [line for line in aligned if line.box.y2 <= label.box.y1]
        below = [line for line in aligned if line.box.y1 >= label.box.y2]
        value = (max(above, key=lambda l: l.box.y2, default=None)
                 or min(below, key=lambda l: l.box.y1, default=None))
        if value is not None:
            terms = _terms(label.text) | _terms(value.text)
            regions.append(Candidate(_union([label, value]), f"{value.text} ({label.text})",
                                  frozenset(terms), 2, (label.text,)))
    return regions


def best_region(lines: list[TextLine], question: str) -> tuple[Candidate, tuple] | None:
    """The region of a page's lines that best matches the question, with its rank (comparable across pages:
    lookups first, then the summed term weight); None if nothing matches."""
    wanted = _terms(question)
    if not lines or not wanted:
        return None
    line_terms = [_terms(line.text) for line in lines]
    document_frequency = Counter(term for terms in line_terms for term in terms)
    weight = {}
    for term in wanted:
        idf = math.log(1 + len(lines) / (1 + document_frequency[term]))
        weight[term] = idf * (NUMBER_WEIGHT if _NUMBER.match(term) else 1.0)
    best: tuple[tuple[bool, float, int], Candidate] | None = None
    for region in _regions(lines, wanted):
        score = sum(weight[t] for t in wanted & region.terms)
        # A region keyed by a label every word of which was asked for (a row name, an axis tick) is a lookup:
        # the question names the row or the bar, so the value beside it beats prose that merely shares words.
        key = _terms(region.anchors[0]) if region.anchors else set()
        rank = (bool(key) and key <= wanted, score, -region.size)
        if score > 0 and (best is None or rank > best[0]):
            best = (rank, region)
    return (best[1], best[0][:2]) if best else None


class ExtractivePolicy:
    """Answers by quoting the best-matching region of the pages it is shown (see the module docstring).

    Each turn is decided in code and handed to the graph as data (`Completion.parsed`); its text, the same turn in the
    protocol's words, is what the trajectory records. Page text it quotes is defused (`tools.untrusted`) and kept to
    one line, so the recorded text parses back to the same turn and never holds a tag or an evidence marker a page
    wrote.
    """

    name = "extractive"

    def _best(self, request: PolicyRequest, image: ShownImage) -> tuple[Candidate, tuple] | None:
        if request.page_lines is None:
            raise BadInputError("the extractive policy reads page text; run it through the agent graph, which "
                                "gives each request its pages' lines.")
        return best_region(request.page_lines(image.page_id), request.question)

    def complete(self, request: PolicyRequest) -> Completion:
        run_images = [image for image in request.images if image.index >= request.first_image]
        if request.protocol == "evisrag":
            return self._evisrag(request, run_images)
        pages = [image for image in run_images if not image.is_crop]
        if not pages and not request.answer_now:
            return _turn(request.protocol, Search(_quote(request.question)), "I need a page about the question.")
        last = run_images[-1] if run_images else None
        if last is not None and last.is_crop or request.answer_now:
            return self._answer(request, run_images)
        found = self._best(request, last)
        if found is None and len(pages) < MAX_PAGES:
            return _turn(request.protocol, Search(_quote(request.question)),
                         "Nothing on this page matches; I look at the next page.")
        if found is None:
            return self._answer(request, run_images)
        box = from_page_box(found[0].box, last.seen)
        if request.bbox_convention == "normalized-1000":
            box = Box(box.x1 * 1000 / last.seen.width, box.y1 * 1000 / last.seen.height,
                      box.x2 * 1000 / last.seen.width, box.y2 * 1000 / last.seen.height)
        x1, y1, x2, y2 = (float(round(v)) for v in box.as_list())
        return _turn(request.protocol, Crop((x1, y1, x2, y2)),
                     f"The best match is on image {last.index}; I zoom into it.")

    def _pick(self, request: PolicyRequest, images: list[ShownImage]) -> tuple[ShownImage, Candidate] | None:
        scored = [(found[1], -image.index, image, found[0]) for image in images if not image.is_crop
                  for found in [self._best(request, image)] if found is not None]
        if not scored:
            return None
        _, _, image, region = max(scored, key=lambda s: (s[0], s[1]))
        return image, region

    def _answer(self, request: PolicyRequest, images: list[ShownImage]) -> Completion:
        picked = self._pick(request, images)
        evidence = request.protocol != "vrag"  # SPEC §1: vrag answers without evidence
        if picked is None:
            lines = tuple(EvidenceLine.read(image.index, NO_RELEVANT_INFORMATION) for image in images)
            return _turn(request.protocol, Answer.read(INSUFFICIENT, lines if evidence else ()))
        page, region = picked
        crop = next((image for image in reversed(images) if image.is_crop and image.page_id == page.page_id), None)
        source = _quote(f"{page.document} p.{page.page_number}")
        quoted = _quote(region.answer)
        answer = f"{quoted} — extractive answer, quoted from {source}"
        if not evidence:
            return _turn(request.protocol, Answer.read(answer))
        lines = []
        for image in images:
            if image is crop:
                lines.append(EvidenceLine.read(image.index, quoted))
            elif image is page:
                where = f"the region zoomed in image {crop.index}" if crop else quoted
                lines.append(EvidenceLine.read(image.index, f"{source}, {where}"))
            else:
                lines.append(EvidenceLine.read(image.index, NO_RELEVANT_INFORMATION))
        return _turn(request.protocol, Answer.read(answer, tuple(lines)))

    def _evisrag(self, request: PolicyRequest, images: list[ShownImage]) -> Completion:
        picked = self._pick(request, images)
        quoted = _quote(picked[1].answer) if picked else ""
        # SPEC §2: evidence lines number this turn's images from 1.
        lines = tuple(EvidenceLine.read(image.index - request.first_image + 1,
                                        quoted if picked and image is picked[0] else NO_RELEVANT_INFORMATION)
                      for image in images)
        answer = (f"{quoted} — extractive answer, quoted from "
                  f"{_quote(f'{picked[0].document} p.{picked[0].page_number}')}") if picked else INSUFFICIENT
        return _turn("evisrag", Answer.read(answer, lines), "The best-matching region gives the answer.")


def _quote(text: str) -> str:
    """Page text (or a document's name) as the policy may write it in a turn: defused, and on one line, so that it
    holds no tag and starts no `[i]:` evidence entry."""
    return " ".join(defuse(text).split())


_OBSERVE = "I read the text of each page and look for the lines that best match the question."


def _turn(protocol: str, action: Search | Crop | Answer, think: str | None = None) -> Completion:
    """The turn as data and in the protocol's words (SPEC §1, §2, §2b); the words parse back to the same turn."""
    if isinstance(action, Search):
        words = f"<search>{action.query}</search>"
    elif isinstance(action, Crop):
        words = "<bbox>[" + ", ".join(str(round(value)) for value in action.box) + "]</bbox>"
    else:
        lines = "\n".join(f"[{line.index}]: {line.text}" for line in action.evidence)
        if protocol == "evisrag":
            return Completion(f"<observe>{_OBSERVE}</observe>\n<evidence>\n{lines}\n</evidence>\n"
                              f"<think>{think}</think>\n<answer>{action.text}</answer>", parsed=Turn(action, think))
        words = f"<answer>{action.text}</answer>"
        if protocol != "vrag":
            words = f"<evidence>\n{lines}\n</evidence>{words}"
    thought = f"<think>{think}</think>" if think is not None else ""
    return Completion(thought + words, parsed=Turn(action, think))
