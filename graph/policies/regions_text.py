"""The regions of a page's text lines that the extractive policy weighs as answers (see `extractive`).

- sentences: lines grouped into paragraphs by their vertical gaps, split at a sentence end ("." "!" "?" before a
  space) but not inside a number ("4.2", "v2.3.1", "3.5%"), after an abbreviation ("e.g.", "Dr.", "No. 5") or an
  initial, nor before a lower-case word;
- table rows (lines side by side in one band, within one column of a two-column page), and cells: a row's label
  (its leading lines that are not values) with the cell under a column header the question names. Headers come
  from the nearest header row above (a row without values other than years) that names an asked-for column,
  looking no higher than the first header row as wide as the row; the cell is the one under the header's segment
  and nearer it than any other header, never in the label's own column, and none where the row leaves that column
  empty;
- a label with one value beside it in its band (a horizontal bar's value at its right end, a form's "Total due");
- a tick label (a short line with others of its kind in its band) with the value straight above it (below it for
  a negative bar): a number other than a year, nearer this tick than any other of its band, with no text between
  them;
- a definition: a short line with the lines indented under it (or beside it in its band) up to a blank line, as a
  manual lists its options and a glossary its words; answered with the term and its description's first sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pagelens.tools.corpus.text import reading_sections
from pagelens.tools.boxes import Box
from pagelens.tools.pages import TextLine

# A value printed beside a bar or in a cell: a number with an optional currency, sign and a short unit or two.
VALUE = re.compile(r"^[$€£]?\s*[-+−(]?[$€£]?\d[\d.,]*\)?(\s*(%|[A-Za-zµ°/²³]{1,10})){0,2}$")
_YEAR = re.compile(r"^(19|20)\d\d$")
# A table's header row lies at most this many row heights above a row.
TABLE_ROWS = 30
# A definition (an option, a glossary word) is a line this short with at most this many lines under it.
DEFINITION_TERM_CHARS = 60
DEFINITION_LINES = 6
# A sentence end: closing punctuation and quotes, then a space or the end.
_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
# Abbreviations after which a full stop does not end a sentence; those in _BEFORE_NUMBER only before a number.
_ABBREVIATIONS = frozenset("e.g i.e cf vs dr mr mrs ms prof st jr sr mt approx ca al viz resp incl".split())
_BEFORE_NUMBER = frozenset("no nos fig figs p pp vol sec ch art ref tab eq para".split())

Terms = Callable[[str], set[str]]


@dataclass(frozen=True)
class Candidate:
    """A candidate answer region: its box in page pixels, the answer text, and the text the score counts.
    `anchors` names the label (and column) a lookup is keyed by."""

    box: Box
    answer: str
    terms: frozenset[str]
    size: int
    anchors: tuple[str, ...] = ()


def is_value(text: str) -> bool:
    return bool(VALUE.match(text.strip()))


def union(lines: list[TextLine]) -> Box:
    return Box(min(l.box.x1 for l in lines), min(l.box.y1 for l in lines),
               max(l.box.x2 for l in lines), max(l.box.y2 for l in lines))


def _same_band(a: TextLine, b: TextLine) -> bool:
    overlap = min(a.box.y2, b.box.y2) - max(a.box.y1, b.box.y1)
    return overlap > 0.5 * min(a.box.height, b.box.height)


def rows(lines: list[TextLine]) -> list[list[TextLine]]:
    """Lines grouped into bands, top to bottom, each band left to right."""
    out: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda l: (l.box.y1, l.box.x1)):
        for row in out:
            if _same_band(row[0], line):
                row.append(line)
                break
        else:
            out.append([line])
    return [sorted(row, key=lambda l: l.box.x1) for row in out]


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of a paragraph's text (see the module docstring)."""
    spans, start = [], 0
    for end in _END.finditer(text):
        if "!" not in end.group(0) and "?" not in end.group(0):
            word = text[:end.start()].rsplit(None, 1)[-1].lstrip("([\"'“‘").lower() if end.start() else ""
            following = text[end.end():].lstrip()[:1]
            if (word in _ABBREVIATIONS or (word in _BEFORE_NUMBER and following.isdigit())
                    or (len(word) == 1 and word.isalpha()) or following.islower()):
                continue
        spans.append((start, end.end()))
        start = end.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def sentences(lines: list[TextLine], sections: list[list[TextLine]]) -> list[tuple[str, list[TextLine]]]:
    """Sentences with the lines they span; a paragraph ends where the gap to the next line exceeds 3/4 of a line.
    A page in two columns is read column by column (`sections`, the lines' `reading_sections`), so no sentence runs
    across the gutter."""
    position = {id(line): i for i, line in enumerate(lines)}
    ordered = [line for section in sections for line in sorted(section, key=lambda l: position[id(l)])]
    paragraphs: list[list[TextLine]] = []
    for line in ordered:
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
        for first, last in split_sentences(text):
            covered = [line for start, end, line in spans if start < last and end > first]
            sentence = text[first:last].strip()
            if sentence and covered:
                out.append((sentence, covered))
    return out


