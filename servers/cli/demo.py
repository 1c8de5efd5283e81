"""`pagelens demo`: index the bundled sample corpus, then search and ask each of its questions with the
extractive policy, writing an HTML trace per question."""

from __future__ import annotations

import json
import re
import string
from importlib import resources
from pathlib import Path

from pagelens.graph.build import Agent
from pagelens.graph.policies.extractive import ExtractivePolicy
from pagelens.servers.answers import write_outputs
from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.search import Retriever


def sample_folder() -> Path:
    """The bundled sample corpus: PDFs (some with a text layer, some scanned) and questions.json."""
    return Path(str(resources.files("pagelens.servers") / "sample"))


def load_questions() -> list[dict]:
    return json.loads((sample_folder() / "questions.json").read_text())


def answer_tokens(text: str) -> set[str]:
    """SPEC §3 normalisation as a set of tokens: lowercase, no ASCII punctuation, no articles."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return set(re.sub(r"\b(a|an|the)\b", " ", text).split())


def run_demo(store: PageStore, *, quiet: bool = False) -> int:
    folder = sample_folder()
    report = index_paths(store, sorted(folder.glob("*.pdf")), progress=not quiet)
    print(report.summary())
    retriever = Retriever(store)
    agent = Agent(store, ExtractivePolicy(), retriever=retriever)
    questions = load_questions()
    out_dir = store.home / "demo"
    out_dir.mkdir(exist_ok=True)
    first = correct = cited = 0
    for question in questions:
        hits = retriever.search(question["question"], k=3)
        ranks = [i for i, h in enumerate(hits, 1)
                 if h.page.document == question["document"] and h.page.page_number == question["page"]]
        first += ranks == [1]
        result = agent.ask(question["question"])
        trace = out_dir / f"{question['id']}-trace.html"
        write_outputs(result, agent.context.pages.page, trace=trace, trajectory=None, quiet=True)
        # EVisRAG's accuracy (SPEC §5): every gold token appears in the answer.
        is_correct = answer_tokens(question["answer"]) <= answer_tokens(result.answer or "")
        cites = any(e.document == question["document"] and e.page_number == question["page"]
                    for e in result.evidence)
        correct += is_correct
        cited += cites
        print(f"\n{question['id']} {question['question']}")
        print(f"   search: gold page {question['document']} p.{question['page']} ranked "
              f"{ranks[0] if ranks else '>3'}")
        print(f"   answer: {result.answer or result.message}")
        print(f"   gold answer {question['answer']!r}: {'correct' if is_correct else 'missed'}; "
              f"{'cites' if cites else 'does not cite'} the gold page · trace {trace}")
    total = len(questions)
    print(f"\nGold page ranked first for {first}/{total} questions; the extractive policy answered {correct}/{total} "
          f"correctly and cited the gold page for {cited}/{total}. Traces and store: {store.home}")
    print('Try: pagelens ask "<your question>" --trace trace.html   ·   pagelens search "<query>"   ·   pagelens pages')
    return 0
