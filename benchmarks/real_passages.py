"""Real passage vectors for the search benchmark: this machine's English man pages, cut and embedded as pagelens
indexes a page, with held-out real queries.

Every man page under /usr/share/man/man[1-8] (symlinks followed, each file once; a page that only includes
another by `.so` is rendered as that one, so about 0.1% of the pages taken repeat another) is taken in a fixed
shuffled order, rendered by groff as benchmarks/manuals.py renders it (80 columns, plain text), and cut into
passages by pagelens' own splitter with the default embedder's token counter at the default 128 tokens, as
tools/corpus/ingest.py cuts a page; pages are taken until at least --passages passages are in hand. Each passage
is embedded headed by its man page's name (`in_view`), as ingest embeds it, with all-MiniLM-L6-v2.

Queries: the NAME line ("tar - an archiving utility") of the next man pages in the same order, pages not among
those cut into passages (a near-twin may be: the alpha or beta variant of the same gcloud command, about 60% of
the pages), embedded as a search embeds a query.

Cached under ~/.cache/pagelens/bench/real_passages/: vectors.npy (n, 384) float32, passages.jsonl (man page and
text of each row), queries.npy and queries.jsonl, and manifest.json with the counts and the seconds each stage
took. Embedding is saved in parts as it goes, so a run that is stopped resumes where it was.

    nice -n 19 python benchmarks/real_passages.py [--passages 100000] [--queries 200] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pagelens.errors import DependencyError
from pagelens.tools.retrieval.embedders import make_embedder
from pagelens.tools.retrieval.passages import in_view, split_passages
from pagelens.tools.retrieval.settings import RetrievalSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manuals  # noqa: E402  a sibling script, for its groff rendering

DEFAULT_OUT = Path.home() / ".cache" / "pagelens" / "bench" / "real_passages"
EMBEDDER = "all-MiniLM-L6-v2"
PART = 4096  # passages embedded and saved at a time


def man_pages() -> list[Path]:
    """Every English man page source once, in a fixed shuffled order (seed 0)."""
    sources = {p.resolve() for p in manuals.MAN_ROOT.glob("man[1-8]/*") if p.is_file()}
    sources = sorted(sources, key=str)
    order = np.random.default_rng(0).permutation(len(sources))
    return [sources[i] for i in order]


def render(source: Path) -> tuple[str, str] | None:
    """(page name, plain text) of a man page; None for one that cannot be read or that groff cannot render."""
    try:
        return source.name.removesuffix(".gz"), manuals.render_text(source)
    except (DependencyError, OSError, EOFError, StopIteration):  # StopIteration: a `.so` include to nowhere
        return None


def name_line(text: str) -> str | None:
    """The NAME section's line ("tar - an archiving utility"), joined when it wraps."""
    match = re.search(r"^NAME\n((?:[ \t]+\S.*\n)+)", text, re.MULTILINE)
    if not match:
        return None
    line = " ".join(match.group(1).split())
    return line if " - " in line and len(line) >= 12 else None


def collect(n_passages: int, n_queries: int, counter) -> tuple[list[tuple[str, str]], list[str], dict]:
    """Passages (page, text) from the first pages of the shuffled order and NAME-line queries from the pages
    after them."""
    tokens = RetrievalSettings().passage_tokens
    passages: list[tuple[str, str]] = []
    queries: list[str] = []
    pages_used = 0
    start = time.perf_counter()
    with ProcessPoolExecutor(manuals.WORKERS) as pool, tqdm(total=n_passages, desc="passages", unit="p") as bar:
        for rendered in pool.map(render, man_pages(), chunksize=16):
            if rendered is None:
                continue
            name, text = rendered
            if len(passages) < n_passages:
                # No running header and footer; overstrikes (a title too long for its line) struck out.
                lines = [re.sub(r".\x08", "", line).rstrip() for line in text.strip("\n").splitlines()[1:-1]]
                cut = [p for p in split_passages(lines, counter, tokens) if any(c.isalnum() for c in p)]
                passages += [(name, p) for p in cut]
                pages_used += 1
                bar.update(len(cut))
            elif (query := name_line(text)) is not None:
                queries.append(query)
                if len(queries) == n_queries:
                    pool.shutdown(cancel_futures=True)
                    break
    return passages, queries, {"pages": pages_used, "collect_s": round(time.perf_counter() - start, 1)}


def embed(texts: list[str], parts: Path, embedder) -> tuple[np.ndarray, float]:
    """The texts' vectors, embedded PART at a time; parts already saved are read back. Seconds spent now."""
    parts.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = []
    with tqdm(total=len(texts), desc="embedding", unit="p") as bar:
        for first in range(0, len(texts), PART):
            path = parts / f"{first:08d}.npy"
            if not path.exists():
                np.save(path.with_suffix(".tmp.npy"), embedder.embed_passages(texts[first : first + PART]))
                path.with_suffix(".tmp.npy").rename(path)
            done.append(np.load(path))
            bar.update(len(done[-1]))
    return np.vstack(done), time.perf_counter() - start


def build(out: Path, n_passages: int, n_queries: int) -> dict:
    """Make (or finish) the cache; its manifest."""
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["passages"] >= n_passages and manifest["queries"] >= n_queries:
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    embedder = make_embedder(EMBEDDER)
    tokenizer = embedder.tokenizer()

    def counter(lines: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]] if lines else []

    texts_path = out / "passages.jsonl"
    if texts_path.exists() and (out / "queries.jsonl").exists():
        passages = [tuple(json.loads(line)) for line in texts_path.read_text().splitlines()]
        queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
        stats = json.loads((out / "collect.json").read_text())
    else:
        passages, queries, stats = collect(n_passages, n_queries, counter)
        texts_path.write_text("".join(json.dumps(p) + "\n" for p in passages))
        (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
        (out / "collect.json").write_text(json.dumps(stats))
    if not (out / "queries.npy").exists():  # first, so that a partial run can be measured (partial())
        np.save(out / "queries.npy", embedder.embed_passages(queries))
    vectors, embed_s = embed([in_view(name, text) for name, text in passages], out / "parts", embedder)
    np.save(out / "vectors.npy", vectors)
    manifest = {"embedder": EMBEDDER, "passage_tokens": RetrievalSettings().passage_tokens,
                "passages": len(passages), "queries": len(queries), **stats,
                "embed_s": round(embed_s, 1), "passages_per_s": round(len(passages) / max(embed_s, 1e-9), 1)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def load(out: Path = DEFAULT_OUT) -> tuple[np.ndarray, np.ndarray, dict]:
    """(passage vectors, query vectors, manifest) from the cache; build() makes it."""
    return (np.load(out / "vectors.npy"), np.load(out / "queries.npy"),
            json.loads((out / "manifest.json").read_text()))


def partial(out: Path = DEFAULT_OUT) -> tuple[np.ndarray, np.ndarray]:
    """(passage vectors embedded so far, query vectors) of a build still running or stopped."""
    parts = sorted((out / "parts").glob("[0-9]*[0-9].npy"))
    return np.vstack([np.load(p) for p in parts]), np.load(out / "queries.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    print(json.dumps(build(args.out, args.passages, args.queries), indent=1))


if __name__ == "__main__":
    main()
