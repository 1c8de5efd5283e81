"""Round-trip latency of the MCP server's search_pages and crop_region over stdio at 10k pages (goal p50 <= 50 ms).

The store (a temporary folder): the bundled sample corpus is indexed as `pagelens index` does it, then synthetic
documents of 50 pages bring it to --pages pages, written through the store's own calls in the order ingest.py
writes a document (mark pending, page images, vectors into the store's VectorStore, flush, commit the catalogue
rows), and the search cache is built and saved as `pagelens index` leaves it:
  text     30 lines a page (~330 words, boxes laid out as on a 144-dpi page), words drawn Zipf-wise from the
           sample corpus's words and a tail of 20,000 generated pseudo-words, each page headed by its own
           codes; cut into passages with the real tokenizer (128 tokens: ~6 a page, ~60k at 10k pages) and
           weighted for BM25 as real pages are;
  vectors  synthetic unit vectors (clustered, as benchmarks/search.py makes them), not MiniLM embeddings:
           embedding ~60k passages would take ~50 minutes on two cores (~20 passages/s), and a search's cost
           (a scan of the same matrix) does not depend on the values. Queries are embedded by the real MiniLM,
           in the server, as in any search;
  images   hard links to the sample corpus's stored pages and thumbnails (real 144-dpi JPEGs, written once), so
           a crop decodes, cuts and encodes a real page of real size.

Timed, after WARMUP untimed calls each, the same calls three ways:
  direct     in this process: Retriever.search and reading the hits' thumbnails; loading the page, crop + zoom
             and PNG encoding (the work each tool does, without MCP)
  MCP local  the MCP server in this process, through the SDK's in-memory client: the tools' JSON and base64,
             no pipes
  MCP stdio  `python -m pagelens serve mcp` as a subprocess, through the SDK's stdio client, as a desktop
             assistant runs it
search_pages: --calls varied queries (the 20 sample questions, then phrases from random synthetic pages), k=5.
crop_region: --calls boxes (a line, a paragraph, a quarter page, jittered) on as many random pages.
Printed: p50/p99 ms per tool and way, the ratio to direct, how many sample questions found their gold page first
over stdio among the 10k pages (a check that the store answers as a real one; the synthetic pages reuse the sample's
words, so they compete; phrases have no right answer, their pages' vectors not being embeddings), the store, the
machine and its load average (MiniLM's query embedding slows sharply when other work shares the CPUs), and the
goal. Building 10k pages takes about two minutes on two cores; the whole run about two and a half.

    python benchmarks/mcp.py [--pages 10000] [--calls 100]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Python puts a script's folder first on sys.path, where `import mcp` would find this file, not the MCP SDK.
sys.path = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from pagelens.servers.config import load_settings
from pagelens.servers.cli.demo import load_questions, sample_folder
from pagelens.servers.mcp.server import build_server
from pagelens.tools.corpus.catalog import NewPage, PassageRow
from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.imagefiles import encode_image, load_page_image
from pagelens.tools.boxes import Box
from pagelens.tools.pages import Page, TextLine, page_id_for
from pagelens.tools.regions import crop
from pagelens.tools.retrieval.embedders import MiniLMEmbedder
from pagelens.tools.retrieval.lexical import passage_vector, tokenize
from pagelens.tools.retrieval.passages import split_passages
from pagelens.tools.search import Retriever
from pagelens.tools.retrieval.vectors import VectorRow

GOAL_P50_MS = 50.0
PAGES_PER_DOCUMENT = 50
LINES_PER_PAGE = 30
WORDS_PER_LINE = 11
PSEUDO_WORDS = 20_000
CLUSTERS = 256
INSERT_BATCH = 2000
WARMUP = 5
K = 5
SYLLABLES = ("ka", "lo", "ren", "ti", "mar", "os", "vel", "du", "sen", "qui", "bra", "no", "tal", "ep", "zu", "hin",
             "cor", "ad", "fey", "mu", "gra", "lin", "est", "ov", "pa", "ric", "sho", "um", "wen", "ya", "dre", "ix")
# A text line, a paragraph and a quarter page, as fractions of the page (x1, y1, x2, y2), as in benchmarks/crop.py.
BOXES = ((0.10, 0.300, 0.50, 0.315), (0.10, 0.300, 0.50, 0.450), (0.00, 0.000, 0.50, 0.500))


@dataclass(frozen=True)
class Query:
    """A search and, for a sample question, its gold page (document name, page number)."""

    text: str
    gold: tuple[str, int] | None = None


@dataclass(frozen=True)
class CropCall:
    page: Page
    box: Box


# -- building the store -----------------------------------------------------------------------------------------------
def vocabulary(store: PageStore, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Words for synthetic pages, most frequent first, and their cumulative Zipf probabilities: the sample corpus's
    words (by their frequency there), then generated pseudo-words, so the lexical index has a long tail of terms as
    real corpora do."""
    counts: dict[str, int] = {}
    for page in store.pages():
        for line in store.lines(page.page_id):
            for word in line.text.split():
                if tokenize(word):
                    counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda w: -counts[w])
    pseudo: set[str] = set()
    while len(pseudo) < PSEUDO_WORDS:
        pseudo.add("".join(rng.choice(SYLLABLES, rng.integers(2, 5))))
    words += sorted(pseudo - set(words))
    weights = 1.0 / np.arange(1, len(words) + 1)
    return words, np.cumsum(weights / weights.sum())


