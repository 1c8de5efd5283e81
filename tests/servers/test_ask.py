"""`pagelens ask` as a user runs it: real subprocesses on a copy of the indexed sample store."""

from __future__ import annotations

import json

from PIL import Image

QUESTION = "What torque is specified for the KX-40 blade root bolts?"


def test_ask_json_has_the_answer_its_citations_and_steps(cli, sample_copy):
    data = json.loads(cli("ask", QUESTION, "--json", home=sample_copy).stdout)
    assert {"answer", "evidence", "steps", "protocol", "policy"} <= set(data)
    assert "1850 Nm" in data["answer"] and "extractive" in data["answer"]
    assert (data["protocol"], data["policy"], data["status"]) == ("pagelens", "extractive", "answered")
    region = data["evidence"][-1]
    assert set(region) == {"image", "page_id", "document", "page_number", "box", "text"}
    assert region["document"] == "kx40_maintenance_manual.pdf" and region["page_number"] == 2
    x1, y1, x2, y2 = region["box"]
    assert 0 <= x1 < x2 and 0 <= y1 < y2
    assert data["evidence"][0]["box"] is None  # the whole page
    assert [s["kind"] for s in data["steps"]][:2] == ["observe", "search"]


def test_ask_writes_a_trace_and_appends_trajectories(cli, sample_copy, tmp_path):
    trace, runs = tmp_path / "out" / "trace.html", tmp_path / "runs" / "runs.jsonl"
    for _ in range(2):
        cli("ask", QUESTION, "--trace", str(trace), "--trajectory", str(runs), home=sample_copy)
    html = trace.read_text()
    assert html.count('class="shown"') == 2 and "1850 Nm" in html
    lines = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["question"] == QUESTION
    images = [part["image_url"]["url"] for m in lines[0]["messages"] if isinstance(m["content"], list)
              for part in m["content"] if part["type"] == "image_url"]
    assert len(images) == 2
    for relative, record in zip(images, lines[0]["images"]):
        with Image.open(runs.parent / relative) as image:
            assert image.size == (record["seen_width"], record["seen_height"])


def test_thread_continues_a_conversation(cli, sample_copy):
    first = json.loads(cli("ask", QUESTION, "--thread", "maint", "--json", home=sample_copy).stdout)
    second = json.loads(cli("ask", "What torque for the tower flange bolts?", "--thread", "maint", "--json",
                            home=sample_copy).stdout)
    assert first["thread_id"] == second["thread_id"] == "maint"
    # The follow-up keeps the first question's images and numbers its own after them.
    assert len(second["images"]) > len(first["images"])
    assert second["images"][: len(first["images"])] == first["images"]
    assert "2400 Nm" in second["answer"]


def test_no_answer_exits_3_with_the_reason(cli, sample_copy, policy_server):
    url, _ = policy_server(["hmm"] * 5)
    proc = cli("ask", "Anything?", "--policy", url, "--max-turns", "2", home=sample_copy, check=False)
    assert proc.returncode == 3
    assert "No answer: no answer: the policy used its 2 turn(s)" not in proc.stdout
    assert proc.stdout.startswith("No answer:") and "--max-turns" in proc.stdout


def test_an_endpoint_that_is_down_is_named(cli, sample_copy):
    proc = cli("ask", "Anything?", "--policy", "http://127.0.0.1:9/v1", home=sample_copy, check=False)
    assert proc.returncode == 2
    assert "the policy endpoint http://127.0.0.1:9/v1 is not reachable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_asking_an_empty_store_says_to_index_first(cli, tmp_path):
    proc = cli("ask", "Anything?", home=tmp_path / "empty", check=False)
    assert proc.returncode == 2 and "has no pages; index some first" in proc.stderr
