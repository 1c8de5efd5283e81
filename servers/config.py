"""Settings from the environment and pagelens.toml, read once here and passed down.

Precedence: command-line flags > PAGELENS_* environment > pagelens.toml (in the working folder, or the file
PAGELENS_CONFIG names) > defaults. Nothing else in pagelens reads the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from pagelens.errors import BadInputError
from pagelens.graph.settings import AgentSettings, PolicySettings
from pagelens.servers.settings import ServingSettings
from pagelens.tools.corpus.store import StoreSettings
from pagelens.tools.retrieval.settings import RetrievalSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_ENV = {
    "PAGELENS_HOME": ("store", "home"),
    "PAGELENS_MILVUS_URI": ("store", "milvus_uri"),
    "PAGELENS_DPI": ("store", "dpi"),
    "PAGELENS_PDF_PASSWORD": ("store", "pdf_password"),
    "PAGELENS_MEMORY_INDEX": ("retrieval", "memory_index"),
    "PAGELENS_PROTOCOL": ("agent", "protocol"),
    "PAGELENS_MAX_TURNS": ("agent", "max_turns"),
    "PAGELENS_RUN_TIMEOUT": ("agent", "run_timeout"),
    "PAGELENS_POLICY_URL": ("policy", "url"),
    "PAGELENS_POLICY_MODEL": ("policy", "model"),
    "PAGELENS_POLICY_API_KEY": ("policy", "api_key"),
    "PAGELENS_API_KEY": ("serving", "api_key"),
    "PAGELENS_MCP_TOKEN": ("serving", "mcp_token"),
    "PAGELENS_ALLOWED_ORIGINS": ("serving", "allowed_origins"),
}

_SECTIONS = {"store": StoreSettings, "retrieval": RetrievalSettings, "agent": AgentSettings, "policy": PolicySettings,
             "serving": ServingSettings}


@dataclass(frozen=True)
class Settings:
    """Every concern's settings, each the object the code it configures takes."""

    store: StoreSettings
    retrieval: RetrievalSettings
    agent: AgentSettings
    policy: PolicySettings
    serving: ServingSettings


def policy_url(choice: str | None) -> str | None:
    """A `--policy` flag as the policy URL setting: None (unset) leaves the environment's, "extractive" is the empty
    URL that selects the offline policy, anything else is the endpoint's URL."""
    return None if choice is None else "" if choice == "extractive" else choice


def load_settings(env: Mapping[str, str] | None = None, **flags: object) -> Settings:
    """All settings; `flags` are CLI overrides named after the settings fields (None = unset).

    Field names are unique across the sections, so a flag names its section by its name alone.
    """
    env = os.environ if env is None else env
    values: dict[str, dict[str, object]] = {section: {} for section in _SECTIONS}
    config = Path(env.get("PAGELENS_CONFIG", "pagelens.toml"))
    if config.is_file():
        try:
            data = tomllib.loads(config.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise BadInputError(f"{config} is not valid TOML ({exc}); fix it or remove it.") from None
        for section in values:
            values[section].update(data.get(section, {}))
    elif "PAGELENS_CONFIG" in env:
        raise BadInputError(f"PAGELENS_CONFIG names {config}, which does not exist; fix the path or unset it.")
    for name, (section, key) in _ENV.items():
        if env.get(name):
            values[section][key] = env[name]
    owner = {f.name: section for section, cls in _SECTIONS.items() for f in fields(cls)}
    for key, value in flags.items():
        if value is not None:
            values[owner[key]][key] = value
    return Settings(**{section: _build(cls, values[section], section) for section, cls in _SECTIONS.items()})


def _build(cls, given: dict[str, object], section: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise BadInputError(
            f"unknown {section} setting(s) {', '.join(unknown)}; known ones are {', '.join(sorted(known))}."
        )
    settings = cls()
    converted = {}
    for key, value in given.items():
        default = getattr(settings, key)
        try:
            if isinstance(default, bool):
                converted[key] = str(value).lower() in {"1", "true", "yes", "on"}
            elif isinstance(default, int):
                converted[key] = int(value)  # type: ignore[arg-type]
            elif isinstance(default, float):
                converted[key] = float(value)  # type: ignore[arg-type]
            elif isinstance(default, Path):
                converted[key] = Path(str(value)).expanduser()
            else:
                converted[key] = value
        except ValueError:
            raise BadInputError(f"{section} setting {key}={value!r} is not a number; give a number.") from None
    return replace(settings, **converted)