def _is_label(line: TextLine) -> bool:
    """A short horizontal line standing alone: a row name, a column header, an axis tick, a bar value."""
    horizontal = line.box.width >= line.box.height or len(line.text) <= 3
    return len(line.text) <= 24 and len(line.text.split()) <= 4 and horizontal


def _header_segment(header: TextLine, wanted: set[str], terms: Terms) -> tuple[str, float, float]:
    """The asked-for column of a header line, its text and page x span: a text layer can merge a header row into
    one line, so take the segment (split after ")") holding most asked-for words."""
    text = header.text
    segments = [m for m in re.finditer(r"[^()]*(?:\([^)]*\))?", text) if m.group(0).strip()]
    best = max(segments, key=lambda m: len(terms(m.group(0)) & wanted), default=None)
    if best is None or len(segments) < 2 or not terms(best.group(0)) & wanted:
        return text, header.box.x1, header.box.x2
    scale = header.box.width / max(len(text), 1)
    return best.group(0).strip(), header.box.x1 + best.start() * scale, header.box.x1 + best.end() * scale


def _split_row(row: list[TextLine]) -> tuple[list[TextLine], list[TextLine]]:
    """A row's label and its cells. The label is its first line unless that is a value (a year may label a row),
    with the lines that continue it across a gap narrower than two line heights (OCR splits a cell's words)."""
    if is_value(row[0].text) and not _YEAR.match(row[0].text.strip()):
        return [], row
    count = 1
    while (count < len(row) - 1 and not is_value(row[count].text)
           and row[count].box.x1 - row[count - 1].box.x2 < 2 * row[count].box.height):
        count += 1
    return row[:count], row[count:]


def _gap(cell: TextLine, x1: float, x2: float) -> tuple[float, float]:
    """How far a cell lies from a header's x span: the gap between them, then the distance of their middles."""
    return max(cell.box.x1 - x2, x1 - cell.box.x2, 0.0), abs((cell.box.x1 + cell.box.x2 - x1 - x2) / 2)


def _is_header_row(row: list[TextLine]) -> bool:
    return len(row) >= 2 and not any(is_value(l.text) and not _YEAR.match(l.text.strip()) for l in row)


def _cells(table: list[list[TextLine]], wanted: set[str], terms: Terms) -> list[Candidate]:
    out = []
    for index, row in enumerate(table):
        label_lines, cells = _split_row(row)
        if len(row) < 2:
            continue
        text = " ".join(line.text for line in row)
        out.append(Candidate(union(row), text, frozenset(terms(text)), len(row)))
        if not label_lines:
            continue
        label = " ".join(line.text for line in label_lines)
        label_box = union(label_lines)
        label_terms = terms(label)
        values = [cell for cell in cells if is_value(cell.text)]
        if len(values) == 1 and len(cells) == 1:
            # A label with its one value: a horizontal bar, a form's field, a two-column table's row.
            value = values[0]
            out.append(Candidate(union(row), f"{value.text} ({label})", frozenset(label_terms | terms(value.text)),
                                 2, (label,)))
        for header_row in reversed(table[:index]):
            if label_box.y1 - header_row[0].box.y1 > TABLE_ROWS * label_box.height:
                break
            if not _is_header_row(header_row):
                continue  # a caption or paragraph line, or a data row
            found = []
            for header in header_row:
                if not (terms(header.text) - label_terms) & wanted:
                    continue
                segment, x1, x2 = _header_segment(header, wanted, terms)
                middle = (x1 + x2) / 2
                if label_box.x1 <= middle <= label_box.x2:
                    continue  # the label column's own header ("Region")
                cell = min(cells, key=lambda c: _gap(c, x1, x2))
                if (_gap(cell, x1, x2)[0] > max(x2 - x1, cell.box.width)
                        or any(_gap(cell, h.box.x1, h.box.x2) < _gap(cell, x1, x2)
                               for h in header_row if h is not header)):
                    continue  # no cell under this header (the row leaves it empty): not one of the next column's
                found.append(Candidate(union(label_lines + [cell]), f"{cell.text} ({label}, {segment})",
                                       frozenset(label_terms | terms(segment) | terms(cell.text)), 2, (label, segment)))
            out.extend(found)
            if found or len(header_row) >= len(row):
                break  # the nearest header row that names an asked-for column, or this table's full header row
    return out


