"""Build the sample corpus that ``pagelens demo`` indexes and the tests search.

The corpus mixes the two kinds of PDF a visual-RAG system meets in practice:
born-digital documents with a text layer (prose, tables and bar charts drawn
with reportlab) and scanned documents that are nothing but page images, so
their text can only come from OCR or from the pixels. ``questions.json`` pairs
pages with questions whose answer is a short span printed on that page, so
tests can check that retrieval ranks the right page first and that an
extractive answering policy finds the span.

Before writing ``questions.json`` the script checks every question: its answer
must appear verbatim on its page (text layer for born-digital pages, the drawn
strings on a single line for scans), must not be given away by the question,
and the question's words must point at its page more strongly than at any
other page of the corpus.

The output is deterministic: reportlab runs in invariant mode (fixed dates and
document ids), scan noise comes from seeded generators and the image-only PDFs
get fixed dates, so re-running the script with the same library versions
reproduces the committed bytes.

Usage: python scripts/make_sample_corpus.py [--out DIR]
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from decimal import Decimal
from functools import lru_cache, partial
from pathlib import Path

from reportlab import rl_config
from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.shapes import Drawing, Group, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import LETTER
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import inch
from reportlab.platypus import (
    Flowable,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
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
    Question,
    ScanPage,
    build_documents,
    check_answer,
    cli,
    content_terms,
    document_table,
    scan_document,
    text_layer,
)

# Fixed creation dates and document ids, so the PDF bytes do not change between runs.
rl_config.invariant = 1

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "servers" / "sample"
CREATOR = "pagelens scripts/make_sample_corpus.py"

# Pillow would otherwise stamp the current time into the image-only PDFs.
SCAN_DATE = time.struct_time((2024, 5, 1, 12, 0, 0, 2, 122, 0))
_scan_document = partial(scan_document, creator=CREATOR, date=SCAN_DATE)


# --------------------------------------------------------------------------
# Born-digital PDFs (reportlab)
# --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontSize=20, leading=24, spaceAfter=4),
        "subtitle": ParagraphStyle(
            "subtitle", parent=base["Normal"], fontSize=12, leading=16, alignment=1, spaceAfter=14
        ),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontSize=13, leading=16, spaceBefore=6),
        "body": ParagraphStyle("body", parent=base["BodyText"], fontSize=10.5, leading=14.5, spaceAfter=7),
        "caption": ParagraphStyle(
            "caption", parent=base["BodyText"], fontName="Helvetica-Bold", fontSize=9.5, spaceBefore=4
        ),
    }


def _paras(style: str, *texts: str) -> list[Flowable]:
    return [Paragraph(text, _styles()[style]) for text in texts]


def _table(rows: Sequence[Sequence[str]], col_widths: Sequence[float], right_from: int | None = None,
           total_row: bool = False) -> Table:
    """A ruled table with a shaded header row; numeric columns right-aligned."""
    style = [
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9.5),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 9.5),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#d9e2ec")),
        ("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#7b8794")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 4),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
    ]
    if right_from is not None:
        style.append(("ALIGN", (right_from, 0), (-1, -1), "RIGHT"))
    if total_row:
        style.append(("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 9.5))
    table = Table([list(row) for row in rows], colWidths=list(col_widths), hAlign="LEFT")
    table.setStyle(TableStyle(style))
    return table


def _bar_chart(categories: Sequence[str], values: Sequence[float], label_format: str, x_title: str,
               y_title: str, y_max: float, y_step: float, color: str) -> Drawing:
    """A vertical bar chart with axis titles and the value printed above each bar."""
    width, height = 440, 240
    drawing = Drawing(width, height)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 62, 42, width - 80, height - 60
    chart.data = [list(values)]
    chart.categoryAxis.categoryNames = list(categories)
    chart.categoryAxis.labels.fontName = "Helvetica"
    chart.categoryAxis.labels.fontSize = 9
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, y_max, y_step
    chart.valueAxis.labels.fontName = "Helvetica"
    chart.valueAxis.labels.fontSize = 8
    chart.bars[0].fillColor = colors.HexColor(color)
    chart.barLabelFormat = label_format
    chart.barLabels.fontName = "Helvetica-Bold"
    chart.barLabels.fontSize = 8.5
    chart.barLabels.nudge = 7
    drawing.add(chart)
    drawing.add(String(chart.x + chart.width / 2, 8, x_title, textAnchor="middle", fontName="Helvetica",
                       fontSize=9.5))
    # The y title is rotated a quarter turn, the usual way a value axis is labelled.
    drawing.add(Group(String(0, 0, y_title, textAnchor="middle", fontName="Helvetica", fontSize=9.5),
                      transform=(0, 1, -1, 0, 16, chart.y + chart.height / 2)))
    return drawing


def _write_text_pdf(path: Path, title: str, author: str, footer: str, pages: list[list[Flowable]]) -> None:
    """Lay out one list of flowables per page; each page must fit on one sheet."""
    story: list[Flowable] = []
    for number, flowables in enumerate(pages):
        if number:
            story.append(PageBreak())
        story.extend(flowables)

    def draw_footer(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(colors.HexColor("#52606d"))
        canvas.drawString(doc.leftMargin, 0.5 * inch, footer)
        canvas.drawRightString(doc.pagesize[0] - doc.rightMargin, 0.5 * inch, f"Page {doc.page}")
        canvas.restoreState()

    doc = SimpleDocTemplate(str(path), pagesize=LETTER, title=title, author=author, creator=CREATOR,
                            leftMargin=inch, rightMargin=inch, topMargin=0.8 * inch, bottomMargin=0.8 * inch,
                            invariant=1)
    doc.build(story, onFirstPage=draw_footer, onLaterPages=draw_footer)


# Northwind Analytics annual report ------------------------------------------

NW_REGIONS = {
    "North America": (5.1, 5.6, 6.0, 6.8),
    "Europe": (3.4, 3.8, 4.2, 4.7),
    "Asia-Pacific": (2.2, 2.5, 2.9, 3.3),
    "Latin America": (0.9, 1.0, 1.2, 1.4),
}
NW_YEARS = ("2019", "2020", "2021", "2022", "2023")
NW_ANNUAL = (28.7, 31.2, 38.9, 46.5)  # 2019-2022; 2023 is the table's total


def _northwind_revenue_rows() -> list[list[str]]:
    rows = [["Region", "Q1", "Q2", "Q3", "Q4", "Full year"]]
    for region, quarters in NW_REGIONS.items():
        rows.append([region, *(f"{q:.1f}" for q in quarters), f"{sum(quarters):.1f}"])
    totals = [sum(q[i] for q in NW_REGIONS.values()) for i in range(4)]
    rows.append(["Total", *(f"{t:.1f}" for t in totals), f"{sum(totals):.1f}"])
    return rows


def build_northwind(out: Path) -> Document:
    name = "northwind_annual_report_2023.pdf"
    rows = _northwind_revenue_rows()
    total_2023 = float(rows[-1][-1])
    growth = round(100 * (total_2023 / NW_ANNUAL[-1] - 1))
    pages = [
        _paras("title", "Northwind Analytics")
        + _paras("subtitle", "Annual Report 2023")
        + _paras("h2", "Letter from the Chief Executive")
        + _paras(
            "body",
            "Dear shareholders,",
            "2023 was the year in which Northwind Analytics grew from a promising regional supplier of "
            "forecasting software into an established partner for logistics and retail planners on four "
            f"continents. Revenue reached {total_2023:.1f} million US dollars, an increase of {growth} percent "
            "over 2022, and every one of our sales regions grew faster than its market.",
            "Most of that growth came from Tidewater, our flagship demand-forecasting platform. Tidewater now "
            "plans inventory for more than 3,100 warehouses, and its new weather-aware models cut forecast "
            "error for our largest grocery customers by a fifth. We shipped four major releases during the "
            "year without a single hour of unplanned downtime.",
            "We ended the year with 1,240 employees in nine countries, up from 1,010 a year earlier. Our "
            "headquarters remain in Rotterdam, where the company was founded in 2011, and our engineering "
            "hubs in Lisbon and Toronto both doubled in size.",
            "I would like to thank our customers for their trust and my colleagues for their remarkable "
            "work. The pages that follow set out our results by region, our five-year trajectory and our "
            "priorities for 2024.",
            "Margaret Okafor<br/>Chief Executive Officer, Rotterdam, 14 March 2024",
        ),
        _paras("h2", "Revenue by Region")
        + _paras(
            "body",
            "Table 1 shows revenue for each quarter of 2023 by sales region. All figures are in millions of "
            "US dollars. Quarterly figures are unaudited; full-year figures are audited.",
        )
        + _paras("caption", "Table 1. Quarterly revenue by region, 2023 (USD million)")
        + [Spacer(1, 4), _table(rows, [130, 62, 62, 62, 62, 80], right_from=1, total_row=True), Spacer(1, 10)]
        + _paras(
            "body",
            "North America remained the largest region. Europe grew fastest in the second half of the year, "
            "helped by the launch of Tidewater in Poland and the Nordic countries, while Asia-Pacific "
            "benefited from two large port-logistics contracts signed in Singapore. Latin America, our "
            "newest region, passed one million dollars of quarterly revenue for the first time in the "
            "third quarter.",
        ),
        _paras("h2", "Five-Year Performance")
        + _paras(
            "body",
            "Figure 1 shows annual revenue from 2019 to 2023. Revenue has nearly doubled over the period; "
            "the only slowdown came in 2020, when several retail customers postponed projects during the "
            "pandemic.",
        )
        + _paras("caption", "Figure 1. Annual revenue, 2019-2023 (USD million)")
        + [
            _bar_chart(NW_YEARS, (*NW_ANNUAL, total_2023), "%.1f", "Financial year", "Revenue (USD million)",
                       y_max=60, y_step=10, color="#3e7cb1"),
            Spacer(1, 8),
        ]
        + _paras(
            "body",
            "Operating margin improved to 14.6 percent in 2023 from 11.9 percent in 2022, as hosting costs "
            "per customer fell after the migration to our own forecasting clusters. Cash at year end stood "
            "at 17.3 million US dollars and the company carries no debt.",
        ),
        _paras("h2", "Outlook and Sustainability")
        + _paras(
            "body",
            "For 2024 the board expects revenue growth of 15 to 20 percent, led by Europe and Asia-Pacific. "
            "We will open a research office in Osaka in the second half of 2024 to work with Japanese port "
            "operators on vessel-arrival forecasting.",
            "Northwind has committed to becoming carbon-neutral by 2027. In 2023 we moved 80 percent of our "
            "computing workloads to data centres powered by renewable electricity and cut business air "
            "travel by 30 percent compared with 2019. Remaining emissions will be offset only through "
            "certified removal projects.",
            "The board proposes a dividend of 0.42 US dollars per share, payable on 28 June 2024 to "
            "shareholders registered on 7 June 2024.",
        ),
    ]
    path = out / name
    _write_text_pdf(path, "Northwind Analytics Annual Report 2023", "Northwind Analytics",
                    "Northwind Analytics - Annual Report 2023", pages)
    return Document(name, "Annual report of a fictional software company: CEO letter (prose), quarterly "
                    "revenue by region (table), five-year revenue (bar chart), outlook (prose).",
                    False, text_layer(path), [])


# KX-40 turbine manual --------------------------------------------------------

KX_POWER_CURVE = {4: 120, 5: 310, 6: 620, 7: 1050, 8: 1600, 9: 2250, 10: 2950, 11: 3550, 12: 3900,
                  13: 4000, 14: 4000}

KX_MAINTENANCE = [
    ["Component", "Task", "Interval", "Specification"],
    ["Main bearing", "Regrease", "Every 6 months", "400 g Lubrex GR-7"],
    ["Blade root bolts", "Torque check", "Every 12 months", "1850 Nm"],
    ["Yaw gear ring", "Inspect teeth, lubricate", "Every 6 months", "Lubrex OG-2 spray"],
    ["Gearbox oil", "Sample and analyse", "Every 12 months", "ISO VG 320"],
    ["Gearbox oil", "Replace", "Every 36 months", "620 litres"],
    ["Generator brushes", "Inspect wear", "Every 6 months", "Minimum length 22 mm"],
    ["Hydraulic accumulator", "Check precharge", "Every 24 months", "90 bar nitrogen"],
    ["Tower flange bolts", "Torque check", "Every 24 months", "2400 Nm"],
]


def build_kx40(out: Path) -> Document:
    name = "kx40_maintenance_manual.pdf"
    pages = [
        _paras("title", "Model KX-40 Wind Turbine")
        + _paras("subtitle", "Service and Maintenance Manual, Revision C<br/>Halvorsen Energy Systems")
        + _paras("h2", "1. Safety Rules")
        + _paras(
            "body",
            "The KX-40 is a 4.0 MW turbine with a hub height of 105 m. All work described in this manual "
            "must be carried out by at least two certified technicians, and one of them must remain at the "
            "tower base or in radio contact with it at all times.",
            "<b>Weather limits.</b> Never climb the tower when the ten-minute mean wind speed exceeds "
            "12 m/s, and never enter the hub when it exceeds 15 m/s. Stop all work and descend at once if "
            "lightning is detected within 10 km of the site.",
            "<b>Lockout.</b> Before entering the nacelle, stop the turbine from the base controller, engage "
            "the rotor lock pin and fit a personal padlock to the main breaker Q1. Only the technician who "
            "fitted a padlock may remove it.",
            "<b>Personal protective equipment.</b> Wear a full-body harness with twin energy-absorbing "
            "lanyards and a helmet with chin strap. Arc-rated clothing is required in the converter "
            "cabinet. The rescue and descent kit stored in the nacelle must be inspected every 12 months "
            "by a competent person.",
        ),
        _paras("h2", "2. Maintenance Intervals")
        + _paras(
            "body",
            "Table 2 lists the scheduled maintenance tasks. Intervals count from the commissioning date and "
            "are not extended by downtime. Record every task in the turbine logbook together with the "
            "technician's ID.",
        )
        + _paras("caption", "Table 2. Scheduled maintenance, Model KX-40")
        + [Spacer(1, 4), _table(KX_MAINTENANCE, [120, 130, 100, 118]), Spacer(1, 10)]
        + _paras(
            "body",
            "Use only the lubricants listed. Mixing Lubrex GR-7 with lithium-based greases damages the main "
            "bearing seals. Torque values apply to lightly oiled threads; always use a calibrated hydraulic "
            "wrench and tighten in a star pattern in three passes.",
        ),
        _paras("h2", "3. Power Curve and Fault Codes")
        + _paras(
            "body",
            "Figure 2 shows the guaranteed electrical output of the KX-40 at standard air density "
            "(1.225 kg/m3). Output is held at the rated 4000 kW above 13 m/s, and the turbine cuts out at "
            "25 m/s.",
        )
        + _paras("caption", "Figure 2. KX-40 power curve")
        + [
            _bar_chart([str(v) for v in KX_POWER_CURVE], list(KX_POWER_CURVE.values()), "%d",
                       "Hub-height wind speed (m/s)", "Electrical output (kW)", y_max=4500, y_step=500,
                       color="#2f9e44"),
            Spacer(1, 8),
        ]
        + _paras(
            "body",
            "<b>E-217: yaw motor overcurrent.</b> Check the yaw brake pressure and the motor thermal relay "
            "before resetting. Three resets within 24 hours lock the yaw system until a technician signs off.",
            "<b>E-305: low pitch hydraulic pressure.</b> Check the accumulator precharge (Table 2) and look "
            "for leaks at the pitch cylinders.",
            "<b>E-412: generator bearing overtemperature.</b> The bearing has exceeded 95 degrees Celsius. "
            "Let the generator cool and check the grease condition before restarting.",
        ),
    ]
    path = out / name
    _write_text_pdf(path, "Model KX-40 Service and Maintenance Manual", "Halvorsen Energy Systems",
                    "Halvorsen Energy Systems - KX-40 Service Manual, Rev. C", pages)
    return Document(name, "Service manual of a fictional wind turbine: safety rules (prose), maintenance "
                    "intervals (table), power curve (bar chart) and fault codes (prose).",
                    False, text_layer(path), [])


# Marrow Estuary eelgrass study ---------------------------------------------

EELGRASS_SITES = [
    ["Site", "Distance to outfall (km)", "Shoot density (shoots/m2)", "DIN (micromol/L)"],
    ["Kestrel Creek Mouth", "0.3", "188", "18.7"],
    ["Saltmarsh Reach", "1.4", "236", "14.2"],
    ["Otter Flats", "2.8", "297", "9.6"],
    ["Pilot Shoal", "4.1", "351", "6.8"],
    ["Heron Point", "6.2", "412", "4.1"],
    ["Gull Bank", "8.5", "438", "3.3"],
]
EELGRASS_COVER = {"2018": 22, "2019": 24, "2020": 27, "2021": 31, "2022": 34, "2023": 38}


def build_eelgrass(out: Path) -> Document:
    name = "marrow_estuary_eelgrass_study.pdf"
    first, last = EELGRASS_COVER["2018"], EELGRASS_COVER["2023"]
    pages = [
        _paras("title", "Nutrient Runoff and Eelgrass Recovery in the Marrow Estuary, 2018-2023")
        + _paras("subtitle", "Lucia Ferreira, Tomas Nakamura and Sade Oduya<br/>"
                             "Institute for Coastal Ecology, Port Alder")
        + _paras("h2", "Abstract")
        + _paras(
            "body",
            "Eelgrass (<i>Zostera marina</i>) meadows in the Marrow Estuary have been recovering since the "
            "Bellhaven paper mill closed in 2016, but the recovery is uneven. We surveyed 14 monitoring "
            "sites every summer from 2018 to 2023 and related shoot density to dissolved inorganic nitrogen "
            "(DIN) in the water column. Sites downstream of the Kestrel Creek outfall had 41 percent lower "
            "shoot density than comparable upstream sites, and density fell steadily as DIN rose. "
            f"Estuary-wide eelgrass cover nevertheless increased from {first} to {last} percent of the "
            "surveyed area. Controlling agricultural runoff through Kestrel Creek is the most effective "
            "single step to speed recovery.",
            "<b>Keywords:</b> seagrass, Zostera marina, eutrophication, estuary restoration",
        )
        + _paras("h2", "1. Introduction")
        + _paras(
            "body",
            "Seagrass meadows stabilise sediments, store carbon and shelter juvenile fish. In temperate "
            "estuaries their main threat is eutrophication: nitrogen from farmland feeds phytoplankton and "
            "epiphytic algae that shade the leaves. The Marrow Estuary receives most of its farm runoff "
            "through a single tributary, Kestrel Creek, which makes it a natural experiment on how far "
            "nutrient effects reach along a channel.",
        ),
        _paras("h2", "2. Methods")
        + _paras(
            "body",
            "Each of the 14 sites was visited once between 15 July and 15 August. Divers counted shoots in "
            "50 cm by 50 cm quadrats placed every 5 m along two fixed 50 m transects per site, giving 20 "
            "quadrats per site and visit. Water samples were taken at mid-depth on the same day and "
            "analysed for DIN by flow-injection analysis.",
            "Distance to the Kestrel Creek outfall was measured along the main channel. We fitted a linear "
            "mixed model of log shoot density with DIN as a fixed effect and site and year as random "
            "effects.",
        )
        + _paras("h2", "3. Results")
        + _paras(
            "body",
            "Table 1 gives the 2023 values for six representative sites, ordered by distance from the "
            "outfall. Shoot density declined with DIN in every survey year (slope -0.048 per micromol/L, "
            "p &lt; 0.001).",
        )
        + _paras("caption", "Table 1. Shoot density and nitrogen at six sites, summer 2023")
        + [Spacer(1, 4), _table(EELGRASS_SITES, [112, 124, 136, 96], right_from=1)],
        _paras(
            "body",
            "Eelgrass cover, the share of the surveyed area with at least one shoot per quadrat, rose in "
            "every year of the study (Figure 1). The increase was concentrated at sites more than 4 km from "
            "the outfall.",
        )
        + _paras("caption", "Figure 1. Eelgrass cover in the Marrow Estuary by survey year")
        + [
            _bar_chart(list(EELGRASS_COVER), list(EELGRASS_COVER.values()), "%d%%", "Survey year",
                       "Cover (% of surveyed area)", y_max=50, y_step=10, color="#0b7285"),
            Spacer(1, 8),
        ]
        + _paras("h2", "4. Discussion")
        + _paras(
            "body",
            "The gradient in Table 1 suggests that nutrient effects extend about 4 km along the channel. "
            "Beyond that distance, shoot density approaches values recorded at reference meadows outside "
            "the estuary. A buffer strip programme along Kestrel Creek, proposed by the Port Alder water "
            "board for 2025, would be a direct test of this interpretation.",
        )
        + _paras("h2", "References")
        + _paras(
            "body",
            "Ostrander, K. and Bell, M. (2019) Light limitation of temperate seagrass under nutrient "
            "loading. <i>Journal of Estuarine Studies</i> 41: 112-129.",
            "Port Alder Water Board (2022) Kestrel Creek catchment nutrient budget. Technical report 22-3.",
        ),
    ]
    path = out / name
    _write_text_pdf(path, "Nutrient Runoff and Eelgrass Recovery in the Marrow Estuary", "Ferreira et al.",
                    "Ferreira et al. - Eelgrass recovery in the Marrow Estuary - Working Paper 24-07", pages)
    return Document(name, "Research paper on a fictional estuary study: abstract and methods (prose), "
                    "site results (table), cover by year (bar chart).",
                    False, text_layer(path), [])


# --------------------------------------------------------------------------
# Scanned PDFs (Pillow)
# --------------------------------------------------------------------------


def build_memo(out: Path) -> Document:
    page = ScanPage()
    x, right = SCAN_MARGIN, SCAN_SIZE[0] - SCAN_MARGIN
    page.text(x, 120, "BELLMORE COUNTY PUBLIC LIBRARY", size=40, bold=True)
    page.text(x, 176, "40 Harbor Street, Bellmore", size=24)
    page.rule(222, width=3)
    page.text(SCAN_SIZE[0] / 2, 262, "MEMORANDUM", size=44, bold=True, anchor="ma")
    y = 360
    for label, value in (("To:", "All Technical Services staff"),
                         ("From:", "Priya Raman, Facilities Manager"),
                         ("Date:", "February 26, 2024"),
                         ("Subject:", "Move of Technical Services to the Main Branch")):
        page.text(x, y, label, size=28, bold=True)
        page.text(x + 190, y, value, size=28)
        y += 48
    page.rule(y + 10)
    y += 50
    for text in (
        "Technical Services will move from the Elm Road annex to the second floor of the Main Branch "
        f"at 40 Harbor Street. The move will take place on March{NBSP}18,{NBSP}2024. The annex will close to "
        "staff at 3 pm on March 15.",
        "Please pack your desk before you leave on March 15. Label every box with a green tag "
        "showing your name and new desk number. Tags are available from the front office. Do not pack "
        "shared equipment; the movers will handle it.",
        f"Staff parking at Harbor Street requires a permit. To request one, contact Dana{NBSP}Whitfield "
        "at extension 2314 before March 8.",
        "Thank you for your patience during the move.",
    ):
        y = page.paragraph(y, text, size=28)
    page.text(x, y + 30, "P. Raman", size=30)
    page.text(right, SCAN_SIZE[1] - 110, "Internal - do not distribute", size=22, anchor="ra")
    return _scan_document(out, "memo_relocation_scan.pdf",
                          "Scanned office memo about a department move: header fields and short paragraphs.",
                          "Memo: Move of Technical Services", [page], angles=[0.8], seed=101)


INVOICE_ITEMS = [
    ("Event posters, A2, full colour", 150, Decimal("6.40")),
    ("Library cards, laminated", 2000, Decimal("0.55")),
    ("Annual report booklets, 24 pages", 120, Decimal("9.25")),
    ("Design and proofing", 1, Decimal("185.00")),
]
INVOICE_TAX_RATE = Decimal("0.08")


def _money(amount: Decimal) -> str:
    return f"${amount.quantize(Decimal('0.01')):,}"


def invoice_total() -> str:
    subtotal = sum(qty * price for _, qty, price in INVOICE_ITEMS)
    return _money(subtotal * (1 + INVOICE_TAX_RATE))


def build_invoice(out: Path) -> Document:
    page = ScanPage()
    x, right = SCAN_MARGIN, SCAN_SIZE[0] - SCAN_MARGIN
    page.text(x, 120, "CEDAR & FINCH PRINTING CO.", size=40, bold=True)
    page.text(x, 176, "112 Mill Lane, Port Alder  -  Tel. 555-0148", size=24)
    page.text(right, 120, "INVOICE", size=48, bold=True, anchor="ra")
    page.rule(222, width=3)

    page.text(x, 270, "Bill to:", size=26, bold=True)
    for i, line in enumerate(("Bellmore County Public Library", "Accounts Payable", "40 Harbor Street, Bellmore")):
        page.text(x, 310 + 38 * i, line, size=26)
    for i, (label, value) in enumerate((("Invoice No.:", "INV-2024-0173"), ("Invoice date:", "April 2, 2024"),
                                        ("Payment due:", "May 2, 2024"), ("Order ref.:", "PO 5521"))):
        page.text(700, 270 + 40 * i, label, size=26, bold=True)
        page.text(right, 270 + 40 * i, value, size=26, anchor="ra")

    qty_x, price_x, amount_x = 760, 940, right
    y = 500
    page.rule(y - 10)
    page.text(x, y, "Description", size=26, bold=True)
    page.text(qty_x, y, "Qty", size=26, bold=True, anchor="ra")
    page.text(price_x, y, "Unit price", size=26, bold=True, anchor="ra")
    page.text(amount_x, y, "Amount", size=26, bold=True, anchor="ra")
    page.rule(y + 42)
    y += 64
    subtotal = Decimal(0)
    for description, qty, price in INVOICE_ITEMS:
        page.text(x, y, description, size=26)
        page.text(qty_x, y, f"{qty:,}", size=26, anchor="ra")
        page.text(price_x, y, _money(price), size=26, anchor="ra")
        page.text(amount_x, y, _money(qty * price), size=26, anchor="ra")
        subtotal += qty * price
        y += 50
    page.rule(y)
    y += 24
    tax = subtotal * INVOICE_TAX_RATE
    for label, amount, bold in (("Subtotal", _money(subtotal), False),
                                (f"Sales tax ({INVOICE_TAX_RATE * 100:.0f}%)", _money(tax), False),
                                ("Total due", invoice_total(), True)):
        page.text(price_x, y, label, size=28 if bold else 26, bold=bold, anchor="ra")
        page.text(amount_x, y, amount, size=28 if bold else 26, bold=bold, anchor="ra")
        y += 48
    y += 60
    for text in ("Please quote the invoice number with your payment. Payment by bank transfer to "
                 "account 4471-2290, Harbour Savings Bank.",
                 "Thank you for your business."):
        y = page.paragraph(y, text, size=24)
    return _scan_document(out, "invoice_cedar_finch_scan.pdf",
                          "Scanned printing invoice: billing details, line items and totals.",
                          "Invoice INV-2024-0173", [page], angles=[-0.6], seed=202)


# --------------------------------------------------------------------------
# Questions and checks
# --------------------------------------------------------------------------

NW, KX, EG = "northwind_annual_report_2023.pdf", "kx40_maintenance_manual.pdf", "marrow_estuary_eelgrass_study.pdf"
MEMO, INVOICE = "memo_relocation_scan.pdf", "invoice_cedar_finch_scan.pdf"


def questions() -> list[Question]:
    return [
        Question("Who signed the letter from the chief executive in Northwind's 2023 annual report?",
                 "Margaret Okafor", NW, 1, "prose"),
        Question("What is the name of Northwind's flagship demand-forecasting platform?", "Tidewater", NW, 1, "prose"),
        Question("What was Northwind's revenue in Europe in Q3 2023, in USD million?", "4.2", NW, 2, "table"),
        Question("How much quarterly revenue did Latin America bring Northwind in Q4?", "1.4", NW, 2, "table"),
        Question("In the five-year annual revenue chart, what revenue did Northwind report for 2021?",
                 "38.9", NW, 3, "chart"),
        Question("By which year has Northwind committed to becoming carbon-neutral?", "2027", NW, 4, "prose"),
        Question("Above what mean wind speed is it forbidden to climb the KX-40 tower?", "12 m/s", KX, 1, "prose"),
        Question("What torque is specified for the KX-40 blade root bolts?", "1850 Nm", KX, 2, "table"),
        Question("How many litres of oil does a KX-40 gearbox oil replacement take?", "620 litres", KX, 2, "table"),
        Question("What electrical output does the KX-40 power curve show at a wind speed of 9 m/s, in kW?",
                 "2250", KX, 3, "chart"),
        Question("What does fault code E-217 indicate on the KX-40?", "yaw motor overcurrent", KX, 3, "prose"),
        Question("How much lower was eelgrass shoot density below the Kestrel Creek outfall than upstream?",
                 "41 percent", EG, 1, "prose"),
        Question("What quadrat size did divers use to count eelgrass shoots along the transects?",
                 "50 cm by 50 cm", EG, 2, "prose"),
        Question("What shoot density was recorded at Heron Point in summer 2023?", "412", EG, 2, "table"),
        Question("What eelgrass cover does the Marrow Estuary chart show for the 2022 survey year?",
                 "34%", EG, 3, "chart"),
        Question("On what date will Technical Services move from the Elm Road annex?", "March 18, 2024",
                 MEMO, 1, "scan"),
        Question("Whom should library staff contact to request a Harbor Street parking permit?", "Dana Whitfield",
                 MEMO, 1, "scan"),
        Question("What colour of tag must staff put on each packed box?", "green", MEMO, 1, "scan"),
        Question("What is the total due on Cedar & Finch invoice INV-2024-0173?", invoice_total(),
                 INVOICE, 1, "scan"),
        Question("By what date must invoice INV-2024-0173 be paid?", "May 2, 2024", INVOICE, 1, "scan"),
    ]


def _lexical_ranking(question: str, pages: dict[tuple[str, int], set[str]]) -> list[tuple[float, tuple[str, int]]]:
    """Rank pages by the summed idf of the question terms they contain, best first."""
    terms = content_terms(question)
    df = {t: sum(t in page for page in pages.values()) for t in terms}
    idf = {t: math.log(len(pages) / df[t]) for t in terms if df[t]}
    scores = [(sum(idf[t] for t in terms & page if t in idf), key) for key, page in pages.items()]
    return sorted(scores, key=lambda s: -s[0])


def check_questions(qs: list[Question], docs: list[Document]) -> None:
    """Fail loudly if a question is unanswerable from its page or does not single that page out."""
    by_name = {d.name: d for d in docs}
    page_terms = {(d.name, i + 1): content_terms(text) for d in docs for i, text in enumerate(d.pages)}
    kinds = {q.kind for q in qs}
    if kinds - {"table", "chart", "prose", "scan"}:
        raise AssertionError(f"unknown question kinds: {kinds}")
    for q in qs:
        check_answer(q, by_name[q.document])
        (best, top), (runner_up, _) = _lexical_ranking(q.question, page_terms)[:2]
        if top != (q.document, q.page) or best <= runner_up:
            raise AssertionError(f"{q.question!r}: its terms point at {top}, not {(q.document, q.page)}")
    missing = set(by_name) - {q.document for q in qs}
    if missing:
        raise AssertionError(f"documents without questions: {sorted(missing)}")


def _readme(docs: list[Document], n_questions: int) -> str:
    return f"""# pagelens sample corpus

