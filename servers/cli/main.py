"""The `pagelens` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pagelens import __version__
from pagelens.errors import PageLensError
from pagelens.servers.terminal import EXIT_ERROR
from pagelens.tools.regions import MAX_PIXELS, MIN_PIXELS
from pagelens.tools.retrieval.settings import RETRIEVERS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pagelens",
        description="Index page images (PDFs, scans, photos, office files), search them, crop and zoom into them, "
                    "and answer questions over them with citations; serve the agent and its tools.",
    )
    parser.add_argument("--version", action="version", version=f"pagelens {__version__}")
    parser.add_argument("--home", type=Path, help="the store folder (default: $PAGELENS_HOME or ./.pagelens)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="add files and folders to the store (re-running adds only what is new)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--dpi", type=int, help="render PDF pages at this resolution (default: the store's, 144)")
    p.add_argument("--password", help="password for protected PDFs (or $PAGELENS_PDF_PASSWORD, which other users "
                                      "cannot read in the process list); never written anywhere")
    p.add_argument("--max-pages", type=int, metavar="N",
                   help="skip any file of more than N pages, with one line naming it (default 2000)")
    p.add_argument("--rebuild", action="store_true", help="delete the store's contents and settings first")
    p.add_argument("--retriever", choices=RETRIEVERS,
                   help="what pages are found by: their text (the default), their image (colqwen: ColQwen2 "
                        "multi-vector; vlm: one Qwen2-VL vector), or both fused; kept in the store's manifest")
    p.add_argument("--model", metavar="PATH", help="the vision retriever's checkpoint folder (nothing is downloaded)")
    p.add_argument("--token-pooling", type=int, metavar="F",
                   help="pool each page's ColQwen2 vectors by this factor (3 keeps a third; default: keep all)")
    p.add_argument("--pooling", choices=("wmean", "last", "mean"),
                   help="how the vlm retriever pools a page (default wmean, VisRAG-Ret's)")

    p = sub.add_parser("search", help="find the pages that best match a query")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5, help="how many pages (default 5)")
    p.add_argument("--document", metavar="GLOB", help="only documents whose name matches this glob")
    p.add_argument("--filter", action="store_true",
                   help="keep only pages the relevance model says support an answer (at least the most probable)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("pages", help="list the indexed pages")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("remove", help="delete the documents whose name matches a glob")
    p.add_argument("glob", metavar="GLOB")

    p = sub.add_parser("show", help="write a page image to a file")
    p.add_argument("page_id", metavar="PAGE_ID")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")

    p = sub.add_parser("crop", help="crop (and zoom) a region of a page to a file")
    p.add_argument("page_id", metavar="PAGE_ID")
    p.add_argument("--box", required=True, help="x1,y1,x2,y2 in page pixels, or in the pixels of --seen")
    p.add_argument("--seen", metavar="WxH", help="the box is in the pixels of the page seen at this size")
    p.add_argument("--padding", type=float, default=0.0, help="widen the box by this many page pixels")
    p.add_argument("--no-zoom", action="store_true", help="keep the crop's own pixels (no resize)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")

    p = sub.add_parser("ask", help="answer a question from the indexed pages, with citations")
    p.add_argument("question")
    p.add_argument("--policy", metavar="extractive|URL",
                   help="'extractive' (offline, the default without $PAGELENS_POLICY_URL) or an OpenAI-compatible "
                        "base URL such as http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name at the policy URL (default: $PAGELENS_POLICY_MODEL or its first)")
    p.add_argument("--protocol", choices=["pagelens", "vrag", "evisrag"], help="turn protocol (default pagelens)")
    p.add_argument("--max-turns", type=int, metavar="N", help="action turns before the forced answer (default 6)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds the question may take (default 300)")
    p.add_argument("--template", metavar="FILE", help="instruction template file to use instead of the protocol's")
    p.add_argument("--bbox-convention", choices=["pixels", "normalized-1000"],
                   help="how the policy writes boxes: pixels of the image it saw (Qwen2.5-VL, the default) or 0-1000")
    p.add_argument("--thread", metavar="ID", help="continue (or start) this conversation; follow-ups see it")
    p.add_argument("--json", action="store_true", help="print the answer, evidence and steps as JSON")
    p.add_argument("--trace", type=Path, metavar="FILE.html", help="write a self-contained HTML trace of the run")
    p.add_argument("--trajectory", type=Path, metavar="FILE.jsonl",
                   help="append the run to a trajectory file (SPEC §2c), its images beside it")

    p = sub.add_parser("serve", help="run a server")
    serve = p.add_subparsers(dest="server", required=True, metavar="SERVER")
    p = serve.add_parser("mcp", help="the MCP tool server for desktop assistants (search, view, crop, ask)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (what desktop assistants launch) or streamable HTTP")
    p.add_argument("--host", default="127.0.0.1", help="HTTP only: address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8765, help="HTTP only (default 8765)")

    p = serve.add_parser("milvus", help="a Milvus server on this store's vectors, so several processes can share it")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=19530, help="port (default 19530)")

    p = serve.add_parser("api", help="the agent as an OpenAI-compatible chat completions API")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8080)

    p = serve.add_parser("policy", help="an OpenAI-compatible policy endpoint for a Qwen2.5-VL checkpoint")
    p.add_argument("--backend", choices=["transformers", "replay", "vllm"], default="transformers",
                   help="transformers: run --model on the CPU or a GPU; vllm: launch `vllm serve` (GPU); "
                        "replay: answer from --script in order")
    p.add_argument("--model", help="checkpoint folder (transformers), or folder or Hugging Face name (vllm)")
    p.add_argument("--protocol", choices=["pagelens", "vrag", "evisrag"],
                   help="vllm: size image limits and context for this protocol (default: the agent's)")
    p.add_argument("--dry-run", action="store_true", help="vllm: print the `vllm serve` command, do not run it")
    p.add_argument("--max-model-len", type=int, help="vllm: context length (default: what the protocol needs)")
    p.add_argument("--script", type=Path, help="JSON list of replies, or JSONL of {\"text\": ...} (replay backend)")
    p.add_argument("--record", type=Path, help="append every request body to this JSONL file")
    p.add_argument("--record-max-mb", type=float, default=100, metavar="MB",
                   help="stop recording, with one warning, before --record passes this size (default 100)")
    p.add_argument("--api-key", metavar="KEY",
                   help="transformers/replay: require 'Authorization: Bearer KEY' on /v1 (default: "
                        "$PAGELENS_POLICY_API_KEY, the key `pagelens ask` sends; none: no check)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback; elsewhere without a key, a warning)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--served-model-name", help="the model name clients send (default: --model as given; vllm: a folder's name; replay: 'replay')")
    p.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help="smallest image area the model sees")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest image area the model sees")

    sub.add_parser("mcp-config", help="print the claude_desktop_config.json entry that runs `pagelens serve mcp`")

    from pagelens.servers.cli.train_commands import add_train_parsers

    add_train_parsers(sub)

    p = sub.add_parser("demo",
                       help="index the bundled sample corpus, search and ask its questions, write a trace of each")

    p = sub.add_parser("calibrate", help="fit this store's relevance model on a question file and keep it in the "
                                         "store (search, the relevance filter and 'insufficient' then use it)")
    p.add_argument("questions", type=Path, metavar="QUESTIONS.jsonl",
                   help="the question file format of `pagelens eval`, with gold pages (and some unanswerable questions)")
    p.add_argument("--k", type=int, default=10, help="candidate pages judged per question (default 10)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability from which a page supports an answer (default 0.5, MIRAGE's)")
    p.add_argument("--json", action="store_true", help="print the fitted model and its figures as JSON")

    p = sub.add_parser("eval", help="run a question file through retrieval and the agent; report answer, retrieval "
                                    "and citation metrics (resumes after an interruption)")
    p.add_argument("questions", nargs="?", type=Path, metavar="QUESTIONS.jsonl",
                   help='one JSON object a line: {"question", "answers": [...], "pages": [{"document", "page"}], '
                        '"is_sufficient"} (pages and is_sufficient optional)')
    p.add_argument("--sample", action="store_true", help="the bundled sample corpus's questions (indexed if missing)")
    p.add_argument("--policy", metavar="extractive|URL", help="as for ask: 'extractive' or an OpenAI-compatible URL")
    p.add_argument("--model", help="model name at the policy URL (default: $PAGELENS_POLICY_MODEL or its first)")
    p.add_argument("--protocol", choices=["pagelens", "vrag", "evisrag"], help="turn protocol (default pagelens)")
    p.add_argument("--k", type=int, metavar="K",
                   help="pages retrieved per question for the retrieval metrics (default 10)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--report", type=Path, metavar="FILE.md",
                   help="write the report here, its results beside it (default: the store's eval/ folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except PageLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from pagelens.servers.cli import commands

    if args.command == "serve":
        return getattr(commands, f"serve_{args.server}")(args)
    if args.command == "eval":
        from pagelens.servers.cli.eval_command import evaluate

        return evaluate(args)
    if args.command in ("train", "tiny-model"):
        from pagelens.servers.cli import train_commands

        return train_commands.run(args)
    return getattr(commands, args.command.replace("-", "_"))(args)
