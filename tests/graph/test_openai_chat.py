"""The OpenAI-compatible policy's retries and deadline, against real HTTP servers on loopback: one that answers
from a list of statuses, and one that accepts connections and never answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pagelens.errors import PolicyError
from pagelens.graph.policies.openai_chat import OpenAIChatPolicy
from pagelens.graph.policies.interface import PolicyRequest
from pagelens.graph.settings import PolicySettings

REPLY = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]}


def request(timeout: float | None = None) -> PolicyRequest:
    return PolicyRequest(question="q", protocol="pagelens", images=(), answer_now=False, timeout=timeout,
                         render_messages=lambda: [{"role": "user", "content": "q"}])


@contextmanager
def answering(statuses: list[int]) -> Iterator[tuple[str, list[float]]]:
    """An endpoint answering each chat call with the next status (200: a reply; the last one repeats); yields its
    URL and when each call came."""
    arrivals: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            arrivals.append(time.monotonic())
            status = statuses[min(len(arrivals), len(statuses)) - 1]
            body = json.dumps(REPLY if status == 200 else {"error": {"message": f"status {status}"}}).encode()
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0.2")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", arrivals
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent() -> Iterator[tuple[str, list[float]]]:
    """An endpoint that accepts connections and never answers (for 30 s at most); yields its URL and arrivals."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    arrivals: list[float] = []
    stop = threading.Event()

    def hold() -> None:
        held, ends = [], time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < ends:
            with suppress(TimeoutError):
                held.append(listener.accept()[0])
                arrivals.append(time.monotonic())
        for connection in held:
            connection.close()
        listener.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", arrivals
    finally:
        stop.set()
        thread.join()


def test_failures_worth_retrying_are_retried_with_backoff():
    with answering([500, 429, 200]) as (url, arrivals):
        completion = OpenAIChatPolicy(PolicySettings(url=url, model="m")).complete(request(timeout=30))
    assert completion.text == "ok" and len(arrivals) == 3
    assert 0.3 <= arrivals[1] - arrivals[0] <= 0.9  # the first backoff: 0.5 s less up to a quarter
    assert 0.15 <= arrivals[2] - arrivals[1] <= 0.6  # the server's Retry-After: 0.2 s
    with answering([400]) as (url, arrivals), pytest.raises(PolicyError, match="answered HTTP 400: status 400"):
        OpenAIChatPolicy(PolicySettings(url=url, model="m")).complete(request())
    assert len(arrivals) == 1  # the request itself is wrong: asking again would not help


def test_retries_stop_at_the_deadline_and_the_failure_stands():
    with answering([503]) as (url, arrivals):
        started = time.monotonic()
        with pytest.raises(PolicyError, match="answered HTTP 503"):
            OpenAIChatPolicy(PolicySettings(url=url, model="m", retries=10)).complete(request(timeout=3.0))
    # Backoffs of 0.5 and 1 s leave the third attempt well inside the deadline (at about 1.5 s, however slow the
    # machine); the next backoff, 2 s, would end past it, so it is not waited for and the run ends at once.
    assert time.monotonic() - started < 3.0 and len(arrivals) == 3


def test_every_request_shares_the_deadline():
    for settings in ({"model": "m"}, {}):  # the chat call alone, or the model look-up first
        with silent() as (url, arrivals):
            policy = OpenAIChatPolicy(PolicySettings(url=url, **settings))
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                policy.complete(request(timeout=1.5))
            assert 1.4 < time.monotonic() - started < 2.0 and len(arrivals) == 1
            assert policy.name == ("m@" + url if settings else url)  # naming it asks the endpoint nothing
    with silent() as (url, arrivals):
        policy = OpenAIChatPolicy(PolicySettings(url=url, model="m", request_timeout=0.5, retries=2))
        with pytest.raises(PolicyError, match=r"did not answer within 0.5 s \(2 retries\)"):
            policy.complete(request())  # no deadline: each attempt has its own timeout
    assert len(arrivals) == 3
