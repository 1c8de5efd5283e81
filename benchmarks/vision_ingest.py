"""Indexing speed with a vision retriever: pages per second of the text retriever against text+colqwen, end to end,
and of the page-image encoder alone, one page a call against batches.

Without --model it builds the tiny random-weight ColQwen2 (`pagelens tiny-model colqwen2`, SPEC §8 sizes): on the
CPU that measures what pagelens adds around the model (rendering, batching, Milvus rows, the MaxSim copy), not a
real model's cost. On a GPU, give a full-size checkpoint (`--model`, random weights do: the cost is the same); the
ColPali paper's anchor is 0.39 s a page.

    python benchmarks/vision_ingest.py [--model PATH] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pypdfium2 as pdfium

from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.retrieval.settings import RetrievalSettings
from pagelens.tools.retrieval.vision import ColQwen2Embedder
from pagelens.training.tiny_model import build_tiny_colqwen2

SAMPLE = Path(__file__).resolve().parents[1] / "servers" / "sample"


def index_rate(retrieval: RetrievalSettings, files: list[Path], folder: Path) -> tuple[float, int]:
    """(pages per second, pages) of indexing the files into a fresh store, the models loaded beforehand."""
    with PageStore(StoreSettings(home=folder), retrieval, choose_retriever=True) as store:
        if store.retrieval.vision:
            store.page_embedder().embed_query("warm up")  # the model's one-time load is not indexing
        started = time.perf_counter()
        report = index_paths(store, files, progress=False)
        seconds = time.perf_counter() - started
    return report.pages_indexed / seconds, report.pages_indexed


def encode_rate(embedder: ColQwen2Embedder, images: list, per_call: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(images), per_call):
        embedder.embed_pages(images[start : start + per_call])
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a ColQwen2 checkpoint folder (default: the tiny random one)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each case; the best is printed")
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}")
    files = sorted(SAMPLE.glob("*.pdf"))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_tiny_colqwen2(Path(tmp) / "tiny-colqwen2", vocabulary="small")
        print(f"model: {'tiny random-weight ColQwen2' if args.model is None else model}")
        images = []
        for pdf in files:
            document = pdfium.PdfDocument(pdf)
            images += [page.render(scale=144 / 72).to_pil() for page in document]
            document.close()
        embedder = ColQwen2Embedder(model)
        embedder.embed_pages(images[:1])  # load
        for per_call in (1, 8):
            rate = max(encode_rate(embedder, images, per_call) for _ in range(args.repeat))
            print(f"encoder alone, {per_call} page(s) a call: {rate:.2f} pages/s ({len(images)} pages)")
        cases = {"text": RetrievalSettings(),
                 "text+colqwen": RetrievalSettings(retriever="text+colqwen", vision_model=str(model))}
        for name, retrieval in cases.items():
            rates = [index_rate(retrieval, files, Path(tmp) / f"{name}-{i}") for i in range(args.repeat)]
            rate, pages = max(rates)
            print(f"index, retriever {name}: {rate:.2f} pages/s ({pages} pages, best of {args.repeat})")


if __name__ == "__main__":
    main()
