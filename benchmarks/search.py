"""Search latency and recall at 1k, 10k and 100k pages (synthetic clustered vectors, one passage a page).

For each size: vectors go into a real Milvus Lite collection through pagelens' VectorStore; the memory index is
built from Milvus as a store builds it. Printed per route, over the same queries:
  numpy      exact brute force (X @ q, argpartition): the baseline
  memory     pagelens' default route on Milvus Lite: dense + lexical search of the memory index
  milvus     the same dense + lexical searches sent to Milvus Lite (HNSW + sparse inverted index)
p50/p99 ms of one query (dense and lexical routes together, no query embedding), recall@10 of the dense route
against brute force, and the p50 ratio to brute force. Goal: memory p50 <= 10 ms at 100k, recall@10 >= 0.99.
Then what keeping the memory index current costs when one document (1% of the rows) is re-indexed: a full
rebuild from Milvus against the catch-up that re-reads only that document.

Synthetic clusters are easy for an IVF index (recall 1.000 even probing 1/16 of the lists), so --real also
measures the dense route on real vectors: 100k man-page passages embedded by all-MiniLM-L6-v2 with 200 held-out
NAME-line queries (benchmarks/real_passages.py makes and caches them; a build still under way is measured on the
passages embedded so far, and says so). These go straight into the memory index, without Milvus.

    python benchmarks/search.py [--sizes 1000,10000,100000] [--queries 200] [--real]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import real_passages  # a sibling script
from pagelens.tools.retrieval.memory_index import MemoryIndex
from pagelens.tools.retrieval.vectors import VectorRow, VectorStore

DIM = 384
VOCAB = 50_000


def clustered(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sparse_rows(n: int, rng: np.random.Generator) -> list[dict[int, float]]:
    # Zipf-distributed term ids: a few common terms, a long tail, like words on pages.
    terms = np.minimum(rng.zipf(1.3, size=(n, 40)), VOCAB)
    return [{int(t): 1.0 + 0.1 * (i % 7) for i, t in enumerate(set(row))} for row in terms]


def timed(fn, queries) -> tuple[list[float], list]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - start) * 1000)
    return times, results


def run(size: int, n_queries: int, rng: np.random.Generator, upkeep: list[tuple]) -> list[tuple]:
    centers = rng.standard_normal((256, DIM)).astype(np.float32)
    dense = clustered(size, rng, centers)
    sparse = sparse_rows(size, rng)
    queries = clustered(n_queries, rng, centers)
    query_terms = [{int(t): 2.0 for t in set(np.minimum(rng.zipf(1.3, size=4), VOCAB))} for _ in range(n_queries)]

    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore(str(Path(tmp) / "milvus.db"), DIM)
        for start in range(0, size, 5000):
            store.insert([VectorRow(f"p{i}:0", f"p{i}", f"d{i % 100}", dense[i], sparse[i])
                          for i in range(start, min(size, start + 5000))], "v0")
        store.flush()
        start = time.perf_counter()
        cache = MemoryIndex.build(0, store.rows(), DIM)
        rebuild_s = time.perf_counter() - start

        def brute(q):
            scores = dense @ q
            top = np.argpartition(-scores, 10)[:10]
            return {f"p{i}" for i in top}

        def via(backend):
            def search(i):
                hits = backend.search_dense(queries[i], 100, None)
                backend.search_sparse(query_terms[i], 100, None)
                return {h.page_id for h in hits[:10]}
            return search

        truth_times, truth = timed(brute, queries)
        rows = [("numpy", size, truth_times, 1.0)]
        for name, backend, count in (("memory", cache, n_queries), ("milvus", store, min(n_queries, 50))):
            times, found = timed(via(backend), range(count))
            recall = float(np.mean([len(f & t) / 10 for f, t in zip(found, truth)]))
            rows.append((name, size, times, recall))
        changed = [i for i in range(size) if i % 100 == 0]
        store.delete_version("d0", "v0")
        fresh = clustered(len(changed), rng, centers)
        store.insert([VectorRow(f"p{i}:0", f"p{i}", "d0", v, sparse[i]) for i, v in zip(changed, fresh)], "v1")
        store.flush()
        start = time.perf_counter()
        cache.update(1, {"d0"}, store.rows(["d0"]))
        upkeep.append((size, len(changed), rebuild_s, time.perf_counter() - start))
        store.close()
    base = float(np.percentile(truth_times, 50))
    return [(name, n, float(np.percentile(t, 50)), float(np.percentile(t, 99)), recall,
             float(np.percentile(t, 50)) / base) for name, n, t, recall in rows]


def run_real(out: Path) -> None:
    """Dense route of the memory index against numpy brute force on the cached real passage vectors."""
    if (out / "manifest.json").exists():
        dense, queries, manifest = real_passages.load(out)
        made = f"embedded in {manifest['embed_s'] / 60:.0f} min ({manifest['passages_per_s']} passages/s)"
    else:
        dense, queries = real_passages.partial(out)
        made = "partial: the build is still under way"
    start = time.perf_counter()
    cache = MemoryIndex.build(0, [[VectorRow(f"r{i}:0", f"r{i}", f"d{i % 100}", v, {}) for i, v in enumerate(dense)]],
                              DIM)
    build_s = time.perf_counter() - start
    truth_times, truth = timed(lambda q: set(np.argpartition(-(dense @ q), 10)[:10]), queries)
    times, found = timed(lambda q: {int(h.page_id[1:]) for h in cache.search_dense(q, 100, None)[:10]}, queries)
    recall = float(np.mean([len(f & t) / 10 for f, t in zip(found, truth)]))
    print(f"\nreal man-page passages ({made}); memory index built in {build_s:.1f} s")
    print(f"{'route':<8}{'passages':>9}{'p50 ms':>9}{'p99 ms':>9}{'recall@10':>11}")
    for name, t, r in (("numpy", truth_times, 1.0), ("memory", times, recall)):
        print(f"{name:<8}{len(dense):>9}{np.percentile(t, 50):>9.2f}{np.percentile(t, 99):>9.2f}{r:>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--real", action="store_true", help="also measure on real passage vectors")
    parser.add_argument("--real-dir", type=Path, default=real_passages.DEFAULT_OUT)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"{'route':<8}{'pages':>8}{'p50 ms':>9}{'p99 ms':>9}{'recall@10':>11}{'p50/numpy':>11}")
    upkeep: list[tuple] = []
    for size in (int(s) for s in args.sizes.split(",")):
        for name, n, p50, p99, recall, ratio in run(size, args.queries, rng, upkeep):
            print(f"{name:<8}{n:>8}{p50:>9.2f}{p99:>9.2f}{recall:>11.3f}{ratio:>11.2f}")
    print("goal: memory p50 <= 10 ms at 100000 pages, recall@10 >= 0.99")
    print(f"\n{'memory index upkeep':<20}{'pages':>8}{'changed':>9}{'rebuild s':>11}{'catch-up s':>12}{'ratio':>8}")
    for size, changed, rebuild_s, update_s in upkeep:
        print(f"{'one document':<20}{size:>8}{changed:>9}{rebuild_s:>11.2f}{update_s:>12.2f}{rebuild_s / update_s:>8.1f}")
    if args.real:
        run_real(args.real_dir)


if __name__ == "__main__":
    main()
