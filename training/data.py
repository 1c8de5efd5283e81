"""Trajectories (SPEC §2c) → supervised training rows, and their export for LLaMA-Factory.

A row is one whole run: `messages` in the chat form the policy was served with, user image parts replaced by
`{"type": "image"}` placeholders, and `images`, the absolute paths of the PNG files those placeholders stand for,
in order. Every assistant turn of the run is a training target and nothing else is (SPEC §2c: only `assistant`
messages are trained on); `pagelens.training.sft` masks the rest out of the loss. The exception is a turn the
environment rejected, one the graph answered with the protocol's "invalid action" message (marked `"retry": true`
in the trajectory): it stays in the row, so the turn after it teaches how to recover, but it is marked
`"train": false` and kept out of the loss, since training on it would teach the mistake.

The trajectory file is read with `pagelens.graph.trajectory.read_trajectories`, which confines image paths to the
file's folder, checks the images exist, and names the file and line of anything malformed.

Filters, applied in this order, each optional:
- answered: the run ended with an answer (a run cut off by the turn limit or an error teaches nothing to imitate);
- correct: the run has a gold answer and its answer holds every token of it after SPEC §5 normalisation (EVisRAG's
  accuracy); runs without gold fail this filter;
- reward thresholds: for each given name, `rewards[name] >= threshold`; runs without that reward fail.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pagelens.errors import BadInputError
from pagelens.graph.trajectory import read_trajectories
from pagelens.training.metrics import answer_metrics

# What LLaMA-Factory's sharegpt reader counts as one image, in order, in a turn's text.
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class RowFilter:
    """Which recorded runs become training rows."""

    answered: bool = True
    """Keep only runs that ended with an answer."""
    correct: bool = False
    """Keep only runs whose answer holds every token of their gold answer (SPEC §5 accuracy)."""
    min_rewards: dict[str, float] = field(default_factory=dict)
    """Keep only runs with `rewards[name] >= threshold` for every name given."""

    def keeps(self, run: dict) -> bool:
        if self.answered and run.get("answer") is None:
            return False
        if self.correct and not _correct(run):
            return False
        rewards = run.get("rewards") or {}
        return all(_number(rewards.get(name)) >= threshold for name, threshold in self.min_rewards.items())


@dataclass(frozen=True)
class Rows:
    """The training rows read from some trajectory files, and how many runs were read in all."""

    rows: list[dict]
    runs_read: int

    def summary(self) -> str:
        return f"{len(self.rows)} of {self.runs_read} run(s) kept as training rows"


def read_rows(paths: Iterable[Path], row_filter: RowFilter = RowFilter()) -> Rows:
    """The training rows of the trajectory files `paths`, in file and line order, filtered by `row_filter`."""
    rows, read = [], 0
    for path in paths:
        for number, run in enumerate(read_trajectories(path), start=1):
            read += 1
            if row_filter.keeps(run):
                rows.append(to_row(run, where=f"trajectory file {path} run {number}"))
    return Rows(rows, read)


def to_row(run: dict, *, where: str = "the run") -> dict:
    """One run (as `read_trajectories` yields it) → {"id", "messages", "images"}; see the module docstring."""
    messages, images = [], []
    for message in run["messages"]:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise BadInputError(f"{where} has a message with role {role!r}; trajectories hold system, user and "
                                f"assistant messages only, so record the run again with `pagelens ask --trajectory`.")
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    images.append(part["image_url"]["url"])
                    parts.append({"type": "image"})
                elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                else:
                    raise BadInputError(f"{where} has a message part {str(part)[:80]!r} that is neither text nor "
                                        f"image_url; fix that line or record the run again.")
        else:
            raise BadInputError(f"{where} has a message whose content is neither text nor a list of parts; fix "
                                f"that line or record the run again.")
        if role == "assistant" and any(part["type"] == "image" for part in parts):
            raise BadInputError(f"{where} has an image in an assistant message; only user turns carry images, so "
                                f"fix that line or record the run again.")
        messages.append({"role": role, "content": parts})
    # One row message per run message, so the graph's retry marks line up with the turns they answer.
    for message, answered_by_retry in zip(messages, [m.get("retry") is True for m in run["messages"][1:]]):
        if message["role"] == "assistant" and answered_by_retry:
            message["train"] = False
    if not any(message["role"] == "assistant" and message.get("train", True) for message in messages):
        raise BadInputError(f"{where} has no assistant message to train on; drop it or record the run again.")
    return {"id": str(run.get("id", "")), "messages": messages, "images": images}


def export_sharegpt(rows: list[dict], folder: Path, name: str = "pagelens_sft") -> Path:
    """Write `rows` as LLaMA-Factory's multimodal sharegpt dataset `name` in `folder`; returns the JSON file.

    `folder` gets `<name>.json` (one record per row: `messages` with one `<image>` per image in the text of its turn,
    in order, and `images`, paths relative to `folder`; a rejected turn and its retry message are left out, as
    LLaMA-Factory would train on every assistant turn), the images under `images/`, and `dataset_info.json` with
    the entry for `name` (other entries there are kept). Point LLaMA-Factory's `dataset_dir` at `folder`.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise BadInputError(f"dataset name {name!r} is not a plain name; use letters, digits, '_', '-' and '.'.")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = [_sharegpt_record(row, folder) for row in rows]
    target = folder / f"{name}.json"
    target.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")

    info_path = folder / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    except json.JSONDecodeError as error:
        raise BadInputError(f"{info_path} is not valid JSON ({error.msg}); fix or remove it, then export again.") \
            from None
    info[name] = {
        "file_name": target.name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "system": "system"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"},
    }
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    return target


def _sharegpt_record(row: dict, folder: Path) -> dict:
    images: Iterator[str] = iter(row["images"])
    system, turns, paths = "", [], []
    for message, previous in zip(row["messages"], [{}, *row["messages"]]):
        # sharegpt has no per-turn loss mask: a rejected turn and the retry message after it are left out.
        if message.get("train") is False or previous.get("train") is False:
            continue
        text = ""
        for part in message["content"]:
            if part["type"] == "image":
                source = Path(next(images))
                # Named by content (trajectory images are images/<sha256>.png), so each is copied once.
                copy = folder / "images" / source.name
                if not copy.exists():
                    shutil.copyfile(source, copy)
                paths.append(f"images/{source.name}")
                text += IMAGE_PLACEHOLDER
            elif IMAGE_PLACEHOLDER in part["text"]:
                raise BadInputError(f"run {row['id']} has the text {IMAGE_PLACEHOLDER} in a message, which "
                                    f"LLaMA-Factory would take for an image; drop that run from the export.")
            else:
                text += part["text"]
        if message["role"] == "system":
            system = text
        elif turns and turns[-1]["role"] == message["role"]:
            # sharegpt insists that user and assistant alternate, so consecutive turns of one role become one turn
            # there; LLaMA-Factory then renders one turn header where pagelens served two.
            turns[-1]["content"] += text
        else:
            turns.append({"role": message["role"], "content": text})
    return {"messages": turns, "images": paths, "system": system}


def _correct(run: dict) -> bool:
    gold = run.get("gold")
    if not isinstance(gold, dict) or run.get("answer") is None:
        return False
    golds = gold.get("answer") if isinstance(gold.get("answer"), list) else [gold.get("answer")]
    # SPEC §5 accuracy: every token of some gold answer appears in the answer.
    return answer_metrics(str(run["answer"]), [str(text) for text in golds if text is not None])["acc"] == 1


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("-inf")
