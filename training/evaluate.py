"""Evaluation runs (`pagelens eval`): a question file through retrieval and the agent, scored by SPEC §5's metrics.

Each question is searched (the ranked pages give MRR@10, nDCG@k and Recall@k against its gold pages) and asked
through the same `Agent` `pagelens ask` uses (its answer gives EVisRAG's EM / accuracy / F1, its evidence whether a
gold page was cited, its turns how often the protocol parser accepted the policy's reply). Every finished question
is appended to a results file, keyed by question, so a run that is interrupted resumes where it stopped; the
results file starts with the run's setup, and a setup that differs is refused rather than mixed in.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pagelens.errors import BadInputError
from pagelens.graph.build import Agent
from pagelens.graph.parse import Invalid, Turn
from pagelens.graph.run import RunResult
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.search import Retriever
from pagelens.training.metrics import answer_metrics, retrieval_metrics
from pagelens.training.settings import EvalSettings

RESULTS_FORMAT = "pagelens-eval-results/1"
# The retrieval depths every report shows (SPEC §5: MRR@10 and Recall@10 for VisRAG-Ret, nDCG@5 for ViDoRe).
REPORT_KS = (1, 5, 10)
_FORMAT_HINT = ('each line must be a JSON object like {"question": "...", "answers": ["..."], '
                '"pages": [{"document": "report.pdf", "page": 1}], "is_sufficient": true}')


@dataclass(frozen=True)
class EvalQuestion:
    """One line of a question file; `pages` are (document name, 1-based page number)."""

    question: str
    answers: tuple[str, ...]
    pages: tuple[tuple[str, int], ...]
    is_sufficient: bool
    line: int


def read_questions(path: Path) -> list[EvalQuestion]:
    """The questions of a JSONL file; any bad line is one BadInputError naming the file, the line and the fix."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"cannot read the question file {path} ({error}); give a UTF-8 JSONL file.") from None
    questions: list[EvalQuestion] = []
    first_line: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        question = _parse_line(path, number, text)
        if question.question in first_line:
            raise BadInputError(f"{path} line {number} repeats the question of line {first_line[question.question]}; "
                                f"results are kept by question, so remove or reword one of them.")
        first_line[question.question] = number
        questions.append(question)
    if not questions:
        raise BadInputError(f"the question file {path} has no questions; {_FORMAT_HINT}.")
    return questions


def _parse_line(path: Path, number: int, text: str) -> EvalQuestion:
    def bad(what: str) -> BadInputError:
        return BadInputError(f"{path} line {number} {what}; {_FORMAT_HINT}.")

    try:
        item = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad(f"is not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(item, dict):
        raise bad("is not a JSON object")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise bad('has no "question" text')
    is_sufficient = item.get("is_sufficient", True)
    if not isinstance(is_sufficient, bool):
        raise bad('has an "is_sufficient" that is not true or false')
    answers = item.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) or (is_sufficient and not answers):
        raise bad('needs "answers", a list of answer strings (it may be empty only when "is_sufficient" is false)')
    pages = item.get("pages", [])
    if not isinstance(pages, list) or not all(
            isinstance(p, dict) and isinstance(p.get("document"), str) and type(p.get("page")) is int and p["page"] >= 1
            for p in pages):
        raise bad('has "pages" that are not a list of {"document": name, "page": number from 1}')
    return EvalQuestion(question.strip(), tuple(answers), tuple((p["document"], p["page"]) for p in pages),
                        is_sufficient, number)


def gold_page_ids(questions: Iterable[EvalQuestion], store: PageStore, path: Path) -> dict[str, list[str]]:
    """Each question's gold pages as page ids of `store`; a page the store lacks is a BadInputError naming it."""
    ids = {(page.document, page.page_number): page.page_id for page in store.pages()}
    gold: dict[str, list[str]] = {}
    for question in questions:
        for document, number in question.pages:
            if (document, number) not in ids:
                raise BadInputError(
                    f"{path} line {question.line} names page {number} of {document!r}, which the store {store.home} "
                    f"does not hold; index that document (pagelens index) or fix the line."
                )
        gold[question.question] = [ids[page] for page in question.pages]
    return gold


