"""`pagelens eval`: the real command on the indexed sample store, its resume, its report and its errors."""

from __future__ import annotations

import json

import pytest

from pagelens.errors import BadInputError
from pagelens.training.evaluate import RESULTS_FORMAT, ResultsFile, read_questions


def _results(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_eval_reports_the_sample_and_resumes_with_only_the_new_questions(cli, sample_copy, tmp_path):
    report = tmp_path / "out" / "sample.md"
    results = report.with_suffix(".results.jsonl")
    cli("eval", "--sample", "--policy", "extractive", "--limit", "2", "--report", str(report), home=sample_copy)
    first = _results(results)
    assert len(first) == 2

    proc = cli("eval", "--sample", "--policy", "extractive", "--limit", "3", "--json", "--report", str(report),
               home=sample_copy)
    summary = json.loads(proc.stdout)
    after = _results(results)
    # Only the third question ran: the first two records are the same lines, latencies included.
    assert len(after) == 3 and after[:2] == first
    assert summary["n"] == 3 and summary["results"] == str(results) and summary["report"] == str(report)
    assert set(summary["answer"]) == {"em", "accuracy", "f1"}
    assert summary["answer_by_sufficiency"]["sufficient"]["n"] == 3
    assert summary["answer_by_sufficiency"]["insufficient"]["n"] == 0
    assert {"mrr@10", "ndcg@5", "recall@1", "recall@5", "recall@10"} <= set(summary["retrieval"])
    # The extractive policy finds and cites these pages and answers most of them; its turns always parse.
    assert summary["retrieval"]["mrr@10"] >= 0.5 and summary["retrieval"]["recall@10"] >= 2 / 3
    assert summary["answer"]["accuracy"] >= 2 / 3
    assert summary["citation"]["gold_page_cited"] >= 2 / 3
    assert summary["turns"]["valid_rate"] == 1.0 and summary["turns"]["mean"] >= 1
    assert 0 < summary["latency_s"]["p50"] <= summary["latency_s"]["p90"]
    text = report.read_text()
    assert "| MRR@10 |" in text and "## Worst questions" in text and "Margaret Okafor" in text


def test_eval_counts_the_turns_the_parser_refused(cli, sample_copy, tmp_path, policy_server):
    url, _ = policy_server([
        "I think I should look it up.",  # no action tag: an invalid turn
        "<think>search first</think><search>letter from the chief executive</search>",
        "<evidence>[1]: the letter is signed by Margaret Okafor</evidence><answer>Margaret Okafor</answer>",
    ])
    proc = cli("eval", "--sample", "--policy", url, "--limit", "1", "--json", "--report", str(tmp_path / "r.md"),
               home=sample_copy)
    summary = json.loads(proc.stdout)
    assert summary["turns"] == {"mean": 3.0, "valid_rate": pytest.approx(2 / 3, abs=1e-6)}
    assert summary["answer"] == {"em": 1.0, "accuracy": 1.0, "f1": pytest.approx(1.0, abs=1e-6)}
    assert summary["citation"]["gold_page_cited"] == 1.0


def test_a_bad_question_line_is_one_sentence_and_exit_2(cli, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question": "Who signed?", "answers": ["Margaret Okafor"]}\n{"question": "Oops", \n')
    proc = cli("eval", str(questions), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{questions} line 2 is not valid JSON" in lines[0] and "each line must be a JSON object like" in lines[0]


def test_a_gold_page_the_store_lacks_is_named(cli, sample_copy, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "Who signed?", "answers": ["Margaret Okafor"],
                                     "pages": [{"document": "missing.pdf", "page": 2}]}) + "\n")
    proc = cli("eval", str(questions), home=sample_copy, check=False)
    assert proc.returncode == 2
    assert "line 1 names page 2 of 'missing.pdf'" in proc.stderr and "pagelens index" in proc.stderr


@pytest.mark.parametrize("line, says", [
    ('["a list"]', "is not a JSON object"),
    ('{"answers": ["x"]}', 'has no "question" text'),
    ('{"question": "q"}', 'needs "answers"'),
    ('{"question": "q", "answers": "x"}', 'needs "answers"'),
    ('{"question": "q", "answers": ["x"], "pages": [{"document": "a.pdf", "page": 0}]}', 'has "pages" that'),
    ('{"question": "q", "answers": ["x"], "is_sufficient": "no"}', 'has an "is_sufficient" that is not'),
])
def test_each_kind_of_bad_line_names_its_line(tmp_path, line, says):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "fine", "answers": [], "is_sufficient": false}\n\n' + line + "\n")
    with pytest.raises(BadInputError, match=f"line 3 {says}"):
        read_questions(questions)


def test_repeated_questions_and_empty_files_are_refused(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "q", "answers": ["a"]}\n{"question": "q", "answers": ["b"]}\n')
    with pytest.raises(BadInputError, match="line 2 repeats the question of line 1"):
        read_questions(questions)
    questions.write_text("\n")
    with pytest.raises(BadInputError, match="has no questions"):
        read_questions(questions)


def test_results_file_resumes_past_a_cut_line_and_refuses_another_setup(tmp_path):
    path = tmp_path / "r.results.jsonl"
    results = ResultsFile(path, {"policy": "extractive"})
    results.add({"question": "q1", "answer": "a"})
    with open(path, "a") as out:
        out.write('{"question": "q2", "ans')  # what an interruption mid-write leaves
    assert set(ResultsFile(path, {"policy": "extractive"}).records) == {"q1"}
    with pytest.raises(BadInputError, match="another setup \\(policy differ\\)"):
        ResultsFile(path, {"policy": "http://127.0.0.1:8000/v1"})
    assert json.loads(path.read_text().splitlines()[0])["format"] == RESULTS_FORMAT


def test_the_sample_eval_questions_are_the_sample_questions(sample):
    questions = {q.question: q for q in read_questions(sample / "questions.jsonl")}
    demo = json.loads((sample / "questions.json").read_text())
    for item in demo:
        question = questions.pop(item["question"])
        assert question.answers == (item["answer"],) and question.pages == ((item["document"], item["page"]),)
        assert question.is_sufficient
    # The rest are unanswerable from the corpus.
    assert questions and all(not q.is_sufficient and not q.pages for q in questions.values())
