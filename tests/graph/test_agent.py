"""The graph driven over HTTP by a scripted policy (`pagelens serve policy --backend replay`): routing, bbox
mapping, evidence links, the turn limit, retries, the image limit, timeouts and checkpoint resume."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from pagelens.errors import PolicyError
from pagelens.graph.build import Agent, sqlite_checkpointer
from pagelens.graph.policies.openai_chat import OpenAIChatPolicy
from pagelens.graph.policies.interface import Completion, PolicyRequest
from pagelens.graph.settings import AgentSettings, PolicySettings
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.boxes import Box
from pagelens.tools.regions import SeenImage, from_page_box, smart_resize

NORTHWIND = "northwind_annual_report_2023.pdf"
# The Europe row of Table 1 on page 2, in page pixels at 144 dpi (its text lines' union).
EUROPE_ROW = Box(170, 366, 1056, 384)


def requests_of(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def images_in(request):
    return [part["image_url"]["url"] for message in request["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part.get("type") == "image_url"]


def texts_in(message):
    content = message["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


@pytest.fixture
def store(sample_copy):
    with PageStore(StoreSettings(home=sample_copy)) as opened:
        yield opened


def http_agent(store, url, checkpointer=None, **settings):
    policy = OpenAIChatPolicy(PolicySettings(url=url, retries=0, request_timeout=30))
    return Agent(store, policy, AgentSettings(**settings), checkpointer=checkpointer)


def seen_box_of(store, page_box: Box) -> list[int]:
    page = next(p for p in store.pages() if p.document == NORTHWIND and p.page_number == 2)
    seen = SeenImage.whole_page(page.page_id, page.width, page.height, *smart_resize(page.width, page.height))
    box = from_page_box(page_box, seen)
    return [round(box.x1), round(box.y1), round(box.x2), round(box.y2)]


def test_search_crop_evidence_answer_over_http(store, policy_server):
    bbox = seen_box_of(store, EUROPE_ROW)
    url, record = policy_server([
        "<think>Find the table.</think><search>quarterly revenue by region table</search>",
        f"<think>Zoom on Europe.</think><bbox>{bbox}</bbox>",
        "<evidence>\n[1]: the quarterly revenue table\n[2]: Europe's row; Q3 is 4.2\n</evidence><answer>4.2</answer>",
    ])
    result = http_agent(store, url, crop_padding=0).ask("What was Northwind's revenue in Europe in Q3 2023?")

    assert (result.status, result.answer) == ("answered", "4.2")
    assert [s.kind for s in result.steps] == ["observe", "search", "observe", "crop", "observe", "evidence", "answer"]
    page, crop = result.images
    assert (page.document, page.page_number, page.is_crop) == (NORTHWIND, 2, False)
    # The bbox the model wrote in the pixels it saw maps back to the Europe row on the page (rounding: < 2 px).
    assert crop.is_crop and crop.page_id == page.page_id
    assert all(abs(a - b) < 2 for a, b in zip(crop.region.box.as_list(), EUROPE_ROW.as_list()))
    # Evidence [1] cites the page, [2] the region.
    assert [(e.image, e.page_id, e.region) for e in result.evidence] == [
        (1, page.page_id, None), (2, page.page_id, crop.region)]

    sent = requests_of(record)
    assert len(sent) == 3
    assert [len(images_in(r)) for r in sent] == [0, 1, 2]
    assert all(m["role"] in ("user", "assistant") for r in sent for m in r["messages"])
    assert "What was Northwind's revenue in Europe in Q3 2023?" in texts_in(sent[0]["messages"][0])
    # Images go as PNG data URLs at exactly the recorded seen size (SPEC §1, §7).
    for url_text, shown in zip(images_in(sent[2]), result.images):
        header, data = url_text.split(",", 1)
        assert header == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (shown.seen.width, shown.seen.height)


def test_turn_limit_forces_one_answer_call_then_ends_with_no_answer(store, policy_server):
    url, record = policy_server(["I am not sure what to do."] * 10)
    result = http_agent(store, url, max_turns=3).ask("What colour are the tags?")

    assert result.status == "no_answer" and result.answer is None
    assert "3 turn(s)" in result.message and "--max-turns" in result.message
    sent = requests_of(record)
    assert len(sent) == 4  # N action turns, then one call told to answer now
    assert "invalid" in texts_in(sent[1]["messages"][-1])
    assert "You have used all 3 turns" in texts_in(sent[3]["messages"][-1])
    # The run marks the retry message after each rejected turn (training keeps those turns out of its loss); the
    # endpoint is sent role and content only.
    users = [m for m in result.messages if m["role"] == "user"]
    assert [m.get("retry", False) for m in users] == [False, True, True, True, False]
    assert all(set(m) == {"role", "content"} for r in sent for m in r["messages"])


def test_a_box_outside_the_image_is_a_retry_that_counts(store, policy_server):
    url, record = policy_server([
        "<search>invoice total due</search>",
        "<bbox>[5000, 5000, 6000, 6000]</bbox>",
        "<evidence>\n[1]: no relevant information\n</evidence><answer>insufficient to answer</answer>",
    ])
    result = http_agent(store, url).ask("What is the total due?")
    assert result.status == "insufficient" and result.evidence == ()
    retry = texts_in(requests_of(record)[2]["messages"][-1])
    assert "previous action was invalid" in retry and "lies outside the image" in retry
    assert [m.get("retry", False) for m in result.messages if m["role"] == "user"] == [False, False, True]
    assert [s.kind for s in result.steps].count("observe") == 3


def test_only_the_most_recent_images_are_sent(store, policy_server):
    url, record = policy_server([
        "<search>revenue by region</search>", "<search>maintenance intervals</search>", "<answer>done</answer>"])
    http_agent(store, url, max_images=1).ask("Anything?")
    last = requests_of(record)[-1]
    assert len(images_in(last)) == 1
    assert any("[image 1 is no longer shown]" in texts_in(m) for m in last["messages"])


def test_a_thread_continues_from_its_checkpoint(store, policy_server, tmp_path):
    url, record = policy_server([
        "<search>eelgrass cover by survey year</search>",
        "<evidence>\n[1]: the cover chart\n</evidence><answer>34%</answer>",
        "<evidence>\n[1]: the same chart, 2023 bar\n</evidence><answer>38%</answer>",
    ])
    first = http_agent(store, url, checkpointer=sqlite_checkpointer(tmp_path / "threads")).ask(
        "What cover does the chart show for 2022?", thread_id="t1")
    # A new agent (as a new process would) reads the thread back from SQLite.
    second = http_agent(store, url, checkpointer=sqlite_checkpointer(tmp_path / "threads")).ask(
        "And for 2023?", thread_id="t1")

    assert (first.answer, second.answer) == ("34%", "38%")
    follow_up = requests_of(record)[2]["messages"]
    assert "What cover does the chart show for 2022?" in texts_in(follow_up[0])
    assert "And for 2023?" in texts_in(follow_up[-1]) and len(images_in({"messages": follow_up})) == 1
    assert second.evidence[0].page_id == first.images[0].page_id and second.thread_id == "t1"
    assert [s.kind for s in second.steps] == ["observe", "evidence", "answer"]


class SlowPolicy:
    """Stands in for a model that takes a while (no model can run here at that speed on purpose)."""

    name = "slow"

    def complete(self, request: PolicyRequest) -> Completion:
        time.sleep(0.3)
        return Completion("<search>revenue</search>")


def test_a_run_past_its_deadline_ends_with_a_timeout_result(store):
    started = time.perf_counter()
    result = Agent(store, SlowPolicy(), AgentSettings(run_timeout=0.5, max_turns=20)).ask("Revenue?")
    assert result.status == "timeout" and result.answer is None and "limit" in result.message
    assert time.perf_counter() - started < 3


def test_an_unreachable_endpoint_is_one_clear_error_naming_it(store):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(PolicyError, match=f"the policy endpoint {url} is not reachable"):
        http_agent(store, url).ask("Revenue?")


@pytest.mark.slow
def test_the_tiny_random_qwen_runs_the_graph_end_to_end_within_the_limit(store, policy_server, tiny_qwen):
    url, record = policy_server(model=tiny_qwen)
    policy = OpenAIChatPolicy(PolicySettings(url=url, max_tokens=24, temperature=1.0, retries=0))
    result = Agent(store, policy, AgentSettings(max_turns=3)).ask("What colour are the tags?")
    # Random weights write random text: whatever it wrote, the run ends cleanly within N + 1 calls.
    assert result.status in ("answered", "insufficient", "no_answer")
    assert 1 <= len(requests_of(record)) <= 4
    assert (result.answer is None) == (result.status == "no_answer")


EVISRAG_REPLY = ("<observe>The pages.</observe>\n<evidence>\n[1]: {finding}\n</evidence>\n"
                 "<think>So.</think>\n<answer>{answer}</answer>")


def test_evisrag_concatenation_sends_one_pasted_image_citing_its_pages(store, policy_server):
    url, record = policy_server([EVISRAG_REPLY.format(finding="the revenue table", answer="4.2")])
    result = http_agent(store, url, protocol="evisrag", evisrag_pages=3, single_image="horizontal").ask(
        "What was Northwind's revenue in Europe in Q3 2023?")
    (sent,) = requests_of(record)
    (pasted,) = images_in(sent)
    width, height = Image.open(io.BytesIO(base64.b64decode(pasted.split(",", 1)[1]))).size
    assert width > 2 * height and width % 28 == 0 and height % 28 == 0  # three pages side by side, Qwen-sized
    assert "The 1 images after this message" in texts_in(sent["messages"][0])
    # The model saw one image: its [1] stands for every page pasted into it (SPEC §6).
    assert [e.image for e in result.evidence] == [1, 2, 3] and result.answer == "4.2"


def test_evisrag_weighted_selection_keeps_the_most_confident_page_answer(store, policy_server):
    texts = [EVISRAG_REPLY.format(finding="not this", answer="wrong"),
             EVISRAG_REPLY.format(finding="Europe Q3 is 4.2", answer="4.2"),
             EVISRAG_REPLY.format(finding="nothing", answer="also wrong")]
    # Per-word log-probabilities: the middle page's answer is by far the most confident.
    replies = [{"text": text, "logprobs": [logprob] * len(text.split())}
               for text, logprob in zip(texts, [-3.0, -0.01, -2.0])]
    url, record = policy_server(replies)
    result = http_agent(store, url, protocol="evisrag", evisrag_pages=3, single_image="weighted").ask(
        "What was Northwind's revenue in Europe in Q3 2023?")
    sent = requests_of(record)
    assert len(sent) == 3 and all(r["logprobs"] for r in sent) and all(len(images_in(r)) == 1 for r in sent)
    assert result.answer == "4.2"
    assert [(e.image, e.page_id) for e in result.evidence] == [(2, result.images[1].page_id)]
    weighed = next(s for s in result.steps if s.kind == "observe").detail["weighted"]
    assert max(weighed, key=lambda w: w["score"])["image"] == 2


@pytest.mark.slow
def test_uploaded_pages_are_shown_read_and_cited_but_never_stored(store):
    from pagelens.graph.policies.extractive import ExtractivePolicy
    from pagelens.tools.imagefiles import load_page_image

    invoice = next(p for p in store.pages() if p.document == "invoice_cedar_finch_scan.pdf")
    pages_before = len(store.pages())
    agent = Agent(store, ExtractivePolicy())
    result = agent.ask("What is the total due on invoice INV-2024-0173?",
                       uploads=[("my-invoice.jpg", load_page_image(invoice.image_path))])
    upload = result.images[0]
    assert upload.page_id.startswith("upload-") and upload.document == "my-invoice.jpg"
    assert "3,623.40" in result.answer
    assert {e.page_id for e in result.evidence} == {upload.page_id}
    assert not agent.context.pages.available(upload.page_id) and len(store.pages()) == pages_before
