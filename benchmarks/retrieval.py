"""Retrieval per route and fused, per corpus, beside a plain BM25 baseline.

For each corpus: index it into a store on the embedded defaults (Milvus Lite, MiniLM, the default retrieval
settings; cached per corpus and settings under --cache), then for every answerable question rank pages with each
route alone (dense and BM25 over passages, BM25 and dense over whole pages), with the default fusion, and with
plain BM25 (`bm25s`, English stop words, one entry per page's whole text, nothing else); and fused within the
gold page's document alone ("fused in doc", the question's document given: what is left is choosing the page
within it; questions with gold pages in several documents are ranked over all). Printed: recall@1,
recall@5 and MRR@10 of each, the seconds each took to index, and the median latency of one fused search. With
`--lexical server` (Milvus's BM25 function; searches go to Milvus Lite, not the memory index), also Milvus's own
fusion in one `hybrid_search` call ("milvus rrf") and its median latency.

Corpora: `sample` (servers/sample, 20 questions), `field` (tests/data/field, made by scripts/make_field_corpus.py)
and `manuals` (2,182 pages of real man pages rendered as PDFs, made by benchmarks/manuals.py on a Debian machine).
The defaults (route weights, passage size, BM25 parameters) were chosen on `sample` and `field`; `manuals` is
reported, not tuned on.

    python benchmarks/retrieval.py [--corpora sample,field,manuals] [--embedder NAME] [--cache DIR] [--json FILE]
        [--retriever text+colqwen|text+vlm|colqwen|vlm --model PATH] [--lexical client|server]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import bm25s

from pagelens.servers.cli.demo import sample_folder
from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.corpus.text import page_text
from pagelens.tools.search import Retriever
from pagelens.tools.retrieval.settings import RETRIEVERS, RetrievalSettings
from pagelens.training.evaluate import gold_page_ids, read_questions
from pagelens.training.metrics import mrr_at, recall_at

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ("dense", "bm25", "page-bm25", "page-dense")
DEPTH = 10


def corpus_paths(name: str, cache: Path) -> tuple[Path, Path]:
    """(folder of documents, questions file) of a corpus, built first where it is made by a script."""
    if name == "sample":
        return sample_folder(), sample_folder() / "questions.jsonl"
    if name == "field":
        return ROOT / "tests/data/field", ROOT / "tests/data/field/questions.jsonl"
    if name == "manuals":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import manuals

        out = manuals.build(cache / "manuals")
        return out, out / "questions.jsonl"
    raise SystemExit(f"unknown corpus {name!r}; choose from sample, field, manuals.")


def open_store(name: str, folder: Path, cache: Path, retrieval: RetrievalSettings) -> tuple[PageStore, float]:
    """The corpus's store (indexed now if the cached one is missing), and the seconds indexing took (0 if cached)."""
    key = hashlib.sha1(json.dumps([str(folder), retrieval.manifest()], sort_keys=True).encode()).hexdigest()[:10]
    home = cache / "stores" / f"{name}-{key}"
    done = home / "indexed"
    store = PageStore(StoreSettings(home=home), retrieval, rebuild=not done.exists(), choose_retriever=True)
    seconds = 0.0
    if not done.exists():
        started = time.perf_counter()
        index_paths(store, sorted(p for p in folder.iterdir() if p.suffix.lower() == ".pdf"), progress=False)
        seconds = time.perf_counter() - started
        done.write_text(f"{seconds:.1f}\n")
    return store, seconds


def bm25_baseline(store: PageStore) -> tuple[bm25s.BM25, list[str], float]:
    started = time.perf_counter()
    pages = store.pages()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([page_text(store.lines(p.page_id)) for p in pages], stopwords="en",
                                   show_progress=False), show_progress=False)
    return retriever, [p.page_id for p in pages], time.perf_counter() - started


