"""The agent API as a client sees it: real `pagelens serve api` subprocesses driven by the official openai client.

Two servers per module, each on its own copy of the indexed sample store: `api` runs the extractive policy behind
an API key; `limited` has no key, allows two runs at once and no queue, and asks a stub policy endpoint in this
process that answers every turn with a search after a delay (standing in for a slow model) and records requests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pypdfium2
import pytest
from PIL import Image

from pagelens.servers.cli.demo import load_questions, sample_folder

KEY = "test-key"
QUESTIONS = {q["id"]: q for q in load_questions()}
# The demo questions the extractive policy answers correctly (README: 16 of 20).
ANSWERED = [q for q in QUESTIONS.values() if q["id"] not in ("q01", "q16", "q17", "q20")]
POLICY_DELAY = 0.3  # seconds the stub policy takes per turn
FULL_RUN_CALLS = 7  # max_turns 6 plus the answer-now call: what a run that never answers costs


class ApiServer:
    """`pagelens serve api` in a subprocess (cwd `folder`, where a pagelens.toml may be) on a free loopback port;
    `wait()` returns its base URL once /healthz answers."""

    def __init__(self, folder: Path, home: Path, **env: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url, self.log = f"http://127.0.0.1:{port}", folder / f"api-{port}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PAGELENS_")}
        with open(self.log, "w") as out:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen([sys.executable, "-m", "pagelens", "serve", "api", "--port", str(port)],
                                         cwd=folder, stdout=out, stderr=out,
                                         env={**clean, "PAGELENS_HOME": str(home), **env})

    def wait(self) -> str:
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the agent API exited {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.url}/healthz", timeout=1)
                return self.url
            if time.monotonic() > deadline:
                pytest.fail(f"the agent API did not answer in 120 s:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> str:
        """Stop the server; returns its log."""
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.log.read_text()


class StubPolicy(BaseHTTPRequestHandler):
    """A slow OpenAI-compatible policy: every turn searches; HTTP 500 for a question saying FAIL-NOW, and from the
    second turn on for one saying FAIL-LATER."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)  # type: ignore[attr-defined]
        text = json.dumps(body)
        if "FAIL-NOW" in text or "FAIL-LATER" in text and len(body["messages"]) > 1:
            status, reply = 500, {"error": {"message": "the stub model crashed", "type": "server_error"}}
        else:
            time.sleep(POLICY_DELAY)
            status, reply = 200, {
                "id": "stub", "object": "chat.completion", "created": 0, "model": "stub",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "<search>revenue by region</search>"}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers(sample_home, tmp_path_factory) -> Iterator[dict]:
    """Both servers, started together: {"api": url, "limited": url, "policy": the stub's server, "api_home"}."""
    root = tmp_path_factory.mktemp("agent-api")
    stub = ThreadingHTTPServer(("127.0.0.1", 0), StubPolicy)
    stub.requests = []  # type: ignore[attr-defined]
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    (root / "api").mkdir()
    (root / "limited").mkdir()
    (root / "limited" / "pagelens.toml").write_text("[serving]\nmax_running = 2\nmax_queued = 0\n\n"
                                                    "[policy]\nretries = 0\n")
    homes = {name: shutil.copytree(sample_home, root / name / "store") for name in ("api", "limited")}
    # Both start before either is waited for: their start-ups (model and Milvus Lite loads) overlap.
    started = [ApiServer(root / "api", homes["api"], PAGELENS_API_KEY=KEY),
               ApiServer(root / "limited", homes["limited"], PAGELENS_POLICY_MODEL="stub",
                         PAGELENS_POLICY_URL=f"http://127.0.0.1:{stub.server_address[1]}/v1")]
    try:
        api, limited = (server.wait() for server in started)
        yield {"api": api, "limited": limited, "policy": stub, "api_home": homes["api"], "api_pid": started[0].proc.pid}
    finally:
        logs = [server.stop() for server in started]
    stub.shutdown()
    for log in logs:
        assert "Traceback" not in log, log
    stub.shutdown()


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def ask(question: str, *images: str) -> list[dict]:
    parts = [{"type": "text", "text": question}, *({"type": "image_url", "image_url": {"url": u}} for u in images)]
    return [{"role": "user", "content": parts}]


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def wait_idle(url: str) -> None:
    deadline = time.monotonic() + 30
    while (health := httpx.get(f"{url}/healthz").json())["running"] or health["queued"]:
        assert time.monotonic() < deadline, f"the server still holds a run: {health}"
        time.sleep(0.05)


