"""Recording supervision data from the extractive policy, and where a trained model may be written."""

from __future__ import annotations

import json

import pytest

from pagelens.errors import BadInputError
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.training.data import RowFilter, read_rows
from pagelens.training.recording import phrase_questions, record_extractive_runs
from pagelens.training.sft import output_folder


def test_phrase_questions_are_cut_from_the_pages_and_repeat_for_a_seed(sample_home):
    with PageStore(StoreSettings(home=sample_home)) as store:
        questions = phrase_questions(store, 12)
        text = " ".join(line.text for page in store.pages() for line in store.lines(page.page_id))
        assert phrase_questions(store, 12) == questions and phrase_questions(store, 12, seed=1) != questions
    assert len(questions) == 12
    for question in questions:
        assert question.endswith("?") and 3 <= len(question.split()) <= 9
        assert question[:-1].split()[0] in text


@pytest.mark.slow
def test_runs_are_recorded_for_the_questions_then_phrases(sample_copy, tmp_path):
    path = tmp_path / "runs.jsonl"
    asked = ["What is the name of Northwind's flagship demand-forecasting platform?"]
    assert record_extractive_runs(sample_copy, asked, 3, path) == 3
    runs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(runs) == 3 and runs[0]["question"] == asked[0]
    assert all(run["protocol"] == "pagelens" for run in runs)


@pytest.mark.slow
def test_slipped_turns_are_rejected_by_the_graph_then_retried_and_kept_out_of_the_loss(sample_copy, tmp_path):
    path = tmp_path / "runs.jsonl"
    record_extractive_runs(sample_copy, [], 8, path, slips=0.5)
    rows = read_rows([path], RowFilter(answered=False)).rows
    retries = 0
    for row in rows:
        messages = row["messages"]
        for turn, message in enumerate(messages):
            if message.get("train") is False:
                retries += 1
                # The real graph's retry message, then the turn the policy meant, which is trained on.
                assert messages[turn + 1]["content"][0]["text"].startswith("Your previous action was invalid")
                assert messages[turn + 2]["role"] == "assistant" and "train" not in messages[turn + 2]
    assert retries >= 3, rows
    assert sum(row["messages"][-1]["content"][0]["text"].endswith("</answer>") for row in rows) >= 6


def test_slips_need_a_share_below_one_and_a_protocol_that_retries(tmp_path):
    with pytest.raises(BadInputError, match="outside"):
        record_extractive_runs(tmp_path / "home", [], 1, tmp_path / "runs.jsonl", slips=1.0)
    with pytest.raises(BadInputError, match="evisrag answers once"):
        record_extractive_runs(tmp_path / "home", [], 1, tmp_path / "runs.jsonl", protocol="evisrag", slips=0.1)
    assert not (tmp_path / "home").exists() and not (tmp_path / "runs.jsonl").exists()


def test_the_output_folder_is_neither_a_file_nor_the_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="is the model folder itself"):
        output_folder(model, model)
    with pytest.raises(BadInputError, match="is a file"):
        output_folder(tmp_path / "file", model)
    assert output_folder(tmp_path / "new", model) == tmp_path / "new"
