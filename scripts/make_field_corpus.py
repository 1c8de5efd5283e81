"""Build the field corpus in tests/data/field/: a second test corpus, unlike servers/sample/.

Retrieval and the offline extractive answering policy were developed on the sample corpus
(scripts/make_sample_corpus.py). This corpus has other domains, layouts and wording, so settings
can be tuned on one corpus and reported on the other:

- a two-column water-utility bulletin whose figures carry decimals inside sentences, with a trap
  for rare-word weighting (the board *approved* a plant on one page, someone was *appointed* to
  lead it on another);
- two quarterly reports from different companies built from the same sentence templates, the
  company named only in the page header, so only the header tells their figures apart;
- a landscape slide deck: a horizontal bar chart (labels at the left, values at the bar ends,
  all real text), a table with row and column headers, bullet slides;
- scanned, image-only documents (a two-page inspection form and a letter), aged like the
  sample's scans.

``questions.jsonl`` holds answerable questions (``is_sufficient: true``, the answer verbatim
on the cited page) and unanswerable ones on the same topics (``answers: ["insufficient to
answer"]``, no pages). Before writing it the script checks every question: an answer must be
on its page (text layer, or one drawn line of a scan) and not given away by the question; an
unanswerable question names strings that must not occur in its document. Unlike the sample
corpus, the question's words need not single out its page: this corpus is meant to be hard
for lexical retrieval.

The output is deterministic: reportlab runs in invariant mode, scan noise comes from seeded
generators and the image-only PDFs get fixed dates. The scan helpers, the answer checks and the
command line are shared with make_sample_corpus.py through scripts/corpus_kit.py.

Usage: python scripts/make_field_corpus.py [--out DIR]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from reportlab import rl_config
from reportlab.graphics import renderPDF
from reportlab.graphics.shapes import Drawing, Line, Rect, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_JUSTIFY
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    FrameBreak,
    NextPageTemplate,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

# A sibling file, importable because scripts/ is on sys.path when this runs as a script.
from corpus_kit import (
    NBSP,
    SCAN_MARGIN,
    SCAN_SIZE,
    Document,
    ScanPage,
    build_documents,
    check_answer,
    cli,
    content_terms,
    document_table,
    scan_document,
    text_layer,
)
from corpus_kit import Question as PageQuestion

rl_config.invariant = 1

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "field"
CREATOR = "pagelens scripts/make_field_corpus.py"
SCAN_DATE = time.struct_time((2024, 11, 4, 9, 30, 0, 0, 309, 0))
INSUFFICIENT = "insufficient to answer"
KINDS = ("prose", "decimal", "table", "chart", "scan", "confusable", "unanswerable")
_scan_document = partial(scan_document, creator=CREATOR, date=SCAN_DATE)


@dataclass(frozen=True)
class Question(PageQuestion):
    """An answerable question, or an unanswerable one: answer INSUFFICIENT, page 0, `document` the one it is about."""

    absent: tuple[str, ...] = ()  # unanswerable only: strings its document must not contain


# --------------------------------------------------------------------------
# Styles
# --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _styles() -> dict[str, ParagraphStyle]:
    return {
        "col": ParagraphStyle("col", fontName="Times-Roman", fontSize=10, leading=13, alignment=TA_JUSTIFY,
                              spaceAfter=6),
        "col_head": ParagraphStyle("col_head", fontName="Helvetica-Bold", fontSize=11.5, leading=14,
                                   textColor=colors.HexColor("#0b4f6c"), spaceBefore=4, spaceAfter=4),
        "report_title": ParagraphStyle("report_title", fontName="Helvetica-Bold", fontSize=17, leading=21,
                                       spaceAfter=10),
        "report_head": ParagraphStyle("report_head", fontName="Helvetica-Bold", fontSize=11, leading=14,
                                      spaceBefore=8, spaceAfter=3),
        "report_body": ParagraphStyle("report_body", fontName="Helvetica", fontSize=10, leading=14, spaceAfter=5),
        "bullet": ParagraphStyle("bullet", fontName="Helvetica", fontSize=19, leading=25, leftIndent=28,
                                 bulletIndent=6, spaceAfter=12),
        "cell": ParagraphStyle("cell", fontName="Helvetica-Bold", fontSize=13, leading=16),
    }


def _p(style: str, *texts: str) -> list[Flowable]:
    return [Paragraph(text, _styles()[style]) for text in texts]


# --------------------------------------------------------------------------
# 1. Two-column water bulletin
# --------------------------------------------------------------------------

BULLETIN = "harrow_vale_water_bulletin_q3_2024.pdf"

# One (left column, right column) pair per page.
BULLETIN_PAGES: list[tuple[list[tuple[str, str]], list[tuple[str, str]]]] = [
    (
        [("h", "Board approves Coldharbour treatment plant"),
         ("p", "At its meeting on 18 September the board approved the construction of the Coldharbour treatment "
               "plant on the former gravel works east of Sedgeley. The plant will use ceramic membrane filtration "
               "and is designed to treat 38.5 million litres a day, enough to retire the ageing Millrace works by "
               "the end of 2028. Site clearance starts in January, and the first membrane trains are due to enter "
               "service in the spring of 2027."),
         ("p", "The proposal was presented to the board by Halima Osei, director of capital works, after two years "
               "of pilot trials at Millrace. A single membrane skid ran there for 9,400 hours and removed 99.7% of "
               "particles larger than 0.1 micrometres. Board members noted that the treatment plant will also cut "
               "chemical use: coagulant dosing in the pilot fell by a third compared with the sand filters it "
               "replaced."),
         ("h", "Demand and supply"),
         ("p", "Customers used 4.2 million litres a day more than in the same quarter last year, a 1.75% rise that "
               "we attribute mainly to the dry August. Peak demand came on 12 August at 246.8 million litres, when "
               "the network ran within 6% of its treatment capacity for three consecutive days.")],
        [("p", "Reservoir storage stood at 71.3% at the end of September, against a long-term average of 68.9% for "
               "that date. Brackwater, the smallest of our four impounding reservoirs, fell to 52.4% and was drawn "
               "on only for blending."),
         ("h", "Leakage"),
         ("p", "Leakage averaged 58.6 million litres a day over the quarter, down from 63.1 million litres a day in "
               "the second quarter. Crews repaired 1,912 leaks, of which 311 were on trunk mains. The acoustic "
               "loggers fitted along the Sedgeley ring main found 44 hidden leaks before any of them reached the "
               "surface."),
         ("p", "Our target for the year is an average of 55.0 million litres a day. Pressure management in the "
               "Upper Ashcombe and Fennick zones, where night pressures were lowered by 0.8 bar, accounts for most "
               "of the improvement since the spring.")],
    ),
    (
        [("h", "Water quality"),
         ("p", "Of 6,482 samples taken from taps, service reservoirs and treatment works, 6,479 met every "
               "regulatory standard, a compliance rate of 99.95%. The three failures were all for coliform "
               "bacteria at customer taps, and none was confirmed on resampling."),
         ("p", "Turbidity leaving the Millrace works averaged 0.08 NTU, well inside our internal target of 0.2 NTU. "
               "Average hardness across the supply area was 187 milligrams per litre as calcium carbonate, which "
               "classes our water as moderately hard."),
         ("h", "Telemetry upgrade"),
         ("p", "All 212 pumping stations now run version v2.3.1 of the SCADA outstation firmware, which closes the "
               "authentication weakness reported in May. The rollout took eleven weeks; stations still on the older "
               "v2.2.7 release were updated in order of the population they serve."),
         ("p", "Outstations now report every 15 seconds instead of every 60, so the control room sees a burst main "
               "about a minute sooner than before.")],
        [("h", "Energy"),
         ("p", "Pumping and treatment used 31.4 gigawatt-hours of electricity in the quarter. The solar array at "
               "Brackwater generated 1.26 gigawatt-hours, 4.0% of our needs, and the hydro turbine on the "
               "Brackwater outflow added a further 0.43 gigawatt-hours."),
         ("h", "Customer service"),
         ("p", "We received 2,746 written complaints, 8.3% fewer than a year earlier. The most common cause was low "
               "pressure in the Upper Ashcombe zone, which will be resolved when the new booster station at Tillock "
               "Lane is commissioned in November. The average time to answer a call was 47 seconds, and 93.6% of "
               "billing queries were settled at the first contact.")],
    ),
    (
        [("h", "People"),
         ("p", "Dr Ines Valdark has been appointed to lead the Coldharbour plant as its first site director. She "
               "joins from the Northmere Water Cooperative, where she ran the Fellgate membrane works for six "
               "years, and will oversee construction, commissioning and the recruitment of 24 operators."),
         ("p", "Giles Farrant retires in December after 31 years with the authority, the last nine as head of "
               "network operations. Yusuf Adeyemi, currently operations manager for the northern division, takes "
               "over that role on 1 January.")],
        [("h", "Works planned for the fourth quarter"),
         ("p", "Station Road, Sedgeley: 2.4 km of cast-iron main dating from the 1930s will be replaced with "
               "315 mm polyethylene pipe between 4 November and 20 December. Expect single-lane traffic lights."),
         ("p", "Greyhope service reservoir: the 5.5 megalitre tank will be drained for its ten-yearly structural "
               "inspection in the week of 11 November. Customers will be supplied from Sedgeley in the meantime."),
         ("h", "Contact"),
         ("p", "To report a leak or a loss of supply, call 0800 555 0192 at any hour. Bulletin comments go to the "
               "communications team at the Millrace offices.")],
    ),
]


def build_bulletin(out: Path) -> Document:
    path = out / BULLETIN
    margin, gap, masthead = 48, 20, 96
    width, height = A4
    col_w = (width - 2 * margin - gap) / 2

    def frames(top: float) -> list[Frame]:
        return [Frame(margin + i * (col_w + gap), margin, col_w, top - margin, id=f"col{i}", leftPadding=0,
                      rightPadding=0, topPadding=0, bottomPadding=0) for i in range(2)]

    def first_page(canvas: Canvas, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFillColor(colors.HexColor("#0b4f6c"))
        canvas.rect(0, height - masthead + 10, width, masthead - 10, stroke=0, fill=1)
        canvas.setFillColor(colors.white)
        canvas.setFont("Helvetica-Bold", 24)
        canvas.drawString(margin, height - 48, "Harrow Vale Water")
        canvas.setFont("Helvetica", 12)
        canvas.drawString(margin, height - 70, "Operations Bulletin - Issue 27 - Third quarter 2024")
        canvas.restoreState()
        later_page(canvas, doc)

    def later_page(canvas: Canvas, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setStrokeColor(colors.HexColor("#9fb3c8"))
        canvas.line(margin + col_w + gap / 2, margin, margin + col_w + gap / 2, height - masthead - 4)
        canvas.setFont("Helvetica", 8)
        canvas.drawCentredString(width / 2, 24, f"Harrow Vale Water Operations Bulletin, Q3 2024 - {doc.page}")
        canvas.restoreState()

    doc = BaseDocTemplate(str(path), pagesize=A4, title="Harrow Vale Water Operations Bulletin, Q3 2024",
                          author="Harrow Vale Water", creator=CREATOR, invariant=1)
    doc.addPageTemplates([PageTemplate("first", frames(height - masthead - 14), onPage=first_page),
                          PageTemplate("later", frames(height - 60), onPage=later_page)])
    story: list[Flowable] = [NextPageTemplate("later")]
    for number, columns in enumerate(BULLETIN_PAGES):
        if number:
            story.append(PageBreak())
        for side, column in enumerate(columns):
            if side:
                story.append(FrameBreak())
            story.extend(Paragraph(text, _styles()["col_head" if tag == "h" else "col"]) for tag, text in column)
    doc.build(story)
    return Document(BULLETIN, "Two-column quarterly bulletin of a fictional water utility: prose with decimal "
                    "figures (demand, storage, leakage, quality, firmware versions, energy), staff news.",
                    False, text_layer(path), [])


# --------------------------------------------------------------------------
# 2. Two quarterly reports written from the same templates
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Quarter:
    file: str
    company: str  # printed only in the page header
    sales: str
    sales_prev: str
    organic: str
    fx: str
    gross_margin: str
    gross_margin_prev: str
    op_profit: str
    op_margin: str
    cash_flow: str
    headcount: str
    headcount_prev: str
    ceo: str
    comment: str
    regions: tuple[tuple[str, str, str], ...]  # (region, Q2 2024, Q2 2023), EUR million
    outlook: str
    next_report: str


BRIGHTWELL = Quarter(
    "brightwell_foods_q2_2024.pdf", "Brightwell Foods", "412.6", "389.0", "5.8", "0.3", "34.2", "32.9", "37.1",
    "9.0", "44.8", "3,214", "3,067", "Annika Sorensen",
    "Volumes in chilled ready meals grew in every market, and the new bakery line in Ostrava ran at full capacity "
    "from May.",
    (("Home market", "168.3", "160.2"), ("Nordics", "97.5", "91.8"), ("Central Europe", "104.9", "98.7"),
     ("Rest of world", "41.9", "38.3")),
    "4 to 6 percent", "23 October 2024",
)
OSTERLUND = Quarter(
    "osterlund_tools_q2_2024.pdf", "Osterlund Tools", "287.9", "276.4", "3.1", "1.1", "41.7", "42.5", "31.7",
    "11.0", "26.3", "2,187", "2,240", "Petter Hallgren",
    "Professional customers in construction remained cautious, while sales of cordless garden tools held up better "
    "than we expected.",
    (("Home market", "74.6", "71.0"), ("Nordics", "58.4", "56.9"), ("Central Europe", "112.3", "107.5"),
     ("Rest of world", "42.6", "41.0")),
    "0 to 2 percent", "24 October 2024",
)


def build_quarter(out: Path, q: Quarter) -> Document:
    path = out / q.file
    width, height = A4
    rows = [["Region", "Q2 2024", "Q2 2023", "Change"]]
    for region, now, prev in q.regions:
        rows.append([region, now, prev, f"{100 * (float(now) / float(prev) - 1):+.1f}%"])
    table = Table(rows, colWidths=[150, 90, 90, 80], hAlign="LEFT")
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 10), ("FONT", (0, 1), (-1, -1), "Helvetica", 10),
        ("LINEBELOW", (0, 0), (-1, 0), 1, colors.black), ("LINEBELOW", (0, -1), (-1, -1), 0.5, colors.grey),
        ("ALIGN", (1, 0), (-1, -1), "RIGHT"), ("TOPPADDING", (0, 0), (-1, -1), 3),
    ]))
    pages = [
        _p("report_title", "Second-quarter report 2024")
        + _p("report_head", "The quarter in brief")
        + _p("report_body",
             f"Net sales rose to EUR {q.sales} million in the quarter, compared with EUR {q.sales_prev} million in "
             f"the second quarter of 2023. Organic growth was {q.organic} percent, and currency effects changed "
             f"reported net sales by a further {q.fx} percent.",
             f"Gross margin was {q.gross_margin} percent, against {q.gross_margin_prev} percent a year earlier. "
             f"Operating profit came to EUR {q.op_profit} million, an operating margin of {q.op_margin} percent.",
             f"Cash flow from operating activities amounted to EUR {q.cash_flow} million.",
             f"Headcount stood at {q.headcount} at the end of June, compared with {q.headcount_prev} twelve months "
             "earlier.")
        + _p("report_head", "Comments from the chief executive")
        + _p("report_body",
             f"The second quarter developed broadly as we had planned. {q.comment} We kept a firm grip on costs and "
             "continued to reduce working capital, which supported a strong cash flow.",
             "We will keep investing in automation and in our own brands, and we remain committed to the financial "
             "targets that we presented at the capital markets day in March.",
             f"{q.ceo}, President and CEO"),
        _p("report_head", "Net sales by region")
        + _p("report_body", "Net sales by region in EUR million. Change is reported change in percent.")
        + [Spacer(1, 4), table, Spacer(1, 8)]
        + _p("report_head", "Outlook")
        + _p("report_body",
             f"For the full year 2024 we expect net sales growth of {q.outlook} in local currencies, with a "
             "stronger second half than first half. The operating margin is expected to improve slightly.",
             "Risks are described in the annual report and have not changed materially since it was published.")
        + _p("report_head", "Financial calendar")
        + _p("report_body", f"The report for the third quarter will be published on {q.next_report}."),
    ]

    def header(canvas: Canvas, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica-Bold", 13)
        canvas.drawString(56, height - 40, q.company.upper())
        canvas.setFont("Helvetica", 9)
        canvas.drawRightString(width - 56, height - 40, f"Interim report Q2 2024 | page {doc.page} of 2")
        canvas.line(56, height - 48, width - 56, height - 48)
        canvas.restoreState()

    doc = BaseDocTemplate(str(path), pagesize=A4, title=f"{q.company} second-quarter report 2024",
                          author=q.company, creator=CREATOR, invariant=1)
    doc.addPageTemplates([PageTemplate("page", [Frame(56, 56, width - 112, height - 130, id="body")],
                                       onPage=header)])
    story: list[Flowable] = [*pages[0], PageBreak(), *pages[1]]
    doc.build(story)
    return Document(q.file, "Quarterly report of a fictional company, written from the same sentence templates "
                    "as its sibling report; the company is named only in the page header.",
                    False, text_layer(path), [])


def build_brightwell(out: Path) -> Document:
    return build_quarter(out, BRIGHTWELL)


def build_osterlund(out: Path) -> Document:
    return build_quarter(out, OSTERLUND)


# --------------------------------------------------------------------------
# 3. Landscape slide deck
# --------------------------------------------------------------------------

SLIDES = "kessock_air_network_review_2024.pdf"
SLIDE_SIZE = (960, 540)
GOOD_DAYS = {"Dunmore Road": 287, "Eastgate School": 312, "Harbour Lane": 241, "Millfield Park": 336,
             "Quarry Hill": 327, "St Anne's Square": 268}
CONCENTRATIONS = [
    ["Station", "NO2 (\u00b5g/m\u00b3)", "PM10 (\u00b5g/m\u00b3)", "PM2.5 (\u00b5g/m\u00b3)", "Ozone (ppb)",
     "Data capture (%)"],
    ["Dunmore Road", "33.8", "18.2", "9.6", "27.4", "96.1"],
    ["Eastgate School", "19.5", "13.7", "7.9", "30.8", "98.2"],
    ["Harbour Lane", "41.6", "21.3", "11.4", "24.9", "94.7"],
    ["Millfield Park", "12.2", "11.9", "6.3", "33.5", "97.4"],
    ["Quarry Hill", "15.1", "24.6", "8.8", "31.2", "89.3"],
    ["St Anne's Square", "28.7", "16.8", "9.1", "28.3", "95.5"],
]


def _hbar_chart(values: dict[str, int], title: str, axis_title: str, x_max: int, x_step: int) -> Drawing:
    """Horizontal bars: the category at the left of each bar, its value just past the bar's end."""
    width, height = 820, 360
    left, right, top, bottom = 170, 60, 50, 50
    drawing = Drawing(width, height)
    drawing.add(String(width / 2, height - 22, title, textAnchor="middle", fontName="Helvetica-Bold", fontSize=16))
    plot_w, plot_h = width - left - right, height - top - bottom
    band = plot_h / len(values)
    scale = plot_w / x_max
    for tick in range(0, x_max + 1, x_step):
        x = left + tick * scale
        drawing.add(Line(x, bottom, x, bottom + plot_h, strokeColor=colors.HexColor("#d9e2ec"), strokeWidth=0.6))
        drawing.add(String(x, bottom - 14, str(tick), textAnchor="middle", fontName="Helvetica", fontSize=10,
                           fillColor=colors.HexColor("#52606d")))
    for i, (label, value) in enumerate(values.items()):
        y = bottom + plot_h - (i + 1) * band + band * 0.2
        drawing.add(Rect(left, y, value * scale, band * 0.6, fillColor=colors.HexColor("#2f855a"), strokeWidth=0))
        drawing.add(String(left - 10, y + band * 0.3 - 5, label, textAnchor="end", fontName="Helvetica",
                           fontSize=14))
        drawing.add(String(left + value * scale + 8, y + band * 0.3 - 5, str(value), fontName="Helvetica-Bold",
                           fontSize=14))
    drawing.add(Line(left, bottom, left, bottom + plot_h, strokeColor=colors.black, strokeWidth=1))
    drawing.add(String(left + plot_w / 2, 8, axis_title, textAnchor="middle", fontName="Helvetica", fontSize=12))
    return drawing


