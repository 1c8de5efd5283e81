"""MaxSim search over ColQwen2-sized multi-vector pages: brute force, the memory index, and Milvus Lite.

Synthetic pages shaped like ColQwen2's (128-d unit vectors, about 750 a page; the pooled variant about 250, by
tools/retrieval/vision.py's `pool_tokens(vectors, 3)` up to --pool-max pages, else generated at that size): a page's
patches are near 12-40 "content" centres drawn from its topic's 150 (50 pages, five documents, share a topic),
plus a third near a handful of background centres every page shares (blank paper looks alike everywhere). A query
has 20 vectors: 14 near patches of one target page (noisier than the patches: text tokens are not patches) and 6
near random centres (function words). Printed per size and variant, over the same queries:
  numpy     exact MaxSim of every page: one product per chunk of pages + np.maximum.reduceat (the baseline)
  memory    MultiVectorIndex's prefilter (MaxSim over 32 k-means summaries a page) + exact MaxSim of the best
            `rerank` pages, at several rerank
  milvus    MultiVectorStore on Milvus Lite: ANN candidates per query vector + exact rerank (sizes <= --milvus-max)
p50/p99 ms a query, recall@10 against the exact ranking, speed-up over numpy at p50; memory per page; index
build time; rows/s written into Milvus Lite. Goal: at 10k pages memory >= 10x faster than numpy, recall@10 >= 0.95.

    python benchmarks/maxsim.py [--sizes 1000,10000] [--queries 30] [--milvus-max 1000] [--variants full,pooled]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from pagelens.tools.retrieval.multivector import MultiVectorStore
from pagelens.tools.retrieval.multivector_index import MultiVectorIndex

DIM = 128
PAGES_PER_TOPIC = 50  # five 10-page documents on one subject share its visual vocabulary
TOPIC_CENTRES = 150  # a topic's visual "words"
BACKGROUND = 8  # centres every page shares
QUERY_TOKENS = 20
RERANKS = [32, 64, 128, 256]  # pages the memory index scores exactly after its prefilter


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def page(rng: np.random.Generator, centres: np.ndarray, n: int, topic: int) -> np.ndarray:
    """n patches: a third near the shared background centres, the rest near 12-40 of its topic's centres."""
    pool = BACKGROUND + topic * TOPIC_CENTRES + np.arange(TOPIC_CENTRES)
    content = rng.choice(pool, int(rng.integers(12, 40)), replace=False)
    which = np.where(rng.random(n) < 1 / 3, rng.integers(0, BACKGROUND, n), rng.choice(content, n))
    return unit(centres[which] + 0.09 * rng.standard_normal((n, DIM), np.float32)).astype(np.float32)