def turn_validity(result: RunResult, parse: Callable[[str], Turn]) -> tuple[int, int]:
    """(policy turns, turns the protocol parser accepted): the observe steps, and those not read as invalid."""
    turns = valid = 0
    for step in result.steps:
        if step.kind != "observe":
            continue
        turns += 1
        kind = step.detail.get("kind")
        # A final turn that did not answer is recorded as a stop; the parser's own verdict on it is what counts.
        valid += kind != "invalid" and not (kind == "stop" and isinstance(parse(step.text).action, Invalid))
    return turns, valid


def score_question(question: EvalQuestion, gold: list[str], ranked: list[str], result: RunResult, seconds: float,
                   parse: Callable[[str], Turn], k: int) -> dict:
    """One question's record for the results file: what it got and every per-question metric."""
    turns, valid = turn_validity(result, parse)
    gold_pages = set(question.pages)
    return {
        "question": question.question,
        "answers": list(question.answers),
        "is_sufficient": question.is_sufficient,
        "answer": result.answer,
        "status": result.status,
        "metrics": answer_metrics(result.answer or "", question.answers, question.is_sufficient),
        "gold_pages": gold,
        "retrieved": ranked,
        "gold_rank": next((rank for rank, page in enumerate(ranked, start=1) if page in gold), None),
        "retrieval": retrieval_metrics(ranked, gold, sorted({*REPORT_KS, k})) if gold else None,
        "cited_gold": any((e.document, e.page_number) in gold_pages for e in result.evidence) if gold else None,
        "turns": turns,
        "valid_turns": valid,
        "latency_s": round(seconds, 4),
    }


class ResultsFile:
    """The finished questions of one setup, in a JSONL file: a header line with the setup, then one line each."""

    def __init__(self, path: Path, setup: dict):
        self.path, self.setup = path, setup
        self.records: dict[str, dict] = {}
        if path.is_file():
            self._load()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"format": RESULTS_FORMAT, "setup": setup}) + "\n", encoding="utf-8")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("format") != RESULTS_FORMAT:
            raise BadInputError(f"{self.path} is not a pagelens eval results file; move it away or give another "
                                f"--report.")
        if header["setup"] != self.setup:
            differs = ", ".join(key for key in sorted({*header["setup"], *self.setup})
                                if header["setup"].get(key) != self.setup.get(key))
            raise BadInputError(f"{self.path} holds results of another setup ({differs} differ); delete it to start "
                                f"over, or give another --report to keep both.")
        for text in lines[1:]:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue  # the line an interruption cut short: that question runs again
            self.records[record["question"]] = record

    def add(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.records[record["question"]] = record


def run_eval(questions: list[EvalQuestion], gold: dict[str, list[str]], agent: Agent, retriever: Retriever,
             results: ResultsFile, settings: EvalSettings, *, progress: bool = True) -> list[dict]:
    """Search and ask every question not yet in `results`, appending each as it finishes; all their records."""
    chosen = questions[:settings.limit] if settings.limit else questions
    todo = [question for question in chosen if question.question not in results.records]
    parse = agent.context.protocol.parse
    bar = tqdm(total=len(chosen), initial=len(chosen) - len(todo), unit="question",
               disable=not progress or not sys.stderr.isatty(), file=sys.stderr)
    with bar:
        for question in todo:
            ranked = [hit.page.page_id for hit in retriever.search(question.question, k=settings.k)]
            started = time.perf_counter()
            result = agent.ask(question.question)
            seconds = time.perf_counter() - started
            results.add(score_question(question, gold[question.question], ranked, result, seconds, parse, settings.k))
            bar.update()
    return [results.records[question.question] for question in chosen]
