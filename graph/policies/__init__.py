"""Policies, one file each; `make_policy` picks the one the settings name."""

from __future__ import annotations

from pagelens.graph.policies.interface import Policy
from pagelens.graph.settings import PolicySettings


def make_policy(settings: PolicySettings) -> Policy:
    """The OpenAI-compatible policy at `settings.url`, or the offline extractive policy when no URL is set."""
    if settings.is_extractive:
        from pagelens.graph.policies.extractive import ExtractivePolicy

        return ExtractivePolicy()
    from pagelens.graph.policies.openai_chat import OpenAIChatPolicy

    return OpenAIChatPolicy(settings)