# --- answers, streaming, auth, limits: the extractive policy ----------------------------------------------------


def test_models_auth_and_error_shape(servers):
    url = servers["api"]
    assert [m.id for m in client(url).models.list().data] == [
        "pagelens", "pagelens:pagelens", "pagelens:vrag", "pagelens:evisrag"]
    for key in ("", "wrong-key"):
        with pytest.raises(openai.AuthenticationError, match="PAGELENS_API_KEY"):
            client(url, key or "none").chat.completions.create(model="pagelens", messages=ask("Any?"))
    no_header = httpx.post(f"{url}/v1/chat/completions", json={"model": "pagelens", "messages": ask("Any?")})
    assert no_header.status_code == 401 and set(no_header.json()["error"]) == {"message", "type", "param", "code"}
    foreign = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}", "Origin": "http://evil.test"})
    assert foreign.status_code == 403 and "allowed_origins" in foreign.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="pagelens:evisrag") as missing:
        client(url).chat.completions.create(model="gpt-4o", messages=ask("Any?"))
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"


@pytest.mark.parametrize("qid", ["q03", "q08", "q14", "q19"])
def test_demo_questions_are_answered_with_citations(servers, qid):
    question = QUESTIONS[qid]
    reply = client(servers["api"]).chat.completions.create(model="pagelens", messages=ask(question["question"]))
    content = reply.choices[0].message.content
    answer, sources = content.split("\n\nSources:\n")
    assert question["answer"] in answer and reply.choices[0].finish_reason == "stop"
    assert f"{question['document']} p.{question['page']}, region [" in sources
    extra = reply.model_extra["pagelens"]
    assert extra["status"] == "answered" and extra["protocol"] == "pagelens" and extra["steps"] >= 5
    cited = [e for e in extra["evidence"] if e["box"] is not None]
    assert (cited[0]["document"], cited[0]["page_number"]) == (question["document"], question["page"])
    assert reply.usage.prompt_tokens == len(question["question"].split()) and extra["usage_unit"] == "words"
    assert reply.usage.completion_tokens == len(content.split())
    assert "turn 1: search" in reply.choices[0].message.model_extra["reasoning_content"]


