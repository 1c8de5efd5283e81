"""`pagelens eval`: run a question file through retrieval and the agent on the current store, and report.

The agent is built as `pagelens ask` builds it (settings from servers.config, the policy `make_policy` picks), so
what is measured is what is served. The report goes to --report (default: the store's `eval/` folder, one file per
question file and setup), with the results file beside it that lets an interrupted run resume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from pagelens.errors import BadInputError
from pagelens.servers.terminal import print_json
from pagelens.servers.cli.commands import note
from pagelens.servers.config import load_settings, policy_url
from pagelens.training.settings import EvalSettings

SAMPLE_QUESTIONS = "questions.jsonl"


def _questions_file(args: argparse.Namespace) -> Path:
    if args.sample == (args.questions is not None):
        raise BadInputError("give a question file (pagelens eval QUESTIONS.jsonl) or --sample, one of the two.")
    if args.sample:
        from pagelens.servers.cli.demo import sample_folder

        return sample_folder() / SAMPLE_QUESTIONS
    return args.questions


def _index_sample(store, args: argparse.Namespace) -> None:
    """Index the bundled sample corpus into the store unless it already holds every sample document."""
    from pagelens.servers.cli.demo import sample_folder
    from pagelens.tools.corpus.ingest import index_paths

    files = sorted(sample_folder().glob("*.pdf"))
    if {path.name for path in files} <= {document.name for document in store.documents()}:
        return
    note(args, f"indexing the sample corpus into {store.home} first")
    report = index_paths(store, files, progress=not args.quiet)
    if report.failures:
        raise BadInputError(f"the sample corpus could not be indexed ({report.summary()}); check the store "
                            f"{store.home}.")


def evaluate(args: argparse.Namespace) -> int:
    from pagelens.graph.build import Agent
    from pagelens.graph.policies import make_policy
    from pagelens.tools.corpus.store import PageStore
    from pagelens.tools.search import Retriever
    from pagelens.training.eval_report import markdown_report, summarize
    from pagelens.training.evaluate import ResultsFile, gold_page_ids, read_questions, run_eval

    path = _questions_file(args)
    questions = read_questions(path)  # a bad line fails before the store opens or anything runs
    settings = load_settings(home=args.home, url=policy_url(args.policy), model=args.model, protocol=args.protocol)
    chosen = EvalSettings(**{key: value for key, value in (("k", args.k), ("limit", args.limit)) if value is not None})
    with PageStore(settings.store, settings.retrieval, holder="pagelens eval") as store:
        if args.sample:
            _index_sample(store, args)
        elif not store.pages():
            raise BadInputError(f"the store {store.home} has no pages; index the documents the questions are about "
                                f"first: pagelens index PATH…")
        gold = gold_page_ids(questions, store, path)
        retriever = Retriever(store)
        policy = make_policy(settings.policy)
        agent = Agent(store, policy, settings.agent, retriever=retriever)
        agent_settings = settings.agent
        setup = {"policy": policy.name, "protocol": agent_settings.protocol, "max_turns": agent_settings.max_turns,
                 "template": agent_settings.template, "bbox_convention": agent_settings.bbox_convention,
                 "k": chosen.k}
        report = args.report or _default_report(store.home, path, setup)
        results = ResultsFile(report.with_suffix(".results.jsonl"), setup)
        records = run_eval(questions, gold, agent, retriever, results, chosen, progress=not args.quiet)
    summary = summarize(records, chosen.k)
    text = markdown_report(summary, records, title=path.name, setup=setup, worst=chosen.worst)
    try:
        report.write_text(text + "\n", encoding="utf-8")
    except OSError as error:
        raise BadInputError(f"cannot write the report {report} ({error}); give a --report path in a writable "
                            f"folder.") from None
    if args.json:
        print_json({**summary, "report": str(report), "results": str(results.path)})
    else:
        print(text)
    note(args, f"report: {report} · results (resumable): {results.path}")
    return 0


def _default_report(home: Path, questions: Path, setup: dict) -> Path:
    """The store's eval/<questions>-<protocol>-<setup hash>.md: one report per question file and setup."""
    digest = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:8]
    return home / "eval" / f"{questions.stem}-{setup['protocol']}-{digest}.md"