def _ticks(lines: list[TextLine], bands: list[list[TextLine]], terms: Terms) -> list[Candidate]:
    out = []
    band_of = {id(line): band for band in bands for line in band}
    # A bar's value is a number other than a year (a year above a line is an axis tick above the axis title).
    values = [line for line in lines if is_value(line.text) and not _YEAR.match(line.text.strip())]
    for label in filter(_is_label, lines):
        center = (label.box.x1 + label.box.x2) / 2
        tolerance = max(label.box.width, label.box.height)
        others = [l for l in band_of[id(label)] if l is not label and _is_label(l)]
        if not others:
            continue  # a tick has neighbours in its band; a line alone there is a title

        def nearest_tick(line: TextLine) -> bool:
            middle = (line.box.x1 + line.box.x2) / 2
            return all(abs(middle - center) <= abs(middle - (o.box.x1 + o.box.x2) / 2) for o in others)

        aligned = [line for line in values if line is not label and abs((line.box.x1 + line.box.x2) / 2 - center)
                   <= tolerance and abs(line.box.y1 - label.box.y1) <= 25 * label.box.height and nearest_tick(line)]
        above = [line for line in aligned if line.box.y2 <= label.box.y1]
        below = [line for line in aligned if line.box.y1 >= label.box.y2]
        value = (max(above, key=lambda l: l.box.y2, default=None)
                 or min(below, key=lambda l: l.box.y1, default=None))
        if value is None:
            continue
        top, bottom = min(value.box.y2, label.box.y2), max(value.box.y1, label.box.y1)
        if any(top <= l.box.y1 and l.box.y2 <= bottom and l.box.x1 < label.box.x2 and l.box.x2 > label.box.x1
               for l in lines if l is not label and l is not value):
            continue  # text between them: a table column, not a bar
        out.append(Candidate(union([label, value]), f"{value.text} ({label.text})",
                             frozenset(terms(label.text) | terms(value.text)), 2, (label.text,)))
    return out


def _definitions(tables: list[list[list[TextLine]]], terms: Terms) -> list[Candidate]:
    """Each short line with the block indented under it or beside it: a manual's option and what it does, a
    glossary's word and its meaning; answered as the term with the first sentence of its description. `tables` are
    the reading sections' bands."""
    # A band of three or more lines is a table row: its cells are read as cells, not as a term and its meaning.
    in_table = {id(line) for table in tables for band in table if len(band) > 2 for line in band}
    out = []
    for table in tables:
        # Band by band, each left to right: a description beside its term may sit a pixel higher than the term.
        ordered = [line for band in table for line in band]
        for i, term in enumerate(ordered):
            if len(term.text) > DEFINITION_TERM_CHARS or id(term) in in_table:
                continue
            body: list[TextLine] = []
            for line in ordered[i + 1 : i + 1 + DEFINITION_LINES]:
                previous = body[-1] if body else term
                # Below (or beside) the line before, indented by about a character or more, all at one indent (a
                # nested list is not this term's), and no blank line between (measured by the taller line: a short
                # term such as "-f" has a box only as tall as its glyphs).
                if (line.box.x1 < term.box.x1 + 0.8 * term.box.height
                        or (body and abs(line.box.x1 - body[0].box.x1) > 0.8 * term.box.height)
                        or line.box.y1 - previous.box.y2 > 0.75 * max(previous.box.height, line.box.height, 1)):
                    break
                body.append(line)
            if not body:
                continue
            description = " ".join(line.text for line in body)
            first, last = split_sentences(description)[0]
            # Size 0: of equal scores, the definition beats its own description's sentences, since what a question
            # about it wants is usually the term (the option's name).
            label = term.text.strip().removesuffix(":")  # a term with its own colon ("EXIT STATUS:") takes no other
            out.append(Candidate(union([term, *body]), f"{label}: {description[first:last].strip()}",
                                 frozenset(terms(f"{term.text} {description}")), 0))
    return out


def regions(lines: list[TextLine], wanted: set[str], terms: Terms) -> list[Candidate]:
    """Every candidate region of a page's lines (see the module docstring); `wanted` are the question's terms,
    which pick the columns a cell is read under."""
    # Bands are read within a reading section: two lines of running text side by side across a page's gutter are
    # not a table row.
    sections = reading_sections(lines)
    tables = [rows(section) for section in sections]
    bands = [band for table in tables for band in table]
    out = [Candidate(union(covered), text, frozenset(terms(text)), len(covered))
           for text, covered in sentences(lines, sections)]
    cells = [cell for table in tables for cell in _cells(table, wanted, terms)]
    return out + cells + _ticks(lines, bands, terms) + _definitions(tables, terms)
