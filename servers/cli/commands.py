"""One function per CLI command; each opens the store with the settings of servers.config."""

from __future__ import annotations

import argparse
import shlex
import sys
from contextlib import contextmanager
from collections.abc import Iterator

from pagelens.errors import BadInputError
from pagelens.servers.config import load_settings, policy_url
from pagelens.servers.terminal import EXIT_FAILED_FILES, EXIT_NO_ANSWER, print_json
from pagelens.tools.corpus.files import printable
from pagelens.tools.corpus.store import PageStore


@contextmanager
def open_store(args: argparse.Namespace, *, rebuild: bool = False, choose_retriever: bool = False,
               **flags: object) -> Iterator[PageStore]:
    settings = load_settings(home=args.home, **flags)
    with PageStore(settings.store, settings.retrieval, rebuild=rebuild, holder=f"pagelens {args.command}",
                   choose_retriever=choose_retriever) as store:
        yield store


def note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def index(args: argparse.Namespace) -> int:
    from pagelens.tools.corpus.ingest import index_paths

    if args.retriever is None and (args.model or args.token_pooling is not None or args.pooling):
        raise BadInputError("--model, --token-pooling and --pooling set up a vision retriever; add --retriever "
                            "(colqwen, vlm, text+colqwen or text+vlm).")
    with open_store(args, rebuild=args.rebuild, pdf_password=args.password, max_pages=args.max_pages,
                    choose_retriever=args.retriever is not None, retriever=args.retriever, vision_model=args.model,
                    token_pooling=args.token_pooling, vision_pooling=args.pooling) as store:
        report = index_paths(store, args.paths, dpi=args.dpi, progress=not args.quiet)
    print(report.summary())
    return EXIT_FAILED_FILES if report.failures else 0


def search(args: argparse.Namespace) -> int:
    from pagelens.tools.search import Retriever

    with open_store(args) as store:
        retriever = Retriever(store)
        if args.filter:
            hits, candidates = retriever.filtered(args.query, k=args.k, document=args.document)
        else:
            hits = candidates = retriever.search(args.query, k=args.k, document=args.document)
        if args.json:
            found = {"query": args.query, "hits": [h.to_dict() for h in hits]}
            if args.filter:  # every candidate's decision, the dropped ones too
                kept = {h.page.page_id for h in hits}
                found["filter"] = {"threshold": store.retrieval.relevance.threshold, "candidates": [
                    {"page_id": c.page.page_id, "relevance": round(c.relevance, 4), "kept": c.page.page_id in kept}
                    for c in candidates]}
            print_json(found)
            return 0
        if not hits:
            print("No pages match; `pagelens pages` lists what is indexed.")
        for rank, hit in enumerate(hits, start=1):
            print(f"{rank:>2}. {printable(hit.page.document)} p.{hit.page.page_number}  [{hit.page.page_id}]  "
                  f"score {hit.score:.4f}" + ("" if hit.relevance is None else f", relevance {hit.relevance:.2f}")
                  + ("" if hit.supported is not False else " (does not support an answer)"))
            print(f"    {hit.snippet}")
        if args.filter:
            print(f"kept {len(hits)} of {len(candidates)} candidate page(s) at relevance "
                  f">= {store.retrieval.relevance.threshold:.2f}"
                  + ("" if any(hit.supported for hit in hits) else " (none reached it: the most probable kept)"))
    return 0


def calibrate(args: argparse.Namespace) -> int:
    from pagelens.tools.calibration import calibrate as fit
    from pagelens.training.evaluate import gold_page_ids, read_questions

    questions = read_questions(args.questions)  # a bad line fails before the store opens
    with open_store(args) as store:
        gold = gold_page_ids(questions, store, args.questions)
        result = fit(store, [(q.question, gold[q.question] if q.is_sufficient else []) for q in questions],
                     k=args.k, threshold=args.threshold, progress=not args.json)
        store.save_relevance(result.model)
        if args.json:
            print_json(result.to_dict())
            return 0
        model = result.model
        print(f"fitted the {store.retrieval.retriever} retriever's relevance model on {result.positives} supporting "
              f"and {result.negatives} other candidate pages of {len(questions)} question(s):")
        for name, weight in zip(model.features, model.weights):
            print(f"  {name:<18}{weight:>9.4f}")
        print(f"  {'bias':<18}{model.bias:>9.4f}\n  threshold {model.threshold}")
        print(f"on these questions: {result.answerable_kept:.0%} of answerable ones keep a gold page, "
              f"{result.unanswerable_refused:.0%} of unanswerable ones are refused; kept in {store.home}/manifest.json")
    return 0


