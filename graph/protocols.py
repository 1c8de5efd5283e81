"""The three protocols as the graph uses them: templates, parser, and whether the policy acts over turns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pagelens.graph.parse import Answer, Turn, parse_evisrag, parse_pagelens, parse_vrag
from pagelens.graph.settings import AgentSettings
from pagelens.prompts.loader import Template, load_template


@dataclass(frozen=True)
class AgentProtocol:
    """A protocol the agent speaks (SPEC §1, §2, §2b): its instruction, its notes and its parser."""

    name: str
    multi_turn: bool
    """vrag and pagelens act over turns (search, bbox, answer); evisrag answers once over retrieved pages."""
    instruction: Template
    invalid_action: Template | None
    answer_now: Template | None
    parse: Callable[[str], Turn]


def _parse_evisrag(text: str) -> Turn:
    # SPEC §2: always an answer (the whole output when <answer> is missing), with its evidence lines.
    response = parse_evisrag(text)
    return Turn(Answer.read(response.answer, response.evidence), response.think)


def load_protocol(settings: AgentSettings) -> AgentProtocol:
    """The protocol `settings.protocol`, with `settings.template` standing in for its instruction when set."""
    name = settings.protocol
    instruction = load_template(settings.template, kind=name) if settings.template else load_template(name)
    if name == "evisrag":
        return AgentProtocol(name, False, instruction, None, None, _parse_evisrag)
    parse = parse_vrag if name == "vrag" else parse_pagelens
    return AgentProtocol(name, True, instruction, load_template(f"{name}_invalid_action"),
                         load_template(f"{name}_answer_now"), parse)