def test_evisrag_model_and_history_context(servers):
    question = QUESTIONS["q11"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."}, *ask(question["question"])]
    reply = client(servers["api"]).chat.completions.create(model="pagelens:evisrag", messages=messages)
    assert question["answer"] in reply.choices[0].message.content
    assert reply.model_extra["pagelens"]["protocol"] == "evisrag"
    assert reply.usage.prompt_tokens == len(question["question"].split()) + 4  # and the context's 4 words


def test_streaming_reaches_stock_clients(servers):
    question = QUESTIONS["q05"]["question"]
    whole = client(servers["api"]).chat.completions.create(model="pagelens:vrag", messages=ask(question))
    chunks = list(client(servers["api"]).chat.completions.create(
        model="pagelens:vrag", messages=ask(question), stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content and "38.9" in content
    assert "Pages shown (this protocol cites none):" in content
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens and not chunks[-1].choices
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == "stop" and finish.model_extra["pagelens"]["status"] == "answered"
    # The raw stream: progress in reasoning_content, one line per step, closed by [DONE].
    with httpx.stream("POST", f"{servers['api']}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "pagelens", "messages": ask(question), "stream": True}, timeout=60) as raw:
        events = [line[len("data: "):] for line in raw.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    progress = [json.loads(e)["choices"][0]["delta"].get("reasoning_content") for e in events[:-1]]
    lines = [p for p in progress if p]
    assert lines[0].startswith("turn 1: search") and all(p.count("\n") == 1 for p in lines) and len(lines) >= 5


def test_request_images_are_pages_for_that_request(servers):
    pdf = pypdfium2.PdfDocument(sample_folder() / "northwind_annual_report_2023.pdf")
    page = pdf[3].render(scale=2).to_pil().convert("RGB")
    top = page.crop((0, 0, page.width, page.height * 2 // 5))  # down to the carbon-neutral sentence: less to OCR
    reply = client(servers["api"]).chat.completions.create(
        model="pagelens", messages=ask(QUESTIONS["q06"]["question"], png_url(top)))
    content = reply.choices[0].message.content
    assert "2027" in content and "upload-1 p.1, region [" in content
    assert all(e["page_id"].startswith("upload-") for e in reply.model_extra["pagelens"]["evidence"])


def test_bodies_images_and_messages_over_the_limits_are_refused(servers):
    api = client(servers["api"])
    with pytest.raises(openai.APIStatusError, match="max_body_bytes") as big:
        api.chat.completions.create(model="pagelens", messages=ask("x" * (33 * 1024 * 1024)))
    assert big.value.status_code == 413
    huge = png_url(Image.new("1", (8000, 6000)))  # 48M pixels, over the 40M default; a few KB as PNG
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].content\[1\].image_url.url is a 8000x6000 image"):
        api.chat.completions.create(model="pagelens", messages=ask("What is this?", huge))
    with pytest.raises(openai.BadRequestError, match="does not download images"):
        api.chat.completions.create(model="pagelens", messages=ask("What is this?", "https://example.com/p.png"))
    # Each image under the per-image cap, eight together far over the per-request one: refused from their headers,
    # before any is decoded (decoded, these 288M pixels took the server from 0.85 to a 4 GB peak).
    peak = _peak_memory(servers["api_pid"])
    square = png_url(Image.new("1", (6000, 6000)))  # a few KB as PNG, 108 MB decoded
    with pytest.raises(openai.BadRequestError, match=r"images up to messages\[0\].content\[2\].image_url.url hold "
                                                     r"72,000,000 pixels, over the 64,000,000-pixel limit"):
        api.chat.completions.create(model="pagelens", messages=ask("What is this?", *[square] * 8))
    assert _peak_memory(servers["api_pid"]) - peak < 50 * 1024 * 1024
    with pytest.raises(openai.BadRequestError, match="end with a user message"):
        api.chat.completions.create(model="pagelens", messages=[{"role": "assistant", "content": "Hi."}])


def _peak_memory(pid: int) -> int:
    """The process's peak resident memory so far, in bytes (Linux's VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def test_32_concurrent_requests_are_all_answered(servers):
    async def main() -> list[tuple[dict, str]]:
        picked = [ANSWERED[i % len(ANSWERED)] for i in range(32)]
        # Closed here, inside its loop: left to the garbage collector, the client's pooled connections were closed
        # later in another test's event loop, which failed that test's setup ("Event loop is closed").
        async with openai.AsyncOpenAI(base_url=f"{servers['api']}/v1", api_key=KEY, max_retries=0,
                                      timeout=120) as api:
            replies = await asyncio.gather(*(api.chat.completions.create(model="pagelens",
                                                                         messages=ask(q["question"]))
                                             for q in picked))
        return [(q, r.choices[0].message.content) for q, r in zip(picked, replies)]

    started = time.perf_counter()
    answered = asyncio.run(main())
    print(f"32 concurrent requests: {time.perf_counter() - started:.2f} s")
    assert [q["id"] for q, content in answered if q["answer"] not in content.split("\n\nSources:")[0]] == []


def test_a_store_that_cannot_be_served_is_one_sentence(servers, cli, tmp_path):
    empty = cli("serve", "api", home=tmp_path / "empty", check=False)
    assert empty.returncode == 2 and "has no pages; index some first" in empty.stderr
    held = cli("serve", "api", home=servers["api_home"], check=False)
    assert held.returncode == 2 and "is open in another process" in held.stderr and "pagelens serve api" in held.stderr
    assert "Traceback" not in empty.stderr + held.stderr


# --- a slow policy, two slots, no queue ----------------------------------------------------------------------------


def test_a_full_server_answers_429_with_retry_after(servers):
    url = servers["limited"]
    wait_idle(url)
    with contextlib.ExitStack() as holding:
        for _ in range(2):  # both running slots; no queue
            next(iter(holding.enter_context(
                client(url).chat.completions.create(model="pagelens", messages=ask("Revenue?"), stream=True))))
        with pytest.raises(openai.RateLimitError, match="max_running") as busy:
            client(url).chat.completions.create(model="pagelens", messages=ask("Revenue?"))
        assert int(busy.value.response.headers["Retry-After"]) >= 1


def test_a_client_that_disconnects_stops_its_run(servers):
    url, calls = servers["limited"], servers["policy"].requests
    wait_idle(url)
    before = len(calls)
    with client(url).chat.completions.create(model="pagelens", messages=ask("Revenue?"), stream=True) as stream:
        next(c for c in stream if c.choices and c.choices[0].delta.model_extra.get("reasoning_content"))
    wait_idle(url)  # the slot is given back
    assert 1 <= len(calls) - before <= 3 < FULL_RUN_CALLS  # stopped at its next step, not after its turns
    # A client waiting for a whole completion that gives up: the same.
    before = len(calls)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json={"model": "pagelens", "messages": ask("Revenue?")}, timeout=0.5)
    wait_idle(url)
    assert 1 <= len(calls) - before <= 3


def test_concurrent_runs_call_the_policy_in_parallel(servers):
    url, calls = servers["limited"], servers["policy"].requests
    wait_idle(url)
    before = len(calls)
    messages = [{"role": "user", "content": "Earlier context line."}, *ask("Revenue?")]
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: client(url).chat.completions.create(model="pagelens", messages=messages),
                                range(2)))
    elapsed = time.perf_counter() - started
    # One run alone spends FULL_RUN_CALLS * POLICY_DELAY (2.1 s) in the policy; two in series would take twice that.
    assert len(calls) - before == 2 * FULL_RUN_CALLS and elapsed < 1.6 * FULL_RUN_CALLS * POLICY_DELAY
    for reply in replies:  # the stub never answers: no answer, said so, and its tokens counted
        assert reply.choices[0].finish_reason == "stop" and reply.model_extra["pagelens"]["status"] == "no_answer"
        assert reply.choices[0].message.content.startswith("No answer: the policy used its 6 turn(s)")
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (100 * FULL_RUN_CALLS,
                                                                              5 * FULL_RUN_CALLS)
    assert calls[before]["messages"][0] == {"role": "user", "content": "Earlier context line."}


def test_without_a_key_the_host_must_name_this_server(servers):
    url = servers["limited"]
    assert httpx.get(f"{url}/v1/models").status_code == 200
    rebound = httpx.get(f"{url}/v1/models", headers={"Host": "attacker.test"})
    assert rebound.status_code == 421 and "PAGELENS_API_KEY" in rebound.json()["error"]["message"]


def test_a_failing_policy_endpoint_is_a_502(servers):
    url = servers["limited"]
    wait_idle(url)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError, match="answered HTTP 500") as failed:
            client(url).chat.completions.create(model="pagelens", messages=ask("FAIL-NOW please"), stream=stream)
        assert failed.value.status_code == 502 and failed.value.body["code"] == "policy_error"
    # Once the stream has begun, the error comes in it, and the openai client raises it there.
    stream = client(url).chat.completions.create(model="pagelens", messages=ask("FAIL-LATER please"), stream=True)
    with pytest.raises(openai.APIError, match="answered HTTP 500"):
        list(stream)


# --- the same validation as the policy server (servers.chat_request) ----------------------------------------------


@pytest.fixture(scope="module")
def replay(tmp_path_factory, pagelens_server) -> Iterator[str]:
    """A replay policy server, to send the agent API's requests to: its model is "replay"."""
    folder = tmp_path_factory.mktemp("replay")
    (folder / "script.json").write_text(json.dumps(["<answer>42</answer>"] * 4))
    with pagelens_server(folder, "policy", "--backend", "replay", "--script", "script.json") as url:
        yield url


def post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def part(kind: str, **fields: object) -> dict:
    return {"type": kind, **fields}


PNG = png_url(Image.new("RGB", (28, 28)))


@pytest.mark.parametrize("fields", [
    {"messages": []},
    {"messages": ["Revenue?"]},
    {"messages": [{"role": "tool", "content": "42"}, *ask("Revenue?")]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [part("input_audio", input_audio={})]}]},
    {"messages": [{"role": "user", "content": [part("text")]}]},
    {"messages": [{"role": "user", "content": [part("text", text="What?"), part("image_url", image_url=PNG)]}]},
    {"messages": [{"role": "assistant", "content": [part("image_url", image_url={"url": PNG})]}, *ask("Revenue?")]},
    {"messages": ask("What?", "https://example.com/p.png")},
    {"messages": ask("What?", "file:///etc/passwd")},
    {"messages": ask("What?", "data:image/png;base64,not base64!")},
    {"model": None},
    {"n": 2}, {"temperature": 5}, {"top_p": 0}, {"max_tokens": 0}, {"max_completion_tokens": 1.5}, {"stop": [""]},
    {"seed": "3"}, {"stream": "yes"}, {"stream_options": 3}, {"logprobs": "yes"}, {"top_logprobs": 2},
], ids=lambda fields: ",".join(fields))
def test_both_servers_refuse_a_bad_request_with_the_same_sentence(servers, replay, fields):
    agent, policy = (post(url, {"model": model, "messages": ask("Revenue?"), **fields})
                     for url, model in ((servers["api"], "pagelens"), (replay, "replay")))
    error = agent.json()["error"]
    assert agent.status_code == policy.status_code == 400 and agent.json() == policy.json()
    assert error["type"] == "invalid_request_error" and error["message"].startswith(error["param"])


def test_both_servers_accept_the_same_request_and_keep_their_own_rules(servers, replay):
    body = {"messages": [{"role": "developer", "content": "Be brief."}, *ask("What was Northwind's revenue?", PNG)],
            "max_completion_tokens": 64, "temperature": 0, "top_p": 1, "stop": "\n\n", "seed": 1, "n": 1,
            "stream_options": None, "logprobs": None, "top_logprobs": 0, "user": "fields no server reads pass"}
    assert post(servers["api"], {"model": "pagelens", **body}).status_code == 200
    assert post(replay, {"model": "replay", **body}).status_code == 200
    # The agent API's own rule: the last message is the question; a policy may be asked to go on from any turn.
    ends_with_reply = {**body, "messages": [*body["messages"], {"role": "assistant", "content": "It was"}]}
    refused = post(servers["api"], {"model": "pagelens", **ends_with_reply})
    assert refused.status_code == 400 and refused.json()["error"]["message"] == (
        "messages ends with a message of role 'assistant'; end with a user message holding the question.")
    assert post(replay, {"model": "replay", **ends_with_reply}).status_code == 200
    # The policy server's own field, vLLM's repetition_penalty: checked there, a field the agent API does not read.
    assert post(replay, {"model": "replay", **body, "repetition_penalty": 0}).json()["error"]["message"] == (
        "repetition_penalty is 0; use a number above 0 up to 10.")
    assert post(servers["api"], {"model": "pagelens", **body, "repetition_penalty": 0}).status_code == 200
