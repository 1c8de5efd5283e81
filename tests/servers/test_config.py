"""Settings: flags over the PAGELENS_* environment over pagelens.toml over defaults, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagelens.errors import BadInputError
from pagelens.servers.config import load_settings


def test_defaults_without_environment_or_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings.store.home == Path(".pagelens") and settings.agent.protocol == "pagelens"
    assert settings.agent.max_turns == 6 and settings.policy.is_extractive


def test_flags_override_environment_which_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pagelens.toml").write_text(
        '[agent]\nmax_turns = 4\nprotocol = "vrag"\nrun_timeout = 30\n'
        '[policy]\nurl = "http://file:1/v1"\ntemperature = 0.7\n[store]\ndpi = 200\n')
    env = {"PAGELENS_MAX_TURNS": "5", "PAGELENS_POLICY_URL": "http://env:2/v1", "PAGELENS_POLICY_MODEL": "m"}
    settings = load_settings(env, max_turns=8)
    assert settings.agent.max_turns == 8  # flag
    assert settings.policy.url == "http://env:2/v1" and settings.policy.model == "m"  # environment
    assert settings.agent.protocol == "vrag" and settings.agent.run_timeout == 30.0  # file, converted
    assert settings.policy.temperature == 0.7 and settings.store.dpi == 200
    assert load_settings(env, url="").policy.is_extractive  # `--policy extractive` beats the environment


@pytest.mark.parametrize("env, says", [
    ({"PAGELENS_MAX_TURNS": "many"}, "max_turns='many' is not a number"),
    ({"PAGELENS_MAX_TURNS": "0"}, "max_turns=0 is out of range"),
    ({"PAGELENS_PROTOCOL": "react"}, "protocol 'react' is unknown"),
    ({"PAGELENS_POLICY_URL": "localhost:8000"}, "is not an http(s) URL"),
    ({"PAGELENS_RUN_TIMEOUT": "-1"}, "run_timeout=-1.0 must be a positive number"),
    ({"PAGELENS_CONFIG": "/nonexistent/pagelens.toml"}, "which does not exist"),
])
def test_bad_settings_are_one_clear_sentence(tmp_path, monkeypatch, env, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env)


def test_unknown_settings_in_the_file_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pagelens.toml").write_text("[agent]\nmax_turn = 3\n")
    with pytest.raises(BadInputError, match="unknown agent setting.*max_turn; known ones are"):
        load_settings({})
    (tmp_path / "pagelens.toml").write_text("[agent\n")
    with pytest.raises(BadInputError, match="is not valid TOML"):
        load_settings({})
