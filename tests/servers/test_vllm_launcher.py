"""`pagelens serve policy --backend vllm`: the `vllm serve` command each protocol needs, and its launch (vLLM itself
is absent here: it needs a CUDA GPU)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

from pagelens.errors import BadInputError, DependencyError
from pagelens.graph.settings import AgentSettings
from pagelens.servers.policy import vllm_launcher
from pagelens.servers.policy.vllm_launcher import NOT_INSTALLED, needed_model_len, run_vllm, vllm_command

VRAG = "autumncc/Qwen2.5-VL-7B-VRAG"
MIN_PIXELS, MAX_PIXELS = 256 * 28 * 28, 512 * 28 * 28


def flags(command: list[str]) -> dict[str, str]:
    """The `--flag value` pairs of a command line (every flag vllm_command writes takes one value)."""
    options = command[3:]
    assert len(options) % 2 == 0 and all(name.startswith("--") for name in options[::2])
    return dict(zip(options[::2], options[1::2]))


def command_for(agent: AgentSettings, **overrides) -> list[str]:
    options = {"reply_tokens": 1024, "host": "127.0.0.1", "port": 8000, "served_model_name": None,
               "max_model_len": None, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, **overrides}
    return vllm_command(VRAG, agent, **options)


@pytest.mark.parametrize("protocol, images, model_len", [
    # 10·514 + 1024 + 6·(1024 + 128) + 1024 = 14,100 tokens → 14,336 (see needed_model_len)
    ("pagelens", 10, 14336),
    ("vrag", 10, 14336),
    # 5·514 + 1024 + 1024 = 4,618 → 5,120
    ("evisrag", 5, 5120),
])
def test_dry_run_prints_the_command_for_each_protocol(cli, protocol, images, model_len):
    out = cli("serve", "policy", "--backend", "vllm", "--model", VRAG, "--protocol", protocol, "--dry-run",
              "--port", "8011").stdout
    command = shlex.split(out)
    assert command[:3] == ["vllm", "serve", VRAG]
    options = flags(command)
    assert json.loads(options["--limit-mm-per-prompt"]) == {"image": images, "video": 0}
    assert json.loads(options["--mm-processor-kwargs"]) == {"min_pixels": 200704, "max_pixels": 401408}
    assert int(options["--max-model-len"]) == model_len
    assert options["--served-model-name"] == VRAG
    assert (options["--host"], options["--port"]) == ("127.0.0.1", "8011")


def test_the_context_holds_the_replies_the_policy_asks_for(cli, tmp_path):
    """`[policy] max_tokens` is each reply's budget: 4096 instead of 1024 adds 3072 tokens to each of the 6 earlier
    turns and to the reply (pagelens: 10·514 + 1024 + 6·(4096 + 128) + 4096 = 35,604 → 35,840)."""
    (tmp_path / "pagelens.toml").write_text("[policy]\nmax_tokens = 4096\n")  # the cli runs in tmp_path
    command = shlex.split(cli("serve", "policy", "--backend", "vllm", "--model", VRAG, "--dry-run").stdout)
    assert flags(command)["--max-model-len"] == "35840"


def test_without_vllm_installed_serving_exits_2_with_one_sentence(cli):
    proc = cli("serve", "policy", "--backend", "vllm", "--model", VRAG, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {NOT_INSTALLED}"


def test_vllm_backend_without_a_model_exits_2(cli):
    proc = cli("serve", "policy", "--backend", "vllm", "--dry-run", check=False)
    assert proc.returncode == 2
    assert "needs --model" in proc.stderr and proc.stderr.count("\n") == 1


def test_command_follows_the_agent_settings(tmp_path):
    options = flags(command_for(AgentSettings(max_images=4, max_turns=2)))
    assert json.loads(options["--limit-mm-per-prompt"])["image"] == 4
    # 4·514 + 1024 + 2·1152 + 1024 = 6,408 → 7,168
    assert options["--max-model-len"] == "7168"
    # EVisRAG's pages pasted into one image (or asked about one at a time) are one image a request.
    evisrag = flags(command_for(AgentSettings(protocol="evisrag", single_image="horizontal")))
    assert json.loads(evisrag["--limit-mm-per-prompt"])["image"] == 1
    # Page text sent with every image costs its tokens too.
    assert (needed_model_len(AgentSettings(page_text=True), MAX_PIXELS, 1024)
            > needed_model_len(AgentSettings(), MAX_PIXELS, 1024))
    # Smaller images, a given length and name are passed through.
    options = flags(command_for(AgentSettings(), max_pixels=256 * 28 * 28, max_model_len=32768,
                                served_model_name="vrag-7b", host="0.0.0.0", port=9000))
    assert json.loads(options["--mm-processor-kwargs"])["max_pixels"] == 200704
    assert (options["--max-model-len"], options["--served-model-name"]) == ("32768", "vrag-7b")
    assert (options["--host"], options["--port"]) == ("0.0.0.0", "9000")
    # A local checkpoint folder is served under its folder name.
    folder = tmp_path / "checkpoints" / "vrag-sft"
    folder.mkdir(parents=True)
    command = vllm_command(f"{folder}/", AgentSettings(), reply_tokens=1024, host="127.0.0.1", port=8000,
                           served_model_name=None, max_model_len=None, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert command[2] == f"{folder}/" and flags(command)["--served-model-name"] == "vrag-sft"


@pytest.mark.parametrize("overrides, message", [
    ({"max_model_len": 4096}, "--max-model-len 4096 cannot hold the pagelens protocol's 10 images"),
    ({"min_pixels": MAX_PIXELS + 1}, "are not 0 < min <= max"),
    ({"port": 0}, "port 0 is out of range"),
])
def test_bad_options_are_one_clear_sentence(overrides, message):
    with pytest.raises(BadInputError, match=message):
        command_for(AgentSettings(), **overrides)
    with pytest.raises(BadInputError, match="the model is empty"):
        vllm_command(" ", AgentSettings(), reply_tokens=1024, host="h", port=1, served_model_name=None,
                     max_model_len=None, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def test_run_vllm_refuses_when_vllm_is_absent(monkeypatch):
    monkeypatch.setattr(vllm_launcher.shutil, "which", lambda name: None)
    monkeypatch.setattr(vllm_launcher.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DependencyError, match=r"^vLLM is not installed; it needs a CUDA GPU"):
        run_vllm(command_for(AgentSettings()))


@pytest.fixture
def vllm_present(monkeypatch):
    """Pretend a `vllm` program is on PATH, so run_vllm runs the (stand-in) command it is given."""
    monkeypatch.setattr(vllm_launcher.shutil, "which", lambda name: f"/usr/local/bin/{name}")


def test_run_vllm_returns_the_exit_status(vllm_present):
    assert run_vllm([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert run_vllm([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]) == 128 + 9


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_vllm_forwards_signals_and_waits(tmp_path, signum):
    # The launcher runs in its own process, signalled alone (a service manager's SIGTERM, a Ctrl-C, which reaches
    # only the launcher since vLLM runs in its own session): the stand-in server must get the signal, and the
    # launcher must wait for it and exit with its status.
    ready = tmp_path / "ready"
    server = (f"import pathlib, signal, sys, time; signal.signal({int(signum)}, lambda *_: sys.exit(7)); "
              f"pathlib.Path({str(ready)!r}).touch(); time.sleep(30)")
    launcher = ("import shutil, sys\n"
                "shutil.which = lambda name: '/usr/local/bin/' + name  # pretend vLLM is installed\n"
                "from pagelens.servers.policy.vllm_launcher import run_vllm\n"
                f"sys.exit(run_vllm([sys.executable, '-c', {server!r}]))\n")
    # cwd outside the repo: from its root, `import pagelens` would find the source folder, not the installed package.
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.02)
    process.send_signal(signum)
    assert process.wait(timeout=20) == 7