def measure(name: str, cache: Path, retrieval: RetrievalSettings) -> dict:
    folder, questions_file = corpus_paths(name, cache)
    store, index_seconds = open_store(name, folder, cache, retrieval)
    try:
        questions = [q for q in read_questions(questions_file) if q.is_sufficient and q.pages]
        gold = gold_page_ids(questions, store, questions_file)
        retriever = Retriever(store)
        baseline, baseline_ids, baseline_seconds = bm25_baseline(store)
        routes = (*ROUTES, "vision") if retrieval.vision else ROUTES
        # Milvus fuses in one call only equally weighted routes it searches itself (Retriever.fused_in_milvus).
        milvus_fusion = retrieval.lexical == "server" and not retrieval.vision
        fusions = ("fused", "milvus rrf") if milvus_fusion else ("fused",)
        ranked: dict[str, list[list[str]]] = {route: [] for route in (*routes, *fusions, "fused in doc",
                                                                      "bm25s (page)")}
        latency: dict[str, list[float]] = {fusion: [] for fusion in fusions}
        for question in questions:
            rankings = retriever.route_rankings(question.question, routes=routes)
            for route in routes:
                ranked[route].append([page_id for page_id, _ in rankings[route][:DEPTH]])
            started = time.perf_counter()
            ranked["fused"].append([hit.page.page_id for hit in retriever.search(question.question, k=DEPTH)])
            latency["fused"].append(time.perf_counter() - started)
            if milvus_fusion:
                started = time.perf_counter()
                ranked["milvus rrf"].append([page_id for page_id, _ in retriever.fused_in_milvus(question.question,
                                                                                                  k=DEPTH)])
                latency["milvus rrf"].append(time.perf_counter() - started)
            documents = {document for document, _ in question.pages}
            within = glob.escape(documents.pop()) if len(documents) == 1 else None
            ranked["fused in doc"].append([hit.page.page_id for hit in retriever.search(question.question, k=DEPTH,
                                                                                         document=within)])
            docs, _ = baseline.retrieve(bm25s.tokenize([question.question], stopwords="en", show_progress=False),
                                        k=min(DEPTH, len(baseline_ids)), show_progress=False)
            ranked["bm25s (page)"].append([baseline_ids[i] for i in docs[0]])
        golds = [gold[q.question] for q in questions]
        rows = {
            route: {
                "recall@1": sum(recall_at(r, g, 1) for r, g in zip(runs, golds)) / len(golds),
                "recall@5": sum(recall_at(r, g, 5) for r, g in zip(runs, golds)) / len(golds),
                "mrr@10": sum(mrr_at(r, g, 10) for r, g in zip(runs, golds)) / len(golds),
            }
            for route, runs in ranked.items()
        }
        return {"corpus": name, "pages": len(store.pages()), "questions": len(questions),
                "index_seconds": round(index_seconds, 1), "bm25s_index_seconds": round(baseline_seconds, 2),
                "routes": rows,
                "search_p50_ms": {fusion: round(1000 * statistics.median(t), 1) for fusion, t in latency.items()}}
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="sample,field,manuals")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/pagelens/bench")
    parser.add_argument("--passage-tokens", type=int, default=RetrievalSettings().passage_tokens,
                        help="passage size to measure (the stores are cached per size)")
    parser.add_argument("--embedder", default=RetrievalSettings().embedder,
                        help="dense text embedder to measure (the stores are cached per embedder)")
    parser.add_argument("--retriever", default="text", choices=RETRIEVERS,
                        help="with a vision retriever, its route is measured alone and fused too (needs --model)")
    parser.add_argument("--model", default="", help="the vision retriever's checkpoint folder")
    parser.add_argument("--lexical", default="client", choices=("client", "server"),
                        help="who computes BM25: our client code, or Milvus's BM25 function (stores cached per choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    retrieval = RetrievalSettings(embedder=args.embedder, passage_tokens=args.passage_tokens,
                                  retriever=args.retriever, vision_model=args.model, lexical=args.lexical)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {args.embedder}, passages of at most {args.passage_tokens} tokens; "
          f"retriever {args.retriever}" + (f" ({args.model})" if args.model else "") + f"; lexical {args.lexical}")
    results = []
    for name in args.corpora.split(","):
        result = measure(name, args.cache, retrieval)
        results.append(result)
        print(f"\n{name}: {result['pages']} pages, {result['questions']} answerable questions; indexed in "
              f"{result['index_seconds']} s (0 = cached), bm25s in {result['bm25s_index_seconds']} s")
        print(f"  {'route':<14}{'recall@1':>10}{'recall@5':>10}{'MRR@10':>9}")
        for route, row in result["routes"].items():
            print(f"  {route:<14}{row['recall@1']:>10.3f}{row['recall@5']:>10.3f}{row['mrr@10']:>9.3f}")
        print("  search p50 (incl. query embedding): "
              + ", ".join(f"{fusion} {ms} ms" for fusion, ms in result["search_p50_ms"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