A small, fictional document collection that `pagelens demo` indexes and that the
tests use to check retrieval and answering. Every file here is generated by
`scripts/make_sample_corpus.py`; edit that script and re-run it rather than editing
these files by hand (the tests check the files match the script byte for byte).

{document_table(docs)}

`questions.json` holds {n_questions} questions. Each has an `id`, the `question`, a
short `answer` that appears verbatim on the page, the `document` file name, the
1-based `page` and a `kind`: `table`, `chart`, `prose` (text-layer pages) or `scan`
(image-only pages, readable only through OCR or the page image).

All names, companies, figures and places are invented. Made for pagelens and
released under CC0 1.0 (public domain dedication).
"""


BUILDERS: list[Callable[[Path], Document]] = [build_northwind, build_kx40, build_eelgrass, build_memo, build_invoice]
EXPECTED_PAGES = {NW: 4, KX: 3, EG: 3, MEMO: 1, INVOICE: 1}


def build_corpus(out: Path) -> list[Document]:
    docs = build_documents(out, BUILDERS, EXPECTED_PAGES)
    qs = questions()
    check_questions(qs, docs)
    records = [{"id": f"q{i:02d}", **asdict(q)} for i, q in enumerate(qs, start=1)]
    (out / "questions.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(docs, len(qs)), encoding="utf-8")
    return docs


def main(argv: Sequence[str] | None = None) -> None:
    cli(__doc__, DEFAULT_OUT, build_corpus, argv)


if __name__ == "__main__":
    main()
