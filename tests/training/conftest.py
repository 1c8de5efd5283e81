"""Trajectory files in the SPEC §2c layout, written by hand so tests control every field."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

INSTRUCTION = "Answer the question by searching the pages, then answer with evidence.\n\nQuestion: {question}"


def _image(folder: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    data = buffer.getvalue()
    name = f"images/{hashlib.sha256(data).hexdigest()}.png"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return name


def _make_run(folder: Path, question: str, answer: str | None, *, number: int = 0, gold: str | None = None,
             rewards: dict | None = None) -> dict:
    """One pagelens-protocol run: search → page image → bbox → crop image → evidence and answer."""
    page = _image(folder, (number * 40 % 256, 200, 120), (532, 700))
    crop = _image(folder, (30, number * 70 % 256, 90), (1008, 224))
    final = (f"<evidence>\n[1]: the page\n[2]: {answer}\n</evidence><answer>{answer}</answer>" if answer is not None
             else "<think>still looking</think><search>more</search>")
    run = {
        "id": f"run-{number}",
        "question": question,
        "protocol": "pagelens",
        "policy": "extractive",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": INSTRUCTION.format(question=question)}]},
            {"role": "assistant", "content": f"<think>I need a page.</think><search>{question}</search>"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": page}}]},
            {"role": "assistant", "content": "<think>Zoom in.</think><bbox>[10, 20, 300, 90]</bbox>"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": crop}}]},
            {"role": "assistant", "content": final},
        ],
        "images": [
            {"index": 1, "page_id": "abc-p1", "document": "a.pdf", "page_number": 1, "seen_width": 532,
             "seen_height": 700, "region": None, "path": page},
            {"index": 2, "page_id": "abc-p1", "document": "a.pdf", "page_number": 1, "seen_width": 1008,
             "seen_height": 224, "region": {"page_id": "abc-p1", "box": [1, 2, 3, 4], "normalized": [0, 0, 1, 1]},
             "path": crop},
        ],
        "answer": answer,
        "status": "answered" if answer is not None else "no_answer",
        "message": "",
        "evidence": [],
    }
    if gold is not None:
        run["gold"] = {"answer": gold, "pages": ["abc-p1"]}
    if rewards is not None:
        run["rewards"] = rewards
    return run


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    """The folder of the trajectory file the fixtures below write."""
    return tmp_path / "runs"


@pytest.fixture
def make_run(runs_dir):
    """`make_run(question, answer, number=, gold=, rewards=)`: a run dict whose images are written to runs_dir."""
    return lambda question, answer, **kwargs: _make_run(runs_dir, question, answer, **kwargs)


@pytest.fixture
def write_runs(runs_dir):
    """`write_runs(runs)` appends trajectory lines (dicts, or raw strings) to runs_dir/runs.jsonl; returns its path."""

    def write(runs: list[dict | str]) -> Path:
        path = runs_dir / "runs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            for run in runs:
                out.write((run if isinstance(run, str) else json.dumps(run)) + "\n")
        return path

    return write
