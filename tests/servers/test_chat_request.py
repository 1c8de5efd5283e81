"""The one chat-completions request model both servers validate with, offline: what it accepts, the sentence it
refuses with, and what each server makes of a valid request. tests/servers/test_agent_api.py sends the same bad
requests to both servers over HTTP."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from pagelens.servers.api.request import AgentCompletionRequest, parse_chat_request
from pagelens.servers.chat_request import ChatCompletionRequest, ChatMessage, parse_request, read_messages
from pagelens.servers.limits import ApiError
from pagelens.servers.policy.server import PolicyCompletionRequest, SamplingParams
from pagelens.servers.settings import ServingSettings


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def refusal(model: type[ChatCompletionRequest], body: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_request(model, body)
    assert caught.value.status == 400 and caught.value.kind == "invalid_request_error"
    return caught.value


@pytest.mark.parametrize(("body", "param", "message"), [
    ([], None, "the request body is not a JSON object; send a chat-completions request."),
    ({"messages": [{"role": "user", "content": "q"}]}, "model", "model is missing; send the model's name, as "
                                                                "GET /v1/models lists it."),
    ({"model": "m", "messages": []}, "messages", "messages is []; use a non-empty list of {'role': ..., "
                                                 "'content': ...} messages."),
    # a list of parts: the bad part is named, not the union's "not a string" branch
    ({"model": "m", "messages": [{"role": "user", "content": ["q", {"type": "audio"}]}]},
     "messages[0].content[1].type", "messages[0].content[1].type is 'audio'; use 'text' or 'image_url'."),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]",
     "messages[0].content[0] has type 'image_url' but no image_url field; send {'type': 'image_url', "
     "'image_url': {'url': 'data:image/png;base64,...'}}."),
    ({"model": "m", "messages": [{"role": "system", "content": [image("data:x")]}]}, "messages[0]",
     "messages[0] holds an image in a message of role 'system'; send images in user messages."),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}], "seed": True}, "seed",
     "seed is True; use a whole number."),  # strict: no bool for an int, no "3" for 3
    ({"model": "m", "messages": [{"role": "user", "content": "q" * 100}], "stop": 3}, "stop",
     "stop is 3; use a non-empty string or a list of them."),
    ({"model": "m", "messages": [{"role": "user", "content": "q" * 100}], "top_p": 0}, "top_p",
     "top_p is 0; use a number above 0 up to 1."),
])
def test_a_bad_request_is_one_sentence_naming_the_field_for_both_servers(body, param, message):
    for model in (AgentCompletionRequest, PolicyCompletionRequest):
        error = refusal(model, body)
        assert (error.param, error.message) == (param, message)


def test_long_values_are_shortened_in_the_sentence():
    error = refusal(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "q"}],
                                            "seed": "9" * 500})
    assert error.message == f"seed is '{'9' * 56}...; use a whole number."


def test_the_policy_server_reads_sampling_and_vllm_repetition_penalty():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 9, "max_completion_tokens": 5,
            "temperature": 0, "stop": "END", "seed": 4, "repetition_penalty": 1.1, "frequency_penalty": 0.5}
    assert parse_request(PolicyCompletionRequest, body).params == SamplingParams(
        max_tokens=5, temperature=0.0, top_p=1.0, seed=4, stop=("END",), repetition_penalty=1.1)
    nulls = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": None, "stop": None,
             "logprobs": None, "stream": None}  # null is a field left out, as the openai client sends logprobs=None
    assert parse_request(PolicyCompletionRequest, nulls).params == SamplingParams()
    assert refusal(PolicyCompletionRequest, {**body, "repetition_penalty": 11}).param == "repetition_penalty"


def test_messages_keep_their_parts_in_order_with_images_decoded():
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "Which?"}, image(png(30, 20))]}]}
    request = parse_request(ChatCompletionRequest, body)
    assert request.stream and request.include_usage
    system, assistant, user = read_messages(request, ServingSettings())
    assert system == ChatMessage("system", ("Be brief.",)) and assistant == ChatMessage("assistant", ())
    assert user.parts[0] == "Which?" and user.parts[1].size == (30, 20)


def test_images_over_the_request_cap_are_refused_before_any_is_decoded():
    body = {"model": "m", "messages": [{"role": "user", "content": [image(png(40, 40)), image("data:image/png;base64,"
                                                                                           "iVBORw0KGgo=")]}]}
    error = pytest.raises(ApiError, read_messages, parse_request(ChatCompletionRequest, body),
                          ServingSettings(max_request_pixels=1000)).value
    assert error.param == "messages[0].content[0].image_url.url" and error.code == "images_too_large"


def test_the_agent_api_takes_the_last_user_message_as_the_question():
    body = {"model": "pagelens:vrag", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": [image(png(30, 20))]},
        {"role": "assistant", "content": "Which page?"},
        {"role": "user", "content": [image(png(10, 10)), {"type": "text", "text": " Total? "}]}]}
    chat = parse_chat_request(body, ServingSettings())
    assert (chat.protocol, chat.question) == ("vrag", "Total?")
    assert chat.history == ({"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Which page?"})
    assert [(name, image.size) for name, image in chat.uploads] == [("upload-1", (30, 20)), ("upload-2", (10, 10))]
    with pytest.raises(ApiError, match="does not exist here") as unknown:
        parse_chat_request({**body, "model": "gpt-4o"}, ServingSettings())
    assert unknown.value.status == 404
    for last, says in [({"role": "assistant", "content": "x"}, "ends with a message of role 'assistant'"),
                       ({"role": "user", "content": [image(png(10, 10))]}, "ends with a user message without text")]:
        assert says in refusal(AgentCompletionRequest, {**body, "messages": [last]}).message
