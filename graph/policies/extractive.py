"""The offline extractive policy: no generative model, the same graph and protocols as a served one.

It searches with the question, reads the text lines stored with the page it is shown, picks the region that
best matches the question, zooms into it, and answers with the text of that region, saying the answer is
extractive. The regions it considers (`regions_text`): sentences, table rows and cells read by row label and
column header, a label with the value beside it (a horizontal bar, a form field), and chart ticks with the value
above them.

A region scores the summed weight of the question's terms it holds. A term's weight is its BM25 inverse document
frequency over the whole store (`PolicyRequest.term_rarity`, looked up on the words as written and on their stem,
taking the larger), or over the page's lines where the store has no figure for it; doubled for numbers. The
question's rarest term on the page (any of them, when several are equally rare) counts once more in a region that
holds it. A term found in the document's name or the page's running header or footer counts for every region of the
page that lacks it, so that of two pages alike the one whose document the question names wins; counting for every
region alike, it is never the rarest term. A region keyed by a label every word of which was asked for (a row name,
an axis tick) is a lookup and ranks above any other; ties go to the smaller region.

It answers "insufficient to answer" when no page it was shown supports an answer: when retrieval's calibrated
relevance (`ShownImage.supported`, tools/retrieval/relevance.py) rules out every page, or no region of a page
holds a question term.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

from pagelens.errors import BadInputError
from pagelens.graph.parse import INSUFFICIENT, NO_RELEVANT_INFORMATION, Answer, Crop, EvidenceLine, Search, Turn
from pagelens.graph.policies.interface import Completion, PolicyRequest, ShownImage
from pagelens.graph.policies.regions_text import Candidate, regions
from pagelens.tools.boxes import Box
from pagelens.tools.pages import TextLine
from pagelens.tools.regions import from_page_box
from pagelens.tools.retrieval.lexical import STOP_WORDS, tokenize
from pagelens.tools.retrieval.passages import name_words
from pagelens.tools.untrusted import defuse

# Pages a run looks at before it settles for the best region seen.
MAX_PAGES = 3
# Words too common to say anything about where an answer is: the search's stop words, and words a question uses
# to ask rather than to name what it asks about.
_STOPWORDS = STOP_WORDS | frozenset("much many show shows shown report reported".split())
_NUMBER = re.compile(r"^\d+([.,]\d+)?$")
NUMBER_WEIGHT = 2.0
_PAGE_NUMBER = re.compile(r"\bpage\s+\d+|\b\d+\s+of\s+\d+\b", re.IGNORECASE)
# The question's rarest term on the page counts this much more in a region that holds it (once, whichever of several
# equally rare terms it holds).
RAREST_BONUS = 1.0
# A question term in the document's name or the page's running header or footer counts this much for every region
# of the page that does not hold it itself.
CONTEXT_WEIGHT = 1.0

Rarity = Callable[[list[str]], dict[str, float]]


def _stem(term: str) -> str:
    # A light stem (plural s) so "quadrat" finds "quadrats".
    return term[:-1] if len(term) > 3 and term.endswith("s") and not term.endswith("ss") else term


def _terms(text: str) -> set[str]:
    return {_stem(t) for t in tokenize(text) if t not in _STOPWORDS}


def _asked(question: str) -> dict[str, set[str]]:
    """The question's terms, each with the words as written that stem to it."""
    asked: dict[str, set[str]] = {}
    for word in tokenize(question):
        if word not in _STOPWORDS:
            asked.setdefault(_stem(word), set()).add(word)
    return asked


def _edges(lines: list[TextLine]) -> tuple[TextLine, TextLine]:
    """The page's topmost and bottommost lines: their bands hold its running header and footer."""
    return min(lines, key=lambda l: l.box.y1), max(lines, key=lambda l: l.box.y2)


def _in_edges(box: Box, edges: tuple[TextLine, TextLine]) -> bool:
    top, bottom = edges
    return box.y2 <= top.box.y2 + 0.25 * top.box.height or box.y1 >= bottom.box.y1 - 0.25 * bottom.box.height


def _context(lines: list[TextLine], named: set[str], edges: tuple[TextLine, TextLine]) -> set[str]:
    """Terms of the document's name (`named`) and of the page's running header and footer."""
    return named | {t for l in lines if _in_edges(l.box, edges) for t in _terms(l.text)}


def best_region(lines: list[TextLine], question: str, rarity: Rarity | None = None,
                document: str = "") -> tuple[Candidate, tuple] | None:
    """The region of a page's lines that best matches the question, with its rank (comparable across pages:
    lookups first, then the score); None if no region holds a question term. `rarity` gives words' idf over the
    whole store (None: over the page's lines); `document` is the page's document name."""
    asked = _asked(question)
    wanted = set(asked)
    if not lines or not wanted:
        return None
    line_terms = [_terms(line.text) for line in lines]
    document_frequency = Counter(term for terms in line_terms for term in terms)
    store = rarity(sorted(set().union(*asked.values()) | wanted)) if rarity is not None else {}
    idf = {}
    for term, words in asked.items():
        overall = max(store.get(word, 0.0) for word in words | {term})
        idf[term] = overall if overall > 0 else math.log(1 + len(lines) / (1 + document_frequency[term]))
    weight = {term: idf[term] * (NUMBER_WEIGHT if _NUMBER.match(term) else 1.0) for term in wanted}
    edges = _edges(lines)
    named = _terms(name_words(document)) if document else set()
    context = wanted & _context(lines, named, edges)
    # A context term counts for every region alike, so it cannot be the decisive one. Equally rare terms are each
    # the rarest: which one is decisive cannot be told from their rarity.
    on_page = (wanted & set(document_frequency)) - context
    top_idf = max((idf[t] for t in on_page), default=None)
    rarest = {t for t in on_page if idf[t] == top_idf}
    best: tuple[tuple[bool, float, int], Candidate] | None = None
    for region in regions(lines, wanted, _terms):
        held = wanted & region.terms
        # A running header or footer (an edge line naming the document or the page number) says which document a
        # page is from (context, above); it is not an answer.
        if not held or (_in_edges(region.box, edges) and (region.terms & named or _PAGE_NUMBER.search(region.answer))):
            continue
        score = (sum(weight[t] for t in held) + CONTEXT_WEIGHT * sum(weight[t] for t in context - held)
                 + RAREST_BONUS * max((weight[t] for t in rarest & held), default=0.0))
        # A region keyed by a label every word of which was asked for (a row name, an axis tick) is a lookup:
        # the question names the row or the bar, so the value beside it beats prose that merely shares words.
        key = _terms(region.anchors[0]) if region.anchors else set()
        rank = (bool(key) and key <= wanted, score, -region.size)
        if best is None or rank > best[0]:
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
        if not image.supported:
            return None  # retrieval judged it cannot support an answer: quote nothing from it
        return best_region(request.page_lines(image.page_id), request.question, request.term_rarity, image.document)

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


def box_words(box: tuple[float, float, float, float]) -> str:
    """A box in the protocol's words, as this policy writes it: whole pixels."""
    return "<bbox>[" + ", ".join(str(round(value)) for value in box) + "]</bbox>"


def _turn(protocol: str, action: Search | Crop | Answer, think: str | None = None) -> Completion:
    """The turn as data and in the protocol's words (SPEC §1, §2, §2b); the words parse back to the same turn."""
    if isinstance(action, Search):
        words = f"<search>{action.query}</search>"
    elif isinstance(action, Crop):
        words = box_words(action.box)
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