def page_lines(heading: str, width: int, words: list[str], cdf: np.ndarray,
               rng: np.random.Generator) -> list[TextLine]:
    """A synthetic page's text lines with boxes in page pixels (1-inch margins, 40 px line pitch at 144 dpi)."""
    picks = np.minimum(np.searchsorted(cdf, rng.random((LINES_PER_PAGE - 1, WORDS_PER_LINE))), len(words) - 1)
    texts = [heading] + [" ".join(words[i] for i in row) for row in picks]
    return [TextLine(text, Box(144.0, 144.0 + 40 * n, min(width - 144.0, 144.0 + 9.5 * len(text)), 168.0 + 40 * n))
            for n, text in enumerate(texts)]


def add_synthetic_documents(store: PageStore, count: int, embedder: MiniLMEmbedder,
                            rng: np.random.Generator) -> None:
    """`count` synthetic pages in documents of PAGES_PER_DOCUMENT, written in the order ingest.py writes a document:
    pending, images, vectors, flush, then the catalogue commit."""
    templates = store.pages()
    words, cdf = vocabulary(store, rng)
    tokenizer = embedder.tokenizer()

    def count_tokens(lines: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]

    documents: dict[str, tuple[str, list[NewPage], list[PassageRow]]] = {}
    versions: dict[str, str] = {}
    rows: list[tuple[str, PassageRow, dict[int, float]]] = []
    for index in range(count):
        number, page_number = index // PAGES_PER_DOCUMENT + 1, index % PAGES_PER_DOCUMENT + 1
        name = f"synthetic/report-{number:04d}.pdf"
        document_id = hashlib.sha256(name.encode()).hexdigest()
        if page_number == 1:
            versions[document_id] = store.begin_version(document_id)
            documents[document_id] = (name, [], [])
        _, pages, passages = documents[document_id]
        template = templates[index % len(templates)]
        version = versions[document_id]
        for source, target in ((template.image_path, store.image_path(document_id, version, page_number)),
                               (template.thumbnail_path, store.thumbnail_path(document_id, version, page_number))):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
        page_id = page_id_for(document_id, page_number)
        heading = f"Report {number:04d} page {page_number}: reference R{number:04d}-{page_number:02d}-{index:06x}"
        lines = page_lines(heading, template.width, words, cdf, rng)
        pages.append(NewPage(page_id, page_number, template.width, template.height, "pdf", lines))
        texts = split_passages([line.text for line in lines], count_tokens, store.retrieval.passage_tokens)
        for j, text in enumerate(texts):
            weights = passage_vector(text)
            passages.append(PassageRow(f"{page_id}:{version}:{j}", page_id, text, tuple(weights)))
            rows.append((document_id, passages[-1], weights))

    centers = rng.standard_normal((CLUSTERS, embedder.dim))
    dense = centers[rng.integers(0, CLUSTERS, len(rows))] + 0.35 * rng.standard_normal((len(rows), embedder.dim))
    dense = (dense / np.linalg.norm(dense, axis=1, keepdims=True)).astype(np.float32)
    vector_rows = [(document_id, VectorRow(passage.pk, passage.page_id, document_id, dense[i], weights))
                   for i, (document_id, passage, weights) in enumerate(rows)]
    for start in range(0, len(vector_rows), INSERT_BATCH):
        for document_id, batch in itertools.groupby(vector_rows[start:start + INSERT_BATCH], key=lambda r: r[0]):
            store.vectors.insert([row for _, row in batch], versions[document_id])
    store.vectors.flush()
    for document_id, (name, pages, passages) in documents.items():
        store.catalog.commit_document(document_id=document_id, name=name, kind="pdf", dpi=144, size=0,
                                      source=str(store.home.parent / name), pages=pages, passages=passages,
                                      version=versions[document_id], owner=store.owner_key)


