"""Shared fixtures: real PDFs, the bundled sample corpus, and real stores in temporary folders."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALWORLD = REPO / "tests" / "data" / "realworld"
SAMPLE = REPO / "servers" / "sample"
FIELD = REPO / "tests" / "data" / "field"


@pytest.fixture(scope="session")
def realworld() -> Path:
    return REALWORLD


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def embedder():
    from pagelens.tools.retrieval.embedders import MiniLMEmbedder

    return MiniLMEmbedder()


@pytest.fixture
def open_store(tmp_path):
    """Open (and close at the end) a real store under tmp_path; call again to reopen."""
    from pagelens.tools.corpus.store import PageStore, StoreSettings
    from pagelens.tools.retrieval.settings import RetrievalSettings

    opened = []

    def _open(home: Path | None = None, *, rebuild: bool = False, dpi: int = 144, **retrieval):
        store = PageStore(StoreSettings(home=home or tmp_path / "store", dpi=dpi), RetrievalSettings(**retrieval),
                          rebuild=rebuild)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        try:
            store.close()
        except Exception:
            pass


@pytest.fixture
def cli(tmp_path):
    """Run the installed `pagelens` command in a real subprocess, with the store at tmp_path/home by default
    (cwd is tmp_path, outside the repo, so the installed package is what runs)."""

    def run(*args: str, home: Path | None = None, check: bool = True, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "PAGELENS_HOME": str(home or tmp_path / "home"), **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "pagelens", *args], cwd=tmp_path, env=full_env, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"pagelens {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
        return proc

    return run


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    """A random-weight Qwen2.5-VL checkpoint with the real Qwen2 vocabulary, built once per session."""
    from pagelens.training.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_qwen"), vocabulary="qwen")


def _indexed_store(tmp_path_factory, folder: Path) -> Path:
    """Index the PDFs in `folder` into a new store under the session's temporary folder; returns its home."""
    from pagelens.tools.corpus.ingest import index_paths
    from pagelens.tools.corpus.store import PageStore, StoreSettings

    home = tmp_path_factory.mktemp(f"{folder.name}-home") / "store"
    with PageStore(StoreSettings(home=home)) as store:
        report = index_paths(store, sorted(folder.glob("*.pdf")), progress=False)
    assert not report.failures
    return home


@pytest.fixture(scope="session")
def sample_home(tmp_path_factory) -> Path:
    """A store holding the indexed sample corpus, built once; a test that writes to it uses `sample_copy`."""
    return _indexed_store(tmp_path_factory, SAMPLE)


@pytest.fixture(scope="session")
def field_home(tmp_path_factory) -> Path:
    """A store holding the indexed field corpus (tests/data/field), built once; tests only read it."""
    return _indexed_store(tmp_path_factory, FIELD)


@pytest.fixture
def sample_copy(sample_home, tmp_path) -> Path:
    """A private copy of the indexed sample store (threads and traces written to it stay in this test)."""
    import shutil

    home = tmp_path / "sample-store"
    shutil.copytree(sample_home, home)
    return home


def free_port() -> int:
    """A loopback port no one listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until(ready, proc: subprocess.Popen, log: Path, what: str, *, seconds: float) -> None:
    """Poll `ready()` until it is true; fail the test, showing `log`, if `proc` exits first or `seconds` pass."""
    import time

    deadline = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{what} exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer in {seconds:g} s:\n{log.read_text()}")
        time.sleep(0.2)


@contextlib.contextmanager
def _serve(folder: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`pagelens serve ARGS` (policy, mcp, …) in a real subprocess on a free loopback port, run in `folder`; yields
    its base URL once it answers HTTP, and checks its log has no traceback when it stops."""
    import urllib.error
    import urllib.request

    port = free_port()
    # The log goes to a file, not a pipe nobody drains: a chatty server must never block on a full pipe.
    log = folder / f"server-{port}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pagelens", "serve", *args, "--port", str(port)],
                                cwd=folder, stdout=err, stderr=err,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
        except urllib.error.HTTPError:
            pass  # any HTTP answer (an MCP server has no /healthz) means it is serving
        except OSError:
            return False
        return True

    try:
        _wait_until(answers, proc, log, "the server", seconds=120)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    """A `milvus-lite server` (the package's gRPC server, standing in for a Milvus server) on a free port, for the
    tests of one module; its URI."""
    import shutil
    import socket

    folder = tmp_path_factory.mktemp("milvus-server")
    port = free_port()
    command = shutil.which("milvus-lite", path=str(Path(sys.executable).parent)) or "milvus-lite"
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen([command, "server", "--data-dir", str(folder / "data"), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=log)

    def listens() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        _wait_until(listens, proc, folder / "server.log", "milvus-lite server", seconds=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def pagelens_server():
    """The `_serve` context manager: `with pagelens_server(folder, "policy", "--backend", …) as url:`."""
    return _serve


@pytest.fixture
def policy_server(tmp_path):
    """Start a policy server for this test; returns (base URL with /v1, the file of recorded requests).

    `start(replies)` serves a replay script; `start(model=PATH)` serves a checkpoint with the transformers backend.
    """
    import json

    with contextlib.ExitStack() as stack:
        def start(replies: list[str] | None = None, *, model: Path | None = None) -> tuple[str, Path]:
            record = tmp_path / f"requests-{len(stack._exit_callbacks)}.jsonl"
            args = ["--record", str(record)]
            if model is not None:
                args += ["--backend", "transformers", "--model", str(model), "--device", "cpu"]
            else:
                script = tmp_path / f"script-{len(stack._exit_callbacks)}.json"
                script.write_text(json.dumps(replies))
                args += ["--backend", "replay", "--script", str(script)]
            return stack.enter_context(_serve(tmp_path, "policy", *args)) + "/v1", record

        yield start
