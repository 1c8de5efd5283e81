"""Trajectories (SPEC §2c): runs as JSONL, one run a line, with the images the model saw as PNG files beside it.

Layout: `<dir>/<name>.jsonl` and `<dir>/images/<sha256>.png`, where the hash is of the PNG bytes, so an image shown
in many runs (the same page view, the same crop) is stored once. Image paths in the JSONL are relative to it, so the
folder can be moved or shared whole. The PNG holds exactly the pixels the model was shown (`render_seen`), at the
size recorded as seen, so SFT and RS-GRPO train on what the policy actually looked at.

Crash safety: an image is written to a temporary file, synced and renamed into place before the line that points
at it is appended; the line goes out in one `write` on an O_APPEND descriptor, then `fsync`. An interrupted append
leaves at worst a partial last line, which the next append isolates by starting on a fresh line and which
`read_trajectories` reports by file and line number.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from pagelens.errors import BadInputError, NotFoundError
from pagelens.graph.policies.interface import ShownImage
from pagelens.graph.run import RunResult
from pagelens.tools.imagefiles import encode_image
from pagelens.tools.regions import render_seen

IMAGES_DIR = "images"


def _write_image(image: Image.Image, folder: Path) -> str:
    """Store `image` as images/<sha256>.png under `folder` unless it is there already; return that relative path."""
    data = encode_image(image, "png")
    name = f"{hashlib.sha256(data).hexdigest()}.png"
    target = folder / IMAGES_DIR / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{name}.", suffix=".tmp", delete=False)
        try:
            with handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, target)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
    return f"{IMAGES_DIR}/{name}"


def _sync_dir(folder: Path) -> None:
    """Make renames and new files in `folder` durable, so a synced line never points at a file a crash lost."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _chat_content(content: object, paths: dict[int, str]) -> object:
    """A message's content with each {"type": "image", "image": i} part turned into an image_url to image i's file."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image":
            index = part.get("image")
            if index not in paths:
                raise BadInputError(
                    f"message image part {part} names image {index}, but the run shows images "
                    f"{sorted(paths) or 'none'}; record runs whose messages point at their own images."
                )
            parts.append({"type": "image_url", "image_url": {"url": paths[index]}})
        else:
            parts.append(part)
    return parts


def _gold(gold: dict) -> dict:
    if not isinstance(gold, dict) or set(gold) != {"answer", "pages"}:
        raise BadInputError(
            f"gold {gold!r} is not a dict with exactly the keys 'answer' and 'pages'; "
            f"give for example {{'answer': '55.0 million', 'pages': ['0123456789ab-p1']}}."
        )
    if isinstance(gold["pages"], str) or not isinstance(gold["pages"], list | tuple):
        raise BadInputError(f"gold pages {gold['pages']!r} is not a list; give the gold page ids as a list.")
    return {"answer": gold["answer"], "pages": list(gold["pages"])}


def _image_record(image: ShownImage, path: str) -> dict:
    return {
        "index": image.index,
        "page_id": image.page_id,
        "document": image.document,
        "page_number": image.page_number,
        "seen_width": image.seen.width,
        "seen_height": image.seen.height,
        "region": image.region.to_dict() if image.region is not None else None,
        "path": path,
    }


def append_trajectory(
    result: RunResult,
    page_image: Callable[[str], Image.Image],
    path: Path,
    *,
    gold: dict | None = None,
    rewards: dict | None = None,
    run_id: str | None = None,
) -> dict:
    """Append `result` as one line of the JSONL file `path` (created with its folder), its images beside it.

    `page_image(page_id)` returns the full stored page image (each page is loaded once); `gold` is
    {"answer": ..., "pages": [page_id, ...]}; `rewards` maps reward names to numbers. Returns the line as written.
    """
    path = Path(path)
    gold = _gold(gold) if gold is not None else None
    if rewards is not None and not isinstance(rewards, dict):
        raise BadInputError(f"rewards {rewards!r} is not a dict; give reward names mapped to numbers.")
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    pages: dict[str, Image.Image] = {}
    paths: dict[int, str] = {}
    records = []
    for image in result.images:
        if image.page_id not in pages:
            pages[image.page_id] = page_image(image.page_id)
        paths[image.index] = _write_image(render_seen(pages[image.page_id], image.seen), folder)
        records.append(_image_record(image, paths[image.index]))
    if records:
        _sync_dir(folder / IMAGES_DIR)

    line = {
        "id": run_id or uuid.uuid4().hex,
        "question": result.question,
        "protocol": result.protocol,
        "policy": result.policy,
        "messages": [{**message, "content": _chat_content(message.get("content", ""), paths)}
                     for message in result.messages],
        "images": records,
        "answer": result.answer,
        "status": result.status,
        "message": result.message,
        "evidence": [item.to_dict() for item in result.evidence],
    }
    if gold is not None:
        line["gold"] = gold
    if rewards is not None:
        line["rewards"] = rewards
    try:
        text = json.dumps(line, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BadInputError(
            f"run {line['id']} cannot be written as JSON ({error}); give gold and rewards as plain strings, "
            f"lists and finite numbers."
        ) from None
    # Readers that split on every Unicode line break (str.splitlines) would cut a line at these; JSON may escape them.
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")

    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = (text + "\n").encode("utf-8")
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            # An earlier append was cut off mid-line: start afresh so that partial line does not swallow this one.
            data = b"\n" + data
        # One write for the whole line; the loop only matters if the disk fills mid-line (then the next call raises).
        written = os.write(descriptor, data)
        while written < len(data):
            written += os.write(descriptor, data[written:])
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return line


def _resolve(url: str, folder: Path, where: str) -> str:
    resolved = (folder / url).resolve()
    # A shared trajectory file must not make its reader open files elsewhere (`../`, absolute paths, symlinks out).
    if not resolved.is_relative_to(folder):
        raise BadInputError(f"{where} points at image {url}, outside the trajectory's folder {folder}; image paths "
                            f"must be relative paths inside it, such as images/<sha256>.png.")
    if not resolved.is_file():
        raise NotFoundError(f"{where} points at image {url}, which is not at {resolved}; copy the images/ folder "
                            f"beside the trajectory file.")
    return str(resolved)


def read_trajectories(path: Path) -> Iterator[dict]:
    """Yield the runs of the JSONL file `path` in order, with image paths (and image_url urls) made absolute.

    Blank lines are skipped; a line that is not a JSON object with `messages` and `images` lists, or that points at
    an image outside the file's folder, raises BadInputError naming the file and line.
    """
    path = Path(path)
    folder = path.parent.resolve()
    try:
        file = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"trajectory file {path} does not exist; check the path or record some runs first.") \
            from None
    with file:
        for number, text in enumerate(file, start=1):
            if not text.strip():
                continue
            where = f"trajectory file {path} line {number}"
            try:
                run = json.loads(text)
            except json.JSONDecodeError as error:
                raise BadInputError(f"{where} is not valid JSON ({error.msg} at column {error.colno}); "
                                    f"remove or fix that line.") from None
            if not (isinstance(run, dict) and isinstance(run.get("messages"), list)
                    and isinstance(run.get("images"), list)):
                raise BadInputError(f"{where} is not a run object with 'messages' and 'images' lists; "
                                    f"remove or fix that line.")
            for image in run["images"]:
                if not (isinstance(image, dict) and isinstance(image.get("path"), str)):
                    raise BadInputError(f"{where} has an image record without a 'path' string ({image!r}); "
                                        f"remove or fix that line.")
                image["path"] = _resolve(image["path"], folder, where)
            for message in run["messages"]:
                content = message.get("content") if isinstance(message, dict) else None
                for part in content if isinstance(content, list) else ():
                    if isinstance(part, dict) and part.get("type") == "image_url":
                        image_url = part.get("image_url")
                        url = image_url.get("url") if isinstance(image_url, dict) else None
                        if not isinstance(url, str):
                            raise BadInputError(f"{where} has an image_url part without a url ({part!r}); "
                                                f"remove or fix that line.")
                        part["image_url"]["url"] = _resolve(url, folder, where)
            yield run
