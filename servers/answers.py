"""How a run is shown to a person (`pagelens ask`, the demo, the agent API's answers): progress lines, the answer
with its citations, trace and trajectory."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from pagelens.graph.run import RunResult, Step
from pagelens.servers.terminal import print_json


def describe(step: Step) -> str:
    """One line saying what a step did."""
    detail = step.detail
    if step.kind == "observe":
        action = detail.get("kind")
        what = {"search": f"search {detail.get('query', '')!r}", "crop": f"zoom {detail.get('box')}",
                "answer": "answer", "invalid": f"invalid turn: {detail.get('reason')}",
                "stop": f"stop: {detail.get('reason', detail.get('status'))}"}.get(action, str(action))
        return f"turn {step.turn}: {what}"
    if step.kind == "search":
        pages = detail.get("pages") or []
        shown = ", ".join(f"{p['document']} p.{p['page_number']}" for p in pages) or "no new page"
        return f"  shown: {shown}"
    if step.kind == "crop":
        if "invalid" in detail:
            return f"  zoom refused: {detail['invalid']}"
        return f"  zoomed: page box {detail.get('region')} of image {detail.get('of_image')}"
    if step.kind == "evidence":
        return f"  cites images {detail.get('cited')}" + (f", ignores {detail['ignored']}" if detail.get("ignored") else "")
    return f"  {detail.get('message', step.kind)}"


def step_printer(quiet: bool) -> Callable[[Step], None] | None:
    """Progress lines on stderr, only on a terminal and without --quiet."""
    if quiet or not sys.stderr.isatty():
        return None
    return lambda step: print(describe(step), file=sys.stderr, flush=True)


def write_outputs(result: RunResult, page_image: Callable[[str], Image.Image], *, trace: Path | None,
                  trajectory: Path | None, quiet: bool = False, gold: dict | None = None) -> None:
    """Write the HTML trace and append to the trajectory file, when asked for; `page_image(page_id)` is the full
    page image (the agent's `context.pages.page`, which has it cached)."""
    if trace is not None:
        from pagelens.graph.trace import write_trace

        write_trace(result, page_image, trace)
        if not quiet:
            print(f"trace: {trace}", file=sys.stderr)
    if trajectory is not None:
        from pagelens.graph.trajectory import append_trajectory

        append_trajectory(result, page_image, trajectory, gold=gold)
        if not quiet:
            print(f"trajectory: appended to {trajectory}", file=sys.stderr)


def print_result(result: RunResult, *, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    print(result.answer if result.answer is not None else f"No answer: {result.message}.")
    if result.evidence:
        print("\nEvidence:")
        for item in result.evidence:
            where = f"box {item.region.box.rounded().as_list()}" if item.region is not None else "whole page"
            print(f"  [{item.image}] {item.document} p.{item.page_number} ({item.page_id}, {where}): {item.text}")
    print(f"\n{result.policy} policy · {result.protocol} protocol · {len(result.steps)} steps · "
          f"thread {result.thread_id} (continue with --thread {result.thread_id})")