def corpus(n_pages: int, per_page: int, rng: np.random.Generator, centres: np.ndarray, pool):
    """(offsets, page-ordered matrix): generated straight into one preallocated matrix."""
    sizes = rng.integers(int(per_page * 0.9), int(per_page * 1.1) + 1, n_pages) if pool is None else None
    if pool is not None:  # pool real-sized pages with vision.pool_tokens
        pages = [pool(page(rng, centres, int(rng.integers(675, 826)), i // PAGES_PER_TOPIC), 3) for i in range(n_pages)]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in pages])])
        return offsets, np.ascontiguousarray(np.concatenate(pages), np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    matrix = np.empty((offsets[-1], DIM), np.float32)
    for i in range(n_pages):
        matrix[offsets[i] : offsets[i + 1]] = page(rng, centres, int(sizes[i]), i // PAGES_PER_TOPIC)
    return offsets, matrix


def queries(n: int, offsets: np.ndarray, matrix: np.ndarray, rng: np.random.Generator, centres: np.ndarray):
    out = []
    for target in rng.integers(0, len(offsets) - 1, n):
        rows = matrix[rng.integers(offsets[target], offsets[target + 1], QUERY_TOKENS - 6)]
        words = centres[rng.integers(0, len(centres), 6)]
        out.append(unit(np.vstack([rows + 0.07 * rng.standard_normal(rows.shape), words
                                   + 0.1 * rng.standard_normal(words.shape)])).astype(np.float32))
    return out


def timed(fn, items) -> tuple[np.ndarray, list]:
    times, results = [], []
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        times.append((time.perf_counter() - start) * 1000)
    return np.asarray(times), results


def recall(hits: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(h) & set(t)) / len(t) for h, t in zip(hits, truth)]))


def row(name: str, times: np.ndarray, rec: float, base_p50: float) -> None:
    p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
    print(f"  {name:28s} p50 {p50:9.1f} ms  p99 {p99:9.1f} ms  recall@10 {rec:5.3f}  x{base_p50 / p50:6.1f}")


def run(size: int, variant: str, args, pool) -> None:
    rng = np.random.default_rng(size)
    n_centres = BACKGROUND + TOPIC_CENTRES * -(-size // PAGES_PER_TOPIC)
    centres = unit(rng.standard_normal((n_centres, DIM))).astype(np.float32)
    start = time.perf_counter()
    pooled_by = pool if variant == "pooled" and size <= args.pool_max else None
    offsets, matrix = corpus(size, 750 if variant == "full" else 250, rng, centres, pooled_by)
    generated = time.perf_counter() - start
    page_ids = np.asarray([f"d{i // 10}-{i % 10}" for i in range(size)])
    documents = np.asarray([f"d{i // 10}" for i in range(size)])
    how = "" if variant == "full" else " by pool_tokens(., 3)" if pooled_by else " (generated at ~250 a page)"
    print(f"\n{size} pages, {variant}{how}: {len(matrix):,} vectors ({len(matrix) / size:.0f} a page), "
          f"{matrix.nbytes / 2**30:.2f} GiB float32; generated in {generated:.0f} s")
    start = time.perf_counter()
    index = MultiVectorIndex.from_arrays(page_ids, documents, np.full(size, "v1"), offsets, matrix, prefilter=True)
    built = time.perf_counter() - start
    print(f"  memory index: built in {built:.1f} s ({len(index.summaries) / size:.0f} summaries a page), "
          f"{index.nbytes / size / 1024:.0f} KiB a page ({index.summaries.nbytes / size / 1024:.0f} KiB of it "
          "the prefilter)")
    qs = queries(args.queries, offsets, matrix, rng, centres)

    def top10(scores):
        return [str(p) for p in page_ids[np.argsort(-scores, kind="stable")[:10]]]

    base, truth = timed(lambda q: top10(index.exact_scores(q)), qs)
    base_p50 = float(np.percentile(base, 50))
    row("numpy brute force", base, 1.0, base_p50)
    times, hits = timed(lambda q: top10(index.approximate_scores(q)), qs)
    row("memory prefilter alone", times, recall(hits, truth), base_p50)
    for rerank in RERANKS:
        times, hits = timed(lambda q: [h.page_id for h in index.search(q, 10, rerank=rerank)], qs)
        row(f"memory rerank={rerank}", times, recall(hits, truth), base_p50)
    if size <= args.milvus_max:
        milvus(size, offsets, matrix, page_ids, documents, qs[: args.milvus_queries], truth, base_p50)
    del index, matrix


def milvus(size, offsets, matrix, page_ids, documents, qs, truth, base_p50) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = MultiVectorStore(os.path.join(tmp, "milvus.db"), DIM)
        start = time.perf_counter()
        written = store.insert_pages(((str(page_ids[i]), str(documents[i]), matrix[offsets[i] : offsets[i + 1]])
                                      for i in range(size)), "v1")
        store.flush()
        seconds = time.perf_counter() - start
        print(f"  milvus lite: {written:,} rows written in {seconds:.0f} s, {written / seconds:,.0f} rows/s "
              "(upsert, HNSW M=16 efConstruction=200, then flush)")
        store.search(qs[0], 10)  # first search loads segments
        for candidates in (2, 8):
            times, hits = timed(lambda q: [h.page_id for h in store.search(q, 10, candidates=candidates)], qs)
            row(f"milvus lite candidates={candidates}", times, recall(hits, truth[: len(qs)]), base_p50)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated page counts")
    parser.add_argument("--variants", default="full,pooled", help="full (~750 vectors a page), pooled (~250)")
    parser.add_argument("--queries", type=int, default=30, help="queries per size")
    parser.add_argument("--milvus-max", type=int, default=1000, help="largest size also run on Milvus Lite")
    parser.add_argument("--pool-max", type=int, default=1000,
                        help="largest size pooled by vision.pool_tokens (about 0.13 s a page); above, generated")
    parser.add_argument("--milvus-queries", type=int, default=6, help="queries sent to Milvus Lite")
    args = parser.parse_args()
    try:
        from pagelens.tools.retrieval.vision import pool_tokens as pool
    except ImportError:
        pool = None
    load = os.getloadavg()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, numpy {np.__version__}, "
          f"python {platform.python_version()}; load average {load[0]:.1f}")
    if pool is None:
        print("tools/retrieval/vision.py has no pool_tokens yet: pooled pages are generated at ~250 vectors")
    for size in (int(s) for s in args.sizes.split(",")):
        for variant in args.variants.split(","):
            run(size, variant, args, pool)


if __name__ == "__main__":
    main()