def pages(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        listed = store.pages()
        if args.json:
            print_json({"pages": [
                {k: v for k, v in p.to_dict().items() if k in ("page_id", "document", "page_number", "image_path")}
                for p in listed
            ]})
            return 0
        for page in listed:
            print(f"{page.page_id}  {printable(page.document)} p.{page.page_number}  {page.width}x{page.height}  "
                  f"text: {page.text_source}")
        print(f"{len(listed)} page(s) in {len(store.documents())} document(s) in {store.home}")
    return 0


def remove(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        matched = store.match_documents(args.glob)
        if not matched:
            raise BadInputError(f"no indexed document matches {args.glob!r}; `pagelens pages` lists the names.")
        for document in matched:
            store.delete_document(document.document_id)
            print(f"removed {printable(document.name)} ({document.page_count} page(s))")
    return 0


def show(args: argparse.Namespace) -> int:
    import shutil

    from pagelens.tools.imagefiles import load_page_image

    with open_store(args) as store:
        page = store.page(args.page_id)
        if args.output.suffix.lower() == page.image_path.suffix.lower():
            shutil.copyfile(page.image_path, args.output)
        else:
            _save(load_page_image(page.image_path), args.output)
    print(f"wrote {args.output} ({page.width}x{page.height}, {printable(page.document)} p.{page.page_number})")
    return 0


def crop(args: argparse.Namespace) -> int:
    from pagelens.tools.imagefiles import load_page_image
    from pagelens.tools.boxes import Box
    from pagelens.tools.regions import SeenImage, crop as crop_page

    box = Box.parse(args.box)
    with open_store(args) as store:
        page = store.page(args.page_id)
        seen = None
        if args.seen:
            width, height = parse_size(args.seen)
            seen = SeenImage.whole_page(page.page_id, page.width, page.height, width, height)
        result = crop_page(load_page_image(page.image_path), page.page_id, box, seen=seen,
                           padding=args.padding, zoom=not args.no_zoom)
    _save(result.image, args.output)
    region = result.region.box.rounded().as_list()
    print(f"wrote {args.output} ({result.image.width}x{result.image.height}) of {printable(page.document)} "
          f"p.{page.page_number}, page box {region}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from pagelens.servers.cli.demo import run_demo

    with open_store(args) as store:
        return run_demo(store, quiet=args.quiet)


def _save(image, path) -> None:
    try:
        image.save(path)
    except (ValueError, OSError) as exc:
        raise BadInputError(f"cannot write {path} ({exc}); use a .png or .jpg file name in a writable folder.") from None


def ask(args: argparse.Namespace) -> int:
    from pagelens.graph.build import Agent, sqlite_checkpointer
    from pagelens.graph.policies import make_policy
    from pagelens.servers.answers import print_result, step_printer, write_outputs

    settings = load_settings(home=args.home, url=policy_url(args.policy), model=args.model, protocol=args.protocol,
                             max_turns=args.max_turns, run_timeout=args.timeout, template=args.template,
                             bbox_convention=args.bbox_convention)
    with PageStore(settings.store, settings.retrieval, holder="pagelens ask") as store:
        if not store.pages():
            raise BadInputError(f"the store {store.home} has no pages; index some first: pagelens index PATH…")
        agent = Agent(store, make_policy(settings.policy), settings.agent,
                      checkpointer=sqlite_checkpointer(settings.store.home))
        result = agent.ask(args.question, thread_id=args.thread, on_step=step_printer(args.quiet))
        write_outputs(result, agent.context.pages.page, trace=args.trace, trajectory=args.trajectory,
                      quiet=args.quiet)
    print_result(result, as_json=args.json)
    return 0 if result.answer is not None else EXIT_NO_ANSWER


def serve_mcp(args: argparse.Namespace) -> int:
    from pagelens.servers.mcp.server import run_mcp_server

    run_mcp_server(load_settings(home=args.home), transport=args.transport, host=args.host, port=args.port)
    return 0


def mcp_config(args: argparse.Namespace) -> int:
    from pagelens.servers.mcp.server import mcp_config as entry

    print_json(entry(load_settings(home=args.home)))
    return 0


def serve_milvus(args: argparse.Namespace) -> int:
    from pagelens.servers.cli.milvus import run_milvus_server

    run_milvus_server(load_settings(home=args.home).store, host=args.host, port=args.port)
    return 0


def serve_api(args: argparse.Namespace) -> int:
    from pagelens.servers.api.app import run_agent_api

    run_agent_api(load_settings(home=args.home), host=args.host, port=args.port)
    return 0


def serve_policy(args: argparse.Namespace) -> int:
    from pagelens.servers.policy.server import run_policy_server

    if args.backend == "vllm":
        from pagelens.servers.policy.vllm_launcher import run_vllm, vllm_command

        if not args.model:
            raise BadInputError("serve policy --backend vllm needs --model, a checkpoint folder or Hugging Face name.")
        settings = load_settings(home=args.home, protocol=args.protocol)
        command = vllm_command(args.model, settings.agent, reply_tokens=settings.policy.max_tokens,
                               host=args.host, port=args.port,
                               served_model_name=args.served_model_name, max_model_len=args.max_model_len,
                               min_pixels=args.min_pixels, max_pixels=args.max_pixels)
        if args.dry_run:
            print(shlex.join(command))
            return 0
        return run_vllm(command)

    if args.backend == "transformers" and not args.model:
        raise BadInputError("serve policy --backend transformers needs --model PATH, a Qwen2.5-VL checkpoint folder.")
    if args.backend == "replay" and not args.script:
        raise BadInputError("serve policy --backend replay needs --script FILE, a JSON list of replies.")
    settings = load_settings(home=args.home)
    run_policy_server(args.backend, args.model, args.script, serving=settings.serving,
                      api_key=args.api_key or settings.policy.api_key, host=args.host, port=args.port,
                      device=args.device, served_model_name=args.served_model_name, record=args.record,
                      record_max_mb=args.record_max_mb, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    return 0


def parse_size(text: str) -> tuple[int, int]:
    """`--seen WIDTHxHEIGHT` as (width, height) in pixels."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInputError(f"--seen {text!r} is not WIDTHxHEIGHT in pixels, e.g. 812x1050.") from None
    if width <= 0 or height <= 0:
        raise BadInputError(f"--seen {text!r} must have a positive width and height.")
    return width, height
