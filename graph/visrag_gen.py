"""VisRAG-Gen for policies that take one image (SPEC §6): page concatenation and weighted selection.

With several retrieved pages and a model that reads one image, VisRAG either pastes the pages into one image
(`concatenate`) or answers each page alone and keeps the answer the retrieval scores and the model's own
confidence agree on most (`weighted_selection`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from PIL import Image

from pagelens.errors import BadInputError

WHITE = (255, 255, 255)


def _scaled(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # Images already at the target size are pasted untouched, so their pixels survive exactly.
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def concatenate(images: Sequence[Image.Image], direction: Literal["horizontal", "vertical"]) -> Image.Image:
    """Paste `images` into one RGB image on white: side by side at the tallest height, or stacked at the widest width.

    Each image keeps its aspect ratio (the other side is rounded to whole pixels, at least 1); order is kept,
    left to right or top to bottom.
    """
    if not images:
        raise BadInputError("concatenate got no images; pass at least one page image.")
    if direction not in ("horizontal", "vertical"):
        raise BadInputError(f"direction {direction!r} is not supported; use 'horizontal' or 'vertical'.")
    # SPEC §6: horizontal: all at the tallest height, left to right; vertical: all at the widest width, top to bottom.
    if direction == "horizontal":
        side = max(image.height for image in images)
        sizes = [(max(1, round(image.width * side / image.height)), side) for image in images]
        canvas_size = (sum(width for width, _ in sizes), side)
    else:
        side = max(image.width for image in images)
        sizes = [(side, max(1, round(image.height * side / image.width))) for image in images]
        canvas_size = (side, sum(height for _, height in sizes))

    canvas = Image.new("RGB", canvas_size, WHITE)
    offset = 0
    for image, size in zip(images, sizes):
        scaled = _scaled(image, size)
        position = (offset, 0) if direction == "horizontal" else (0, offset)
        if scaled.mode in ("RGBA", "LA", "PA") or "transparency" in scaled.info:
            # Transparent parts show the white background rather than black.
            rgba = scaled.convert("RGBA")
            canvas.paste(rgba, position, rgba)
        else:
            canvas.paste(scaled.convert("RGB"), position)
        offset += size[0] if direction == "horizontal" else size[1]
    return canvas


def weighted_selection(candidates: Sequence[tuple[str, float, Sequence[float] | None]]) -> tuple[int, list[float]]:
    """Pick the best of per-page answers, each given as (answer text, retrieval score, per-token log-probabilities).

    Returns the index of the chosen candidate (the first on a tie) and every candidate's combined score.
    """
    if not candidates:
        raise BadInputError("weighted_selection got no candidates; answer at least one page first.")
    scores, means = [], []
    for position, (answer, score, logprobs) in enumerate(candidates):
        if not logprobs:
            raise BadInputError(
                f"candidate {position} ({answer[:40]!r}) has no token log-probabilities; the policy endpoint must "
                f"return logprobs (ask for them with want_logprobs / logprobs=true)."
            )
        if not math.isfinite(score) or not all(math.isfinite(value) for value in logprobs):
            raise BadInputError(
                f"candidate {position} ({answer[:40]!r}) has a non-finite retrieval score or log-probability; "
                f"give finite numbers."
            )
        scores.append(float(score))
        means.append(math.fsum(logprobs) / len(logprobs))

    # SPEC §6: weight = softmax of the retrieval scores; combined = weight × exp(length-normalised log-probability).
    # Worked in log space with the max subtracted, so large scores cannot overflow and tiny products cannot underflow
    # to a tie at zero before the argmax is taken.
    top = max(scores)
    log_norm = top + math.log(math.fsum(math.exp(s - top) for s in scores))
    log_combined = [s - log_norm + mean for s, mean in zip(scores, means)]
    best = max(range(len(candidates)), key=lambda i: (log_combined[i], -i))
    return best, [math.exp(value) for value in log_combined]