def workload(store: PageStore, calls: int, rng: np.random.Generator) -> tuple[list[Query], list[CropCall]]:
    """Varied searches (sample questions, then phrases of random synthetic pages) and crops of random pages."""
    pages = store.pages()
    synthetic = [page for page in pages if page.document.startswith("synthetic/")]
    queries = [Query(q["question"], (q["document"], q["page"])) for q in load_questions()][:calls]
    while len(queries) < calls:
        page = synthetic[rng.integers(len(synthetic))]
        words = store.lines(page.page_id)[rng.integers(1, LINES_PER_PAGE)].text.split()
        start = rng.integers(0, len(words) - 6)
        queries.append(Query(" ".join(words[start:start + 6])))
    crops = []
    for _ in range(calls):
        page = pages[rng.integers(len(pages))]
        x1, y1, x2, y2 = BOXES[rng.integers(len(BOXES))]
        dx, dy = rng.uniform(0, 0.4), rng.uniform(0, 0.4)
        crops.append(CropCall(page, Box((x1 + dx) * page.width, (y1 + dy) * page.height,
                                        (x2 + dx) * page.width, (y2 + dy) * page.height)))
    return queries, crops


def disk_bytes(folder: Path) -> int:
    """Bytes under `folder`, a hard-linked file counted once."""
    seen: dict[tuple[int, int], int] = {}
    for root, _, files in os.walk(folder):
        for name in files:
            info = os.lstat(Path(root) / name)
            seen[(info.st_dev, info.st_ino)] = info.st_size
    return sum(seen.values())


# -- timing -----------------------------------------------------------------------------------------------------------
def timed(call: Callable[[object], object], items: list) -> list[float]:
    """Milliseconds per call over `items`, after WARMUP untimed calls on the first items."""
    for item in items[:WARMUP]:
        call(item)
    times = []
    for item in items:
        start = time.perf_counter()
        call(item)
        times.append((time.perf_counter() - start) * 1000)
    return times


async def timed_async(call: Callable[[object], Awaitable[object]], items: list) -> tuple[list[float], list]:
    """`timed` for coroutines; also their results."""
    for item in items[:WARMUP]:
        await call(item)
    times, results = [], []
    for item in items:
        start = time.perf_counter()
        results.append(await call(item))
        times.append((time.perf_counter() - start) * 1000)
    return times, results


def direct(store: PageStore, embedder: MiniLMEmbedder, queries: list[Query],
           crops: list[CropCall]) -> dict[str, list[float]]:
    """The tools' work in this process, without MCP."""
    retriever = Retriever(store, embedder)

    def search(query: Query) -> None:
        for hit in retriever.search(query.text, K):
            hit.page.thumbnail_path.read_bytes()

    def cut(call: CropCall) -> None:
        encode_image(crop(load_page_image(call.page.image_path), call.page.page_id, call.box).image)

    return {"search_pages": timed(search, queries), "crop_region": timed(cut, crops)}


async def over_mcp(client: Client, queries: list[Query], crops: list[CropCall]) -> tuple[dict[str, list[float]], int]:
    """Both tools through an MCP client; also how many sample questions ranked their gold page first."""

    async def call(name: str, arguments: dict) -> dict:
        result = await client.call_tool(name, arguments)
        if result.is_error:
            raise RuntimeError(f"{name}({arguments}) failed: {result.content[0].text}")
        return result.structured_content

    search_ms, found = await timed_async(lambda q: call("search_pages", {"query": q.text, "k": K}), queries)
    crop_ms, _ = await timed_async(lambda c: call("crop_region", {"page_id": c.page.page_id, "box": c.box.as_list()}),
                                   crops)
    first = sum(bool(r["hits"]) and (r["hits"][0]["document"], r["hits"][0]["page_number"]) == q.gold
                for q, r in zip(queries, found) if q.gold is not None)
    return {"search_pages": search_ms, "crop_region": crop_ms}, first