def _concentration_table() -> Table:
    cells = [[Paragraph(text, _styles()["cell"]) if r == 0 else text for text in row]
             for r, row in enumerate(CONCENTRATIONS)]
    table = Table(cells, colWidths=[190, 118, 118, 118, 110, 130], rowHeights=[44] + [36] * (len(cells) - 1))
    table.setStyle(TableStyle([
        ("FONT", (0, 1), (0, -1), "Helvetica-Bold", 14), ("FONT", (1, 1), (-1, -1), "Helvetica", 14),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#c6f6d5")),
        ("BACKGROUND", (0, 1), (0, -1), colors.HexColor("#f0fff4")),
        ("GRID", (0, 0), (-1, -1), 0.6, colors.HexColor("#718096")),
        ("ALIGN", (1, 1), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
    ]))
    return table


def build_slides(out: Path) -> Document:
    path = out / SLIDES
    width, height = SLIDE_SIZE
    canvas = Canvas(str(path), pagesize=SLIDE_SIZE, invariant=1)
    canvas.setTitle("Kessock Valley Air Monitoring Network: annual review 2024")
    canvas.setAuthor("Kessock Valley Joint Environment Service")
    canvas.setCreator(CREATOR)

    def slide(number: int, title: str | None) -> None:
        canvas.setFillColor(colors.HexColor("#1c4532"))
        canvas.rect(0, 0, width, 30, stroke=0, fill=1)
        canvas.setFillColor(colors.white)
        canvas.setFont("Helvetica", 10)
        canvas.drawString(36, 11, "Kessock Valley Air Monitoring Network - annual review 2024")
        canvas.drawRightString(width - 36, 11, str(number))
        if title:
            canvas.setFillColor(colors.HexColor("#1c4532"))
            canvas.setFont("Helvetica-Bold", 30)
            canvas.drawString(48, height - 70, title)
        canvas.setFillColor(colors.black)

    def bullets(texts: Sequence[str]) -> None:
        y = height - 110
        for text in texts:
            para = Paragraph(text, _styles()["bullet"], bulletText="\u2022")
            _, h = para.wrap(width - 120, height)
            para.drawOn(canvas, 60, y - h)
            y -= h + 14

    slide(1, None)
    canvas.setFillColor(colors.HexColor("#1c4532"))
    canvas.setFont("Helvetica-Bold", 40)
    canvas.drawString(72, 330, "Kessock Valley Air Monitoring Network")
    canvas.setFont("Helvetica", 26)
    canvas.drawString(72, 286, "Annual review of 2024 measurements")
    canvas.setFont("Helvetica", 16)
    canvas.drawString(72, 200, "Joint Environment Committee, 5 March 2025")
    canvas.drawString(72, 174, "Presented by Dr Arvid Lindqvist, network manager")
    canvas.showPage()

    slide(2, "Clean-air days across the network")
    chart = _hbar_chart(GOOD_DAYS, "Days rated good on the daily air quality index, 2024",
                        "Number of days (out of 366)", x_max=400, x_step=50)
    renderPDF.draw(chart, canvas, 70, 50)
    canvas.showPage()

    slide(3, "Annual mean concentrations by station, 2024")
    table = _concentration_table()
    _, h = table.wrap(width, height)
    table.drawOn(canvas, 48, height - 110 - h)
    canvas.showPage()

    slide(4, "Key findings")
    bullets([
        "Roadside nitrogen dioxide fell for the fifth year running, helped by the low-emission bus fleet.",
        "Harbour Lane is still the only station above the annual NO2 objective of 40 \u00b5g/m\u00b3; "
        "ferry traffic at the terminal is the main source.",
        "Quarry Hill recorded the highest coarse-particle levels, from blasting and haul trucks.",
        "Ozone was highest at the rural Millfield Park site, as usual for background stations.",
    ])
    canvas.showPage()

    slide(5, "Plans for 2025")
    bullets([
        "Move the Quarry Hill analyser to Kilnworth Road once the quarry closes in June.",
        "Install 14 low-cost particle sensors at primary schools, calibrated against Eastgate School.",
        "Publish hourly data on the open-data portal within 20 minutes of measurement.",
        "Replace the Dunmore Road NOx analyser, now eleven years old.",
    ])
    canvas.showPage()
    canvas.save()
    return Document(SLIDES, "Landscape slide deck of a fictional air-quality network review: horizontal bar "
                    "chart (good-air days by station), table with row and column headers (concentrations by "
                    "station), bullet slides.", False, text_layer(path), [])


# --------------------------------------------------------------------------
# 4. Scanned documents
# --------------------------------------------------------------------------

INSPECTION = "vehicle_inspection_scan.pdf"
LETTER = "marina_berth_letter_scan.pdf"
BRAKES = [
    ("Axle", "Left (kN)", "Right (kN)", "Imbalance", "Result"),
    ("Axle 1 (front)", "4.87", "4.61", "5%", "Pass"),
    ("Axle 2 (rear)", "3.42", "2.96", "13%", "Pass"),
    ("Parking brake", "2.15", "2.08", "3%", "Pass"),
]


def _fields(page, y: int, pairs: Sequence[tuple[str, str]], value_x: int, size: int = 26, step: int = 46) -> int:
    for label, value in pairs:
        page.text(SCAN_MARGIN, y, f"{label}:", size=size, bold=True)
        page.text(value_x, y, value, size=size)
        y += step
    return y


def build_inspection(out: Path) -> Document:
    margin, right = SCAN_MARGIN, SCAN_SIZE[0] - SCAN_MARGIN
    first = ScanPage()
    first.text(margin, 110, "NORTHCAPE VEHICLE TESTING CENTRE", size=36, bold=True)
    first.text(margin, 160, "Unit 7, Brannock Industrial Estate  -  Station No. NC-031", size=22)
    first.rule(200, width=3)
    first.text(margin, 236, "Periodic Roadworthiness Inspection - Record Sheet", size=30, bold=True)
    first.text(margin, 300, "Part A. Vehicle and inspection details", size=26, bold=True)
    y = _fields(first, 360, [
        ("Certificate No.", "RW-88214-K"),
        ("Registration", "KT19 XPF"),
        ("Make and model", "Halden Courier 1.6 van"),
        ("VIN", "WHD4C16X0KP203377"),
        ("First registered", "14 March 2019"),
        ("Odometer", "84,312 km"),
        ("Keeper", "Brannock Bakery Ltd"),
        ("Date of inspection", "9 October 2024"),
        ("Inspector", "Marguerite Oyelaran (ID 4471)"),
    ], value_x=520)
    first.rule(y + 6)
    first.text(margin, y + 40, "Overall result:", size=30, bold=True)
    first.text(520, y + 40, "PASS WITH ADVISORIES", size=30, bold=True)
    first.text(margin, y + 100, "Next inspection due:", size=26, bold=True)
    first.text(520, y + 100, "9 October 2025", size=26)
    first.text(right, SCAN_SIZE[1] - 110, "Form RW-2 (rev. 2022)  -  page 1 of 2", size=20, anchor="ra")

    second = ScanPage()
    second.text(margin, 110, "Record sheet RW-88214-K  -  continued", size=24)
    second.rule(150)
    second.text(margin, 190, "Part B. Roller brake test", size=28, bold=True)
    columns = (margin, 470, 640, 810, right)
    y = 260
    for r, row in enumerate(BRAKES):
        for c, (x, cell) in enumerate(zip(columns, row)):
            second.text(x, y, cell, size=24, bold=r == 0 or c == 0, anchor="la" if c == 0 else "ra")
        if r == 0:
            second.rule(y + 38)
        y += 52
    second.rule(y)
    second.text(margin, y + 50, "Part C. Exhaust emissions (petrol, catalyst)", size=28, bold=True)
    y = _fields(second, y + 110, [("CO at idle", "0.12 %"), ("CO at 2,500 rpm", "0.09 %"), ("Lambda", "1.003")],
                value_x=520, size=24, step=44)
    second.text(margin, y + 30, "Part D. Advisory notes", size=28, bold=True)
    y += 90
    for note in (f"1. Front tyres worn to 3.1{NBSP}mm, close to the legal limit.",
                 "2. Slight oil seep at the sump gasket; monitor.",
                 "3. Rear axle brake imbalance within limits but rising."):
        y = second.paragraph(y, note, size=24)
    second.text(margin, y + 60, "Signed: M. Oyelaran", size=26)
    second.text(right, SCAN_SIZE[1] - 110, "Form RW-2 (rev. 2022)  -  page 2 of 2", size=20, anchor="ra")
    return _scan_document(out, INSPECTION, "Scanned two-page vehicle inspection record: field/value pairs, a "
                          "brake-test table, emissions readings and advisory notes.",
                          "Inspection record RW-88214-K", [first, second], angles=[-1.1, 0.6], seed=303)


def build_letter(out: Path) -> Document:
    margin, right = SCAN_MARGIN, SCAN_SIZE[0] - SCAN_MARGIN
    page = ScanPage()
    page.text(SCAN_SIZE[0] / 2, 110, "PELLWORTH HARBOUR MARINA", size=36, bold=True, anchor="ma")
    page.text(SCAN_SIZE[0] / 2, 160, "The Harbour Office, Quay Street, Pellworth", size=22, anchor="ma")
    page.text(right, 240, "12 November 2024", size=24, anchor="ra")
    for i, line in enumerate(("Mr Colm Ashdown", "4 Tern Cottages", "Lower Pellworth")):
        page.text(margin, 240 + 36 * i, line, size=24)
    page.text(margin, 400, "Our ref.: BA/2025/0417", size=24)
    page.text(margin, 460, "Dear Mr Ashdown,", size=26)
    y = 520
    for text in (
        "Re: your application for an annual berth, 2025 season",
        "Thank you for your application for the sailing yacht Merganser. I am pleased to tell you that we "
        f"can offer you berth{NBSP}C-14 on the east pontoon for the 2025 season, which runs from 1 March to "
        "30 November.",
        f"The annual mooring fee for a vessel of 9.4 metres is £2,380.00, including shore power and "
        "use of the boatyard crane twice in the season. Half of the fee is payable when you accept the "
        "berth and the balance by 1 May 2025.",
        "Please confirm that you wish to take up this offer by signing and returning the enclosed form "
        f"no later than 31{NBSP}January{NBSP}2025. After that date the berth will be offered to the next "
        "applicant on the waiting list.",
        f"If you have any questions, please ask for Owen{NBSP}Castellan, our harbourmaster, on 01632 960 418.",
        "Yours sincerely,",
    ):
        y = page.paragraph(y, text, size=26)
    page.text(margin, y + 50, "Rhona Liddell", size=28)
    page.text(margin, y + 94, "Berthing Officer", size=24)
    return _scan_document(out, LETTER, "Scanned typed letter from a fictional marina offering a berth: "
                          "addresses, reference, fee, deadline and contact.",
                          "Letter BA/2025/0417", [page], angles=[1.3], seed=404)


# --------------------------------------------------------------------------
# Questions and checks
# --------------------------------------------------------------------------

BW, OL = BRIGHTWELL.file, OSTERLUND.file


def questions() -> list[Question]:
    return [
        # Bulletin: prose, decimals inside sentences, and the approved/appointed trap.
        Question("What filtering technology is planned for the new Coldharbour works?",
                 "ceramic membrane filtration", BULLETIN, 1, "prose"),
        Question("How much did water demand go up compared with the same period a year before, in percent?",
                 "1.75%", BULLETIN, 1, "decimal"),
        Question("How full were the reservoirs at the close of September?", "71.3%", BULLETIN, 1, "decimal"),
        Question("What was the average daily water loss from leaks this quarter?", "58.6 million litres",
                 BULLETIN, 1, "decimal"),
        Question("Which firmware release is now installed on every pumping station outstation?", "v2.3.1",
                 BULLETIN, 2, "decimal"),
        Question("How cloudy was the water leaving the Millrace works on average?", "0.08 NTU", BULLETIN, 2,
                 "decimal"),
        Question("How much power did the Brackwater solar panels produce over the quarter?", "1.26 gigawatt-hours",
                 BULLETIN, 2, "decimal"),
        Question("What share of the quality samples passed all standards?", "99.95%", BULLETIN, 2, "decimal"),
        Question("Who has been appointed to head the Coldharbour facility?", "Ines Valdark", BULLETIN, 3,
                 "confusable"),
        Question("Who will be in charge of network operations from January?", "Yusuf Adeyemi", BULLETIN, 3, "prose"),
        Question("What number should I ring to report a burst pipe?", "0800 555 0192", BULLETIN, 3, "prose"),
        # Two reports from one template: only the company in the header tells them apart.
        Question("How much did Brightwell Foods sell in Q2 2024?", "EUR 412.6 million", BW, 1, "confusable"),
        Question("How much did Osterlund Tools sell in Q2 2024?", "EUR 287.9 million", OL, 1, "confusable"),
        Question("How many employees did Osterlund Tools have at the end of June 2024?", "2,187", OL, 1,
                 "confusable"),
        Question("What gross margin did Brightwell Foods achieve in the second quarter?", "34.2 percent", BW, 1,
                 "confusable"),
        Question("What operating profit did Osterlund Tools make in the second quarter of 2024?",
                 "EUR 31.7 million", OL, 1, "confusable"),
        Question("What were Brightwell Foods' Nordic sales in the second quarter of 2024, in EUR million?", "97.5",
                 BW, 2, "confusable"),
        Question("What sales growth does Osterlund Tools forecast for 2024 as a whole?", "0 to 2 percent", OL, 2,
                 "confusable"),
        Question("On which date does Brightwell Foods release its Q3 figures?", "23 October 2024", BW, 2,
                 "confusable"),
        # Slide deck: bar chart, table by row and column, bullets.
        Question("Who gave the Kessock Valley air network presentation?", "Arvid Lindqvist", SLIDES, 1, "prose"),
        Question("On how many days in 2024 was air quality good at Harbour Lane?", "241", SLIDES, 2, "chart"),
        Question("How many good air quality days did the Millfield Park station have?", "336", SLIDES, 2, "chart"),
        Question("What number of good-air days was recorded at Quarry Hill in 2024?", "327", SLIDES, 2, "chart"),
        Question("How many days did St Anne's Square get a good index rating last year?", "268", SLIDES, 2,
                 "chart"),
        Question("What was the yearly average PM2.5 level measured at Eastgate School?", "7.9", SLIDES, 3, "table"),
        Question("What annual mean nitrogen dioxide concentration was recorded at Harbour Lane?", "41.6", SLIDES, 3,
                 "table"),
        Question("What ozone level did Quarry Hill measure on average, in ppb?", "31.2", SLIDES, 3, "table"),
        Question("What percentage of data was captured at the Millfield Park monitor?", "97.4", SLIDES, 3, "table"),
        Question("Where is the Quarry Hill monitoring equipment being relocated?", "Kilnworth Road", SLIDES, 5,
                 "prose"),
        # Scans.
        Question("What mileage did the van show when it was inspected?", "84,312 km", INSPECTION, 1, "scan"),
        Question("Which inspector examined the Halden Courier van?", "Marguerite Oyelaran", INSPECTION, 1, "scan"),
        Question("When does the van have to be inspected again?", "9 October 2025", INSPECTION, 1, "scan"),
        Question("What brake force was measured on the right-hand side of the rear axle?", "2.96", INSPECTION, 2,
                 "scan"),
        Question("What lambda reading did the exhaust test give?", "1.003", INSPECTION, 2, "scan"),
        Question("Which berth is the marina offering Mr Ashdown for next season?", "C-14", LETTER, 1, "scan"),
        Question("How much is the yearly mooring charge for the Merganser?", "£2,380.00", LETTER, 1, "scan"),
        Question("What is the deadline for accepting the berth offer?", "31 January 2025", LETTER, 1, "scan"),
        # Unanswerable: on the corpus's topics, answered nowhere.
        Question("How much will the Coldharbour treatment plant cost to build?", INSUFFICIENT, BULLETIN, 0,
                 "unanswerable", ("cost", "£", "budget")),
        Question("What chlorine residual was measured at customer taps this quarter?", INSUFFICIENT, BULLETIN, 0,
                 "unanswerable", ("chlorine",)),
        Question("What was the annual mean PM2.5 concentration at the Westbury Cross station?", INSUFFICIENT,
                 SLIDES, 0, "unanswerable", ("Westbury",)),
        Question("How many good air quality days did Millfield Park have in 2023?", INSUFFICIENT, SLIDES, 0,
                 "unanswerable", ("2023",)),
        Question("What dividend per share is Brightwell Foods paying for 2024?", INSUFFICIENT, BW, 0,
                 "unanswerable", ("dividend",)),
        Question("What were Osterlund Tools' net sales for the whole of 2023?", INSUFFICIENT, OL, 0,
                 "unanswerable", ("full year 2023", "full-year 2023", "whole of 2023")),
        Question("What did the van's odometer read at its previous inspection?", INSUFFICIENT, INSPECTION, 0,
                 "unanswerable", ("previous", "last inspection")),
        Question("How much does a visitor berth at Pellworth cost per night?", INSUFFICIENT, LETTER, 0,
                 "unanswerable", ("visitor", "per night")),
    ]


def check_questions(qs: list[Question], docs: list[Document]) -> None:
    """Fail loudly if an answerable question is not answered on its page or an unanswerable one is answered."""
    by_name = {d.name: d for d in docs}
    if {q.kind for q in qs} - set(KINDS):
        raise AssertionError(f"unknown question kinds: {sorted({q.kind for q in qs} - set(KINDS))}")
    if len({q.question for q in qs}) != len(qs):
        raise AssertionError("duplicate questions")
    for q in qs:
        doc = by_name[q.document]
        if q.kind == "unanswerable":
            if q.answer != INSUFFICIENT or q.page or not q.absent:
                raise AssertionError(f"{q.question!r}: an unanswerable question needs no page and absent strings")
            text = " ".join(doc.pages).lower()
            for absent in q.absent:
                if absent.lower() in text:
                    raise AssertionError(f"{q.question!r}: {absent!r} occurs in {q.document}")
            continue
        check_answer(q, doc)
        if not content_terms(q.question) & content_terms(doc.pages[q.page - 1]):
            raise AssertionError(f"{q.question!r}: shares no word with page {q.page} of {q.document}")
    missing = set(by_name) - {q.document for q in qs if q.kind != "unanswerable"}
    if missing:
        raise AssertionError(f"documents without answerable questions: {sorted(missing)}")


def _records(qs: list[Question]) -> list[dict]:
    answerable = [q for q in qs if q.kind != "unanswerable"]
    unanswerable = [q for q in qs if q.kind == "unanswerable"]
    records = [{"id": f"f{i:02d}", "question": q.question, "answers": [q.answer],
                "pages": [{"document": q.document, "page": q.page}], "is_sufficient": True, "kind": q.kind}
               for i, q in enumerate(answerable, start=1)]
    records += [{"id": f"fu{i:02d}", "question": q.question, "answers": [INSUFFICIENT], "pages": [],
                 "is_sufficient": False, "kind": q.kind} for i, q in enumerate(unanswerable, start=1)]
    return records


def _readme(docs: list[Document], qs: list[Question]) -> str:
    counts = ", ".join(f"{kind} {sum(q.kind == kind for q in qs)}" for kind in KINDS)
    n_answerable = sum(q.kind != "unanswerable" for q in qs)
    return f"""# pagelens field corpus

A second fictional document collection with layouts and wording unlike the sample corpus in
`servers/sample/`, so that retrieval and answering settings can be tuned on one corpus and
reported on the other. Every file here is generated by `scripts/make_field_corpus.py`; edit
that script and re-run it rather than editing these files by hand (a test checks the files
match the script byte for byte).

{document_table(docs)}

`questions.jsonl` holds {len(qs)} questions, one JSON object per line: {n_answerable} answerable
ones (`is_sufficient: true`, the answer verbatim on the page listed in `pages`) and
{len(qs) - n_answerable} unanswerable ones on the same topics (`answers: ["{INSUFFICIENT}"]`,
`pages: []`, `is_sufficient: false`). Each also has a `kind`:

{counts}.

`confusable` questions have a near-duplicate distractor: the two quarterly reports share their
sentence templates and differ only in the company named in the page header, and the bulletin
says who was appointed to lead a plant on a different page from the plant's approval.

All names, companies, figures and places are invented. Made for pagelens and released under
CC0 1.0 (public domain dedication).
"""


BUILDERS: list[Callable[[Path], Document]] = [build_bulletin, build_brightwell, build_osterlund, build_slides,
                                                build_inspection, build_letter]
EXPECTED_PAGES = {BULLETIN: 3, BW: 2, OL: 2, SLIDES: 5, INSPECTION: 2, LETTER: 1}


def build_corpus(out: Path) -> list[Document]:
    docs = build_documents(out, BUILDERS, EXPECTED_PAGES)
    qs = questions()
    check_questions(qs, docs)
    lines = [json.dumps(record, ensure_ascii=False) for record in _records(qs)]
    (out / "questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(docs, qs), encoding="utf-8")
    return docs


def main(argv: Sequence[str] | None = None) -> None:
    cli(__doc__, DEFAULT_OUT, build_corpus, argv)


if __name__ == "__main__":
    main()
