"""Trajectories (SPEC §2c): JSONL runs with the seen images as deduplicated PNG files beside them."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pagelens.errors import BadInputError, NotFoundError
from pagelens.graph.policies.interface import ShownImage
from pagelens.graph.run import Evidence, RunResult, Step
from pagelens.graph.trajectory import append_trajectory, read_trajectories
from pagelens.tools.boxes import Box
from pagelens.tools.regions import crop, fit_for_model, render_seen

PDF = Path(__file__).resolve().parents[2] / "servers" / "sample" / "northwind_annual_report_2023.pdf"
DOCUMENT = "northwind_annual_report_2023.pdf"
PAGE = "0123456789ab-p1"


@pytest.fixture(scope="module")
def page() -> Image.Image:
    pdf = pdfium.PdfDocument(PDF)
    try:
        return pdf[0].render(scale=2).to_pil().convert("RGB")
    finally:
        pdf.close()


def make_run(page: Image.Image, box: Box, answer: str = "55.0 million") -> RunResult:
    """The page shown whole, then a crop of `box` on the image the model saw; the answer cites the crop."""
    _, seen = fit_for_model(page, PAGE)
    cut = crop(page, PAGE, box, seen=seen)
    images = (ShownImage(1, PAGE, DOCUMENT, 1, seen), ShownImage(2, PAGE, DOCUMENT, 1, cut.seen, cut.region))
    messages = (
        {"role": "user", "content": [{"type": "text", "text": "Question: what was revenue in 2023?"}]},
        {"role": "assistant", "content": "<search>revenue</search>"},
        {"role": "user", "content": [{"type": "image", "image": 1}]},
        {"role": "assistant", "content": f"<bbox>{box.as_list()}</bbox>"},
        {"role": "user", "content": [{"type": "image", "image": 2}]},
        {"role": "assistant", "content": f"<evidence>[2]: revenue line</evidence><answer>{answer}</answer>"},
    )
    return RunResult(
        "What was revenue in 2023?", answer, "answered", "answered", (Evidence(2, PAGE, DOCUMENT, 1, cut.region,
                                                                                "revenue line"),),
        (Step(1, "search", messages[1]["content"], {"query": "revenue"}, (1,)),), images, messages, "pagelens",
        "extractive",
    )


def image_parts(run: dict) -> list[str]:
    return [part["image_url"]["url"] for message in run["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image_url"]


def test_two_runs_round_trip_with_shared_images_stored_once(page, tmp_path):
    path = tmp_path / "runs" / "train.jsonl"
    first = make_run(page, Box(60, 180, 480, 330))
    second = make_run(page, Box(40, 400, 500, 520), answer="1,240")
    written = [
        append_trajectory(first, lambda _: page, path, gold={"answer": "55.0 million", "pages": [PAGE]},
                          rewards={"judge": 1.0, "ndcg": 1.0}, run_id="run-1"),
        append_trajectory(second, lambda _: page, path),
    ]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == written

    stored = sorted((tmp_path / "runs" / "images").iterdir())
    assert len(stored) == 3  # the page view is shared by both runs
    for file in stored:
        assert file.name == f"{hashlib.sha256(file.read_bytes()).hexdigest()}.png"

    runs = list(read_trajectories(path))
    assert [run["id"] for run in runs][0] == "run-1" and len(runs[1]["id"]) == 32
    assert runs[0]["gold"] == {"answer": "55.0 million", "pages": [PAGE]} and runs[0]["rewards"]["judge"] == 1.0
    assert "gold" not in runs[1] and "rewards" not in runs[1]
    for result, line, run in zip((first, second), written, runs):
        assert run["question"] == result.question and run["answer"] == result.answer
        assert (run["protocol"], run["policy"], run["status"]) == ("pagelens", "extractive", "answered")
        assert run["evidence"] == [item.to_dict() for item in result.evidence]
        assert [m["role"] for m in run["messages"]] == [m["role"] for m in result.messages]
        # Relative in the file, absolute when read; message parts point at the same files as the image records.
        assert [image["path"] for image in line["images"]] == image_parts(line)
        assert all(p.startswith("images/") and p.endswith(".png") for p in image_parts(line))
        assert [image["path"] for image in run["images"]] == image_parts(run)
        for shown, record in zip(result.images, run["images"]):
            assert Path(record["path"]).is_absolute()
            assert (record["index"], record["page_id"], record["document"], record["page_number"]) == (
                shown.index, PAGE, DOCUMENT, 1)
            assert (record["seen_width"], record["seen_height"]) == (shown.seen.width, shown.seen.height)
            assert record["region"] == (shown.region.to_dict() if shown.region else None)
            with Image.open(record["path"]) as stored_image:
                assert np.array_equal(np.asarray(stored_image.convert("RGB")),
                                      np.asarray(render_seen(page, shown.seen)))
    assert runs[0]["images"][0]["path"] == runs[1]["images"][0]["path"]


def test_an_existing_image_file_is_not_rewritten(page, tmp_path):
    path = tmp_path / "runs.jsonl"
    append_trajectory(make_run(page, Box(60, 180, 480, 330)), lambda _: page, path)
    before = {file.name: file.stat().st_mtime_ns for file in (tmp_path / "images").iterdir()}
    append_trajectory(make_run(page, Box(60, 180, 480, 330)), lambda _: page, path)
    assert {file.name: file.stat().st_mtime_ns for file in (tmp_path / "images").iterdir()} == before
    assert not [file for file in (tmp_path / "images").iterdir() if file.name.startswith(".")]


def test_each_page_is_loaded_once_per_run(page, tmp_path):
    calls: list[str] = []
    append_trajectory(make_run(page, Box(60, 180, 480, 330)), lambda pid: calls.append(pid) or page,
                      tmp_path / "runs.jsonl")
    assert calls == [PAGE]


def test_a_malformed_line_is_named(page, tmp_path):
    path = tmp_path / "runs.jsonl"
    append_trajectory(make_run(page, Box(60, 180, 480, 330)), lambda _: page, path)
    with path.open("a", encoding="utf-8") as file:
        file.write('{"question": "cut off\n')
    runs = read_trajectories(path)
    assert next(runs)["question"] == "What was revenue in 2023?"
    with pytest.raises(BadInputError, match=rf"trajectory file {path} line 2 is not valid JSON"):
        next(runs)


def test_a_line_cut_off_by_a_crash_does_not_swallow_the_next_run(page, tmp_path):
    path = tmp_path / "runs.jsonl"
    append_trajectory(make_run(page, Box(60, 180, 480, 330)), lambda _: page, path)
    with path.open("a", encoding="utf-8") as file:
        file.write('{"id": "half-written", "quest')  # no newline: the process died mid-line
    append_trajectory(make_run(page, Box(60, 180, 480, 330)), lambda _: page, path, run_id="after")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and lines[1] == '{"id": "half-written", "quest'
    assert json.loads(lines[2])["id"] == "after"
    with pytest.raises(BadInputError, match="line 2"):
        list(read_trajectories(path))


@pytest.mark.parametrize("line", ['["a list"]', '{"messages": [], "images": "x"}', '{"messages": [], "images": [{}]}'])
def test_a_line_that_is_not_a_run_is_named(tmp_path, line):
    path = tmp_path / "runs.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=rf"trajectory file {path} line 1 "):
        list(read_trajectories(path))


def test_missing_files_are_named(page, tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        list(read_trajectories(tmp_path / "none.jsonl"))
    path = tmp_path / "runs.jsonl"
    append_trajectory(make_run(page, Box(60, 180, 480, 330)), lambda _: page, path)
    next((tmp_path / "images").iterdir()).unlink()
    with pytest.raises(NotFoundError, match=r"line 1 points at image images/[0-9a-f]{64}\.png"):
        list(read_trajectories(path))


def test_bad_arguments_are_refused_and_nothing_is_appended(page, tmp_path):
    path = tmp_path / "runs.jsonl"
    run = make_run(page, Box(60, 180, 480, 330))
    with pytest.raises(BadInputError, match="gold"):
        append_trajectory(run, lambda _: page, path, gold={"answer": "x"})
    with pytest.raises(BadInputError, match="gold pages"):
        append_trajectory(run, lambda _: page, path, gold={"answer": "x", "pages": PAGE})
    with pytest.raises(BadInputError, match="JSON"):
        append_trajectory(run, lambda _: page, path, rewards={"judge": float("nan")})
    stray = RunResult(run.question, run.answer, run.status, run.message, run.evidence, run.steps, run.images[:1],
                      run.messages, run.protocol, run.policy)
    with pytest.raises(BadInputError, match="names image 2"):
        append_trajectory(stray, lambda _: page, path)
    assert not path.exists()


text = st.text(st.characters(exclude_categories=("Cs",)) | st.sampled_from("\u2028\u2029\x85\r\n"),
               max_size=40)


@settings(max_examples=40, deadline=None)
@given(question=text, answer=st.none() | text, turns=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), text),
                                                               max_size=4))
def test_text_only_runs_round_trip(question, answer, turns):
    messages = tuple({"role": role, "content": content} for role, content in turns)
    run = RunResult(question, answer, "answered" if answer is not None else "no_answer", "m", (), (), (), messages,
                    "vrag", "p")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runs.jsonl"
        append_trajectory(run, lambda _: pytest.fail("no image to load"), path, run_id="a")
        append_trajectory(run, lambda _: pytest.fail("no image to load"), path, run_id="b")
        assert len(path.read_text(encoding="utf-8").splitlines()) == 2
        runs = list(read_trajectories(path))
    assert [r["id"] for r in runs] == ["a", "b"]
    for read in runs:
        assert (read["question"], read["answer"], read["images"]) == (question, answer, [])
        assert read["messages"] == [dict(message) for message in messages]
