"""Trajectories → training rows and the LLaMA-Factory export, on hand-written SPEC §2c trajectory files."""

from __future__ import annotations

import json

import pytest

from pagelens.errors import BadInputError, NotFoundError
from pagelens.prompts.loader import load_template
from pagelens.training.data import IMAGE_PLACEHOLDER, RowFilter, export_sharegpt, read_rows


def test_a_run_becomes_one_row_with_image_placeholders_in_order(make_run, write_runs, runs_dir):
    run = make_run("What was revenue in 2023?", "4.2 million", number=1)
    path = write_runs([run])

    rows = read_rows([path])

    assert rows.runs_read == 1 and len(rows.rows) == 1
    row = rows.rows[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert row["messages"][2]["content"] == [{"type": "image"}]
    assert row["messages"][4]["content"] == [{"type": "image"}]
    # the images in placeholder order, as absolute paths inside the trajectory's folder
    assert row["images"] == [str((runs_dir / image["path"]).resolve()) for image in run["images"]]
    assert row["messages"][5]["content"] == [{"type": "text", "text": run["messages"][5]["content"]}]
    assert row["messages"][0]["content"][0]["text"].endswith("Question: What was revenue in 2023?")


def test_filters_answered_correct_and_reward_thresholds(make_run, write_runs):
    path = write_runs([
        make_run("q0", None, number=0),  # not answered
        make_run("q1", "4.2 million", number=1, gold="4.2 million", rewards={"overall": 6.5}),
        make_run("q2", "5.0 million", number=2, gold="4.2 million", rewards={"overall": 6.9}),  # wrong
        make_run("q3", "The answer is 4.2 million.", number=3, gold="4.2 million", rewards={"overall": 2.0}),
        make_run("q4", "4.2 million", number=4),  # no gold, no rewards
    ])

    def kept(row_filter: RowFilter) -> list[str]:
        rows = read_rows([path], row_filter)
        assert rows.runs_read == 5
        return [row["id"] for row in rows.rows]

    assert kept(RowFilter(answered=False)) == ["run-0", "run-1", "run-2", "run-3", "run-4"]
    assert kept(RowFilter()) == ["run-1", "run-2", "run-3", "run-4"]
    assert kept(RowFilter(correct=True)) == ["run-1", "run-3"]
    assert kept(RowFilter(min_rewards={"overall": 3.0})) == ["run-1", "run-2"]
    assert kept(RowFilter(correct=True, min_rewards={"overall": 3.0})) == ["run-1"]


def test_a_missing_image_names_the_file_line_and_fix(make_run, write_runs, runs_dir):
    path = write_runs([make_run("q1", "a", number=1), make_run("q2", "b", number=2)])
    second = json.loads(path.read_text().splitlines()[1])
    (runs_dir / second["images"][1]["path"]).unlink()

    with pytest.raises(NotFoundError, match=r"runs\.jsonl line 2 .*copy the images/ folder"):
        read_rows([path])


def test_a_malformed_line_or_an_image_outside_the_folder_names_the_file_and_line(make_run, write_runs, tmp_path):
    path = write_runs([make_run("q1", "a", number=1), '{"id": "cut off mid-li'])
    with pytest.raises(BadInputError, match=r"runs\.jsonl line 2 is not valid JSON"):
        read_rows([path])

    outside = make_run("q3", "a", number=3)
    (tmp_path / "elsewhere.png").write_bytes((path.parent / outside["images"][0]["path"]).read_bytes())
    outside["messages"][2]["content"][0]["image_url"]["url"] = "../elsewhere.png"
    outside["images"][0]["path"] = "../elsewhere.png"
    path.write_text(json.dumps(outside) + "\n")
    with pytest.raises(BadInputError, match=r"runs\.jsonl line 1 points at image \.\./elsewhere\.png, outside"):
        read_rows([path])


def test_a_run_without_an_assistant_turn_is_an_error_naming_it(make_run, write_runs):
    run = make_run("q1", "a", number=1)
    run["messages"] = run["messages"][:1]
    path = write_runs([run])
    with pytest.raises(BadInputError, match=r"runs\.jsonl run 1 has no assistant message"):
        read_rows([path])


def test_sharegpt_export_for_llama_factory(make_run, write_runs, tmp_path):
    # The second run's search was rejected once: sharegpt has no per-turn loss mask, so that turn and its retry
    # message are left out and both runs export alike.
    retried = make_run("q2", "7", number=2)
    retry = load_template("pagelens_invalid_action").render(reason="the <search> tag is never closed with </search>")
    retried["messages"][1:1] = [{"role": "assistant", "content": "<search>q2"},
                                {"role": "user", "content": [{"type": "text", "text": retry}], "retry": True}]
    path = write_runs([make_run("q1", "4.2", number=1), retried])
    rows = read_rows([path]).rows
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))

    target = export_sharegpt(rows, folder, "pagelens_sft")

    records = json.loads(target.read_text())
    assert len(records) == 2
    for record, row in zip(records, rows):
        turns = record["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant"] * 3
        # one <image> per image, in the turn that showed it, in order
        assert [t["content"].count(IMAGE_PLACEHOLDER) for t in turns] == [0, 0, 1, 0, 1, 0]
        assert turns[2]["content"] == IMAGE_PLACEHOLDER
        assert len(record["images"]) == 2
        for relative, original in zip(record["images"], row["images"]):
            assert (folder / relative).read_bytes() == open(original, "rb").read()
        assert turns[5]["content"] == row["messages"][-1]["content"][0]["text"]
        assert record["system"] == ""
    assert '"<search>q2"' not in target.read_text() and "invalid" not in target.read_text()
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}
    assert info["pagelens_sft"]["file_name"] == "pagelens_sft.json"
    assert info["pagelens_sft"]["formatting"] == "sharegpt"
    assert info["pagelens_sft"]["columns"]["images"] == "images"


def test_export_command_and_its_bad_input(cli, make_run, write_runs, tmp_path):
    path = write_runs([make_run("q1", "4.2", number=1), make_run("q2", None, number=2)])
    proc = cli("train", "export", "--data", str(path), "--out", str(tmp_path / "lf"), "--name", "mine")
    assert "1 of 2 run(s) kept" in proc.stdout
    assert len(json.loads((tmp_path / "lf" / "mine.json").read_text())) == 1

    proc = cli("train", "export", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "lf"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: trajectory file {tmp_path / 'nope.jsonl'} does not exist; check the path or record some runs first."]