def server_env(home: Path) -> dict[str, str]:
    """The servers' environment: the store, and an empty config file, so both run on the default settings whatever
    pagelens.toml the working folder holds."""
    config = home.parent / "pagelens.toml"
    config.touch()
    return {"PAGELENS_HOME": str(home), "PAGELENS_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}


async def mcp_local(home: Path, queries: list[Query], crops: list[CropCall]) -> dict[str, list[float]]:
    server = build_server(load_settings(env=server_env(home)))
    async with Client(server) as client:
        return (await over_mcp(client, queries, crops))[0]


async def mcp_stdio(home: Path, queries: list[Query], crops: list[CropCall]) -> tuple[dict[str, list[float]], int]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "pagelens", "serve", "mcp"], cwd=home.parent,
                                   env=server_env(home))
    log = home.parent / "server.log"
    try:
        with open(log, "w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                return await over_mcp(client, queries, crops)
    except BaseException:
        print(f"the stdio server's log:\n{log.read_text()}", file=sys.stderr)
        raise


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


@dataclass(frozen=True)
class Built:
    """The store as built, the calls to time, and their direct timings."""

    sample_pages: int
    pages: int
    documents: int
    passages: int
    seconds: float
    queries: list[Query]
    crops: list[CropCall]
    direct: dict[str, list[float]]


def build(home: Path, pages: int, calls: int) -> Built:
    """Build the store, choose the calls and time them directly. Run in a child process: Milvus Lite holds a store
    until the process that opened it ends, and the MCP servers open it afterwards."""
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with PageStore(StoreSettings(home=home)) as store:
        index_paths(store, sorted(sample_folder().glob("*.pdf")), progress=False)
        sample_pages = len(store.pages())
        embedder = MiniLMEmbedder()
        add_synthetic_documents(store, pages - sample_pages, embedder, rng)
        store.memory_index()
        seconds = time.perf_counter() - started
        queries, crops = workload(store, calls, rng)
        return Built(sample_pages, len(store.pages()), len(store.documents()), store.catalog.passage_count(), seconds,
                     queries, crops, direct(store, embedder, queries, crops))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10_000, help="pages in the store, sample corpus included")
    parser.add_argument("--calls", type=int, default=100, help="timed calls of each tool, each way")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, {platform.platform()}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "store"
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            built = child.submit(build, home, args.pages, args.calls).result()
        print(f"store: {built.pages} pages ({built.sample_pages} sample + {built.pages - built.sample_pages} "
              f"synthetic), {built.documents} documents, {built.passages} passages, "
              f"{disk_bytes(home) / 2 ** 20:.0f} MiB on disk; built in {built.seconds:.0f} s")
        timings = {"direct": built.direct}
        # The subprocess first: once this process has opened the store, it holds it until it exits.
        stdio, first = asyncio.run(mcp_stdio(home, built.queries, built.crops))
        timings["MCP local"] = asyncio.run(mcp_local(home, built.queries, built.crops))
        timings["MCP stdio"] = stdio
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")

    print(f"{args.calls} calls per tool and way (search_pages k={K}, varied queries; crop_region, varied boxes and "
          f"pages), after {WARMUP} warm-up calls")
    print(f"{'way':<11}{'tool':<14}{'p50 ms':>8}{'p99 ms':>8}{'p50/direct':>12}")
    for way, by_tool in timings.items():
        for tool, samples in by_tool.items():
            ratio = statistics.median(samples) / statistics.median(built.direct[tool])
            print(f"{way:<11}{tool:<14}{statistics.median(samples):>8.1f}{p99(samples):>8.1f}{ratio:>12.2f}")
    questions = sum(query.gold is not None for query in built.queries)
    print(f"sample questions with their gold page first over stdio, of {built.pages} pages: {first}/{questions}")
    p50 = {tool: statistics.median(samples) for tool, samples in stdio.items()}
    verdicts = "; ".join(f"{tool} {ms:.1f} ms {'met' if ms <= GOAL_P50_MS else 'MISSED'}" for tool, ms in p50.items())
    print(f"goal: p50 <= {GOAL_P50_MS:g} ms over stdio at {built.pages} pages: {verdicts}")
    print(json.dumps({"pages": built.pages, "passages": built.passages, "build_s": round(built.seconds, 1),
                      "stdio_p50_ms": {tool: round(ms, 2) for tool, ms in p50.items()}}))


if __name__ == "__main__":
    main()
