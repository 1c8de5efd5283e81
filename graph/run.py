"""What one run of the agent produced: the answer, its citations, every step, and the images it showed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pagelens.graph.policies.interface import ShownImage
from pagelens.tools.boxes import Region

# answered: an answer; insufficient: the policy answered "insufficient to answer"; no_answer: the turn limit was
# reached without an answer; timeout: the run's deadline passed first.
Status = Literal["answered", "insufficient", "no_answer", "timeout"]


@dataclass(frozen=True)
class Evidence:
    """What the policy wrote about image `image` (1-based), linked to its page and, for a crop, the region."""

    image: int
    page_id: str
    document: str
    page_number: int
    region: Region | None
    text: str

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "page_id": self.page_id,
            "document": self.document,
            "page_number": self.page_number,
            "box": self.region.box.rounded().as_list() if self.region is not None else None,
            "text": self.text,
        }


@dataclass(frozen=True)
class Step:
    """One node's work: `kind` names the node (observe, search, crop, evidence, answer).

    `text` is the model's message on an observe step ("" otherwise); `detail` holds what the step did (the parsed
    action and its reason, the query and page shown, the box, the citations); `images` the indexes it added.
    """

    turn: int
    kind: str
    text: str
    detail: dict
    images: tuple[int, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"turn": self.turn, "kind": self.kind, "text": self.text, "detail": self.detail,
                "images": list(self.images), "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, data: dict) -> Step:
        return cls(data["turn"], data["kind"], data["text"], data["detail"], tuple(data["images"]), data["seconds"])


@dataclass(frozen=True)
class RunResult:
    """A finished run. `answer` is None unless status is answered or insufficient; `message` says why in words.

    `messages` is the conversation in OpenAI chat form with each image part as {"type": "image", "image": i}
    (an index into `images`), so it can be written out with the images as files or data URLs.
    """

    question: str
    answer: str | None
    status: Status
    message: str
    evidence: tuple[Evidence, ...]
    steps: tuple[Step, ...]
    images: tuple[ShownImage, ...]
    messages: tuple[dict, ...]
    protocol: str
    policy: str
    thread_id: str | None = None

    def to_dict(self) -> dict:
        """The `ask --json` shape: answer, evidence, steps, protocol, policy (plus status and message)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "status": self.status,
            "message": self.message,
            "evidence": [item.to_dict() for item in self.evidence],
            "steps": [step.to_dict() for step in self.steps],
            "images": [image.to_dict() for image in self.images],
            "protocol": self.protocol,
            "policy": self.policy,
            "thread_id": self.thread_id,
        }
