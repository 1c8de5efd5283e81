"""Ingestion speed: pages per second for text-layer PDFs and seconds per page for scanned PDFs.

Each case indexes into a fresh store (render + text layer or OCR + passages + embedding + Milvus write +
catalogue commit), with the embedder and the OCR engine loaded beforehand (their one-time load is printed
separately). Goals: >= 20 pages/s with a text layer; <= 2 s/page for scans.

Beside each text-layer figure it prints what the embedder alone allows: the case's passages embedded again on
their own (tokens per page, tokens per second, so a ceiling in pages per second for the whole pipeline), and
the ceiling any implementation of the model has on this machine: the model's matrix-multiply FLOPs per token
(a lower bound: attention left out) against the measured peak of one large float32 matrix multiply.

Each embedder named (`--embedder`, repeatable; `--torch` adds all-MiniLM-L6-v2 on PyTorch, the runtime it falls
back to) runs every text-layer case in the same process, so their ratios are comparable on a shared machine.

    python benchmarks/ingest.py [--embedder NAME ...] [--torch] [--text-only]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pypdfium2 as pdfium
import torch

from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.corpus.text import OcrEngine
from pagelens.tools.retrieval.embedders import MiniLMEmbedder, make_embedder
from pagelens.tools.retrieval.settings import RetrievalSettings

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "servers" / "sample"
REALWORLD = REPO / "tests" / "data" / "realworld"
# Layers of each embedder; both are MiniLM-H384 BERT encoders (hidden 384, feed-forward 1,536).
LAYERS = {"all-MiniLM-L6-v2": 6, "paraphrase-MiniLM-L3-v2": 3}


def scanned_copy(pdf: Path, out: Path, pages: int) -> Path:
    """An image-only PDF of the first pages of a text PDF, as a scanner would make it (150 dpi, greyscale)."""
    doc = pdfium.PdfDocument(pdf)
    images = [doc[i].render(scale=150 / 72).to_pil().convert("L") for i in range(min(pages, len(doc)))]
    doc.close()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=150)
    return out


def measure(paths: list[Path], embedder, ocr) -> tuple[int, float, list[str]]:
    """Pages indexed, seconds, and the passages the run embedded."""
    retrieval = RetrievalSettings(embedder=embedder.name)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp, \
            PageStore(StoreSettings(home=Path(tmp)), retrieval) as store:
        start = time.perf_counter()
        report = index_paths(store, paths, progress=False, embedder=embedder, ocr=ocr, log=lambda line: None)
        elapsed = time.perf_counter() - start
        passages = [row.text for row in store.catalog.passages(store.memory_index().pks.tolist()).values()]
    assert not report.failures, report.failures
    return report.pages_indexed, elapsed, passages


def gemm_peak_gflops() -> float:
    """float32 GFLOP/s of a large matrix multiply with every thread torch uses (the machine's practical peak)."""
    a, b = torch.randn(4096, 384), torch.randn(384, 1536)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(30):
        a @ b
    return 2 * 4096 * 384 * 1536 * 30 / (time.perf_counter() - start) / 1e9


def matmul_flops_per_token(embedder) -> float:
    """2 FLOPs per weight of each layer's projections and feed-forward: what one token costs at the least."""
    hidden, inner = embedder.dim, 4 * embedder.dim
    return 2 * LAYERS[embedder.name] * (4 * hidden * hidden + 2 * hidden * inner)


def embedding_ceiling(embedder, passages: list[str], pages: int) -> tuple[float, float, float]:
    """(tokens per page, tokens per second embedding alone, pages per second that allows)."""
    tokens = sum(len(ids) for ids in embedder.tokenizer()(passages, truncation=True,
                                                           max_length=embedder.max_tokens)["input_ids"])
    start = time.perf_counter()
    embedder.embed_passages(passages)
    rate = tokens / (time.perf_counter() - start)
    return tokens / pages, rate, rate * pages / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", action="append", choices=sorted(LAYERS),
                        help="embedder to measure (repeat for several; default: the default setting's)")
    parser.add_argument("--torch", action="store_true", help="also all-MiniLM-L6-v2 on PyTorch")
    parser.add_argument("--text-only", action="store_true", help="skip the scanned cases (OCR-bound)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    start = time.perf_counter()
    embedders = [make_embedder(name) for name in args.embedder or [RetrievalSettings().embedder]]
    if args.torch:
        embedders.append(MiniLMEmbedder(runtime="torch"))
    for embedder in embedders:
        embedder.embed_query("warm up")
    ocr = None
    if not args.text_only:
        ocr = OcrEngine()
        ocr.lines(pdfium.PdfDocument(SAMPLE / "memo_relocation_scan.pdf")[0].render(scale=0.5).to_pil())
    print(f"model load (embedders + OCR, once per process): {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("text layer: sample corpus (3 PDFs)", sorted(p for p in SAMPLE.glob("*.pdf") if "scan" not in p.name)),
            ("text layer: dense thesis (GeoTopo)", [REALWORLD / "009-pdflatex-geotopo_GeoTopo-komprimiert.pdf"]),
        ]
        if not args.text_only:
            cases += [
                ("scanned: sample memo + invoice", sorted(SAMPLE.glob("*scan.pdf"))),
                ("scanned: dense LaTeX pages", [scanned_copy(REALWORLD / "004-pdflatex-4-pages_pdflatex-4-pages.pdf",
                                                             Path(tmp) / "scan.pdf", 2)]),
            ]
        peak = gemm_peak_gflops()
        print(f"float32 matrix-multiply peak: {peak:.0f} GFLOP/s")
        for embedder in embedders:
            per_token = matmul_flops_per_token(embedder)
            print(f"{embedder.name} ({getattr(embedder, 'runtime', 'openvino')}): {per_token / 1e6:.1f} MFLOP a token "
                  f"at least, so at most {peak * 1e9 / per_token:,.0f} tokens/s")
        print(f"{'case':<38}{'embedder':<34}{'pages':>6}{'seconds':>9}{'pages/s':>9}{'s/page':>8}"
              f"{'tokens/page':>13}{'embed-only cap':>16}{'FLOP cap':>10}")
        for name, paths in cases:
            if not all(p.exists() for p in paths):
                print(f"{name:<38} missing input: {[str(p) for p in paths if not p.exists()]}")
                continue
            # The scans are OCR-bound: the first embedder alone indexes them.
            for embedder in embedders if name.startswith("text layer") else embedders[:1]:
                label = f"{embedder.name} ({getattr(embedder, 'runtime', 'openvino')})"
                pages, elapsed, passages = measure(paths, embedder, ocr)
                line = f"{name:<38}{label:<34}{pages:>6}{elapsed:>9.1f}{pages / elapsed:>9.1f}{elapsed / pages:>8.2f}"
                if name.startswith("text layer"):
                    per_page, _, cap = embedding_ceiling(embedder, passages, pages)
                    per_token = matmul_flops_per_token(embedder)
                    line += f"{per_page:>13.0f}{cap:>12.1f} p/s{peak * 1e9 / per_token / per_page:>6.1f} p/s"
                print(line)
    print("goals: >= 20 pages/s with a text layer; <= 2 s/page for scans")


if __name__ == "__main__":
    main()
