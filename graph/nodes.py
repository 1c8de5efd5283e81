"""The graph's nodes and routers: each node takes the state and the run's context and returns a partial update.

observe asks the policy for the next step; search shows a page; crop shows a region of the most recent image;
evidence links what the policy wrote about each image to its page and region; answer ends the run. A turn the
parser or a node finds invalid is answered with the protocol's retry message and counts as a turn (SPEC §1); that
message is marked `"retry": True`, so trajectories say which turns the environment rejected (SFT keeps them out of
its loss) without matching text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Literal

from langgraph.runtime import Runtime

from pagelens.errors import BadInputError
from pagelens.graph.images import PageImages, openai_messages
from pagelens.graph.parse import Answer, Crop, Invalid, Search, bbox_to_seen_pixels
from pagelens.graph.policies.interface import Completion, Policy, PolicyRequest, ShownImage
from pagelens.graph.protocols import AgentProtocol
from pagelens.graph.run import Step
from pagelens.graph.settings import AgentSettings
from pagelens.graph.state import AgentState, image_record, shown_image
from pagelens.graph.visrag_gen import weighted_selection
from pagelens.prompts.loader import load_template
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.regions import SeenImage, crop as crop_page, smart_resize
from pagelens.tools.search import Retriever
from pagelens.tools.untrusted import delimit


@dataclass
class AgentContext:
    """What the nodes act with; one per agent, shared by its runs."""

    store: PageStore
    retriever: Retriever
    policy: Policy
    settings: AgentSettings
    protocol: AgentProtocol
    pages: PageImages


def _step(state: AgentState, kind: str, detail: dict, *, text: str = "", images: tuple[int, ...] = (),
          started: float | None = None, turn: int | None = None) -> list[dict]:
    # A step belongs to the policy turn that asked for it, numbered from 1 (observe passes the turn it starts).
    seconds = time.perf_counter() - started if started is not None else 0.0
    step = Step(state.get("turn", 0) if turn is None else turn, kind, text, detail, images, seconds)
    return [*state.get("steps", []), step.to_dict()]


def _user(*parts: dict) -> dict:
    return {"role": "user", "content": list(parts)}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _retry(protocol: AgentProtocol, reason: str) -> dict:
    """The protocol's answer to a turn it rejected, marked as such (the policy is sent role and content only)."""
    return {**_user(_text(protocol.invalid_action.render(reason=reason))), "retry": True}


def start(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Begin a question: reset what belongs to one question; keep the conversation of the thread."""
    context = runtime.context
    settings, protocol = context.settings, context.protocol
    question = state["question"]
    messages, images = list(state.get("messages", [])), list(state.get("images", []))
    if not messages:
        messages.extend(state.get("history") or [])
    update: dict = {
        "turn": 0, "shown_pages": [], "evidence": [], "steps": [], "answer": None, "status": None, "message": "",
        "first_image": len(images) + 1, "uploads": [], "history": [],
        "deadline": time.time() + settings.run_timeout,
        "messages": messages, "images": images,
    }
    # A request's own pages are shown with the question, numbered first.
    upload_parts = []
    for upload in state.get("uploads") or []:
        width, height = upload["width"], upload["height"]
        seen = SeenImage.whole_page(upload["page_id"], width, height, *smart_resize(width, height))
        shown = ShownImage(len(images) + 1, upload["page_id"], upload["name"], 1, seen)
        images.append(image_record(shown, width, height))
        upload_parts.append({"type": "image", "image": shown.index})
    update["shown_pages"] = [upload["page_id"] for upload in state.get("uploads") or []]
    if protocol.multi_turn:
        instruction = protocol.instruction.render(
            question=question, max_turns=settings.max_turns, bbox_convention=settings.bbox_convention
        )
        messages.append(_user(_text(instruction), *upload_parts))
        update["action"] = {"kind": "observe"}
    else:
        # SPEC §2: the pages are retrieved with the question itself, then shown with it in one turn.
        update["action"] = {"kind": "search", "query": question}
    return update


def route_start(state: AgentState) -> Literal["observe", "search"]:
    return "search" if state["action"]["kind"] == "search" else "observe"


def observe(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Ask the policy for the next step and parse it; on the last allowed call, tell it to answer now."""
    context = runtime.context
    settings, protocol = context.settings, context.protocol
    started = time.perf_counter()
    remaining = state["deadline"] - time.time()
    if remaining <= 0:
        return {"action": {"kind": "stop", "status": "timeout"}}
    turn = state["turn"]
    answer_now = protocol.multi_turn and turn >= settings.max_turns
    messages = list(state["messages"])
    if answer_now:
        messages.append(_user(_text(protocol.answer_now.render(max_turns=settings.max_turns))))
    images = [shown_image(record) for record in state["images"]]
    # evisrag answers over its own turn's pages: a follow-up in a thread does not resend earlier questions' pages.
    sendable = images if protocol.multi_turn else [image for image in images if image.index >= state["first_image"]]
    pasted = "" if protocol.multi_turn or settings.single_image == "weighted" else settings.single_image
    request = PolicyRequest(
        question=state["question"],
        protocol=protocol.name,
        images=tuple(images),
        answer_now=answer_now,
        first_image=state["first_image"],
        turn=turn,
        bbox_convention=settings.bbox_convention,
        timeout=remaining,
        render_messages=lambda: openai_messages(messages, sendable, context.pages, settings.max_images,
                                                concatenate_images=pasted),
        page_lines=context.pages.lines,
        term_rarity=context.retriever.rarity,
    )
    run_images = [image.index for image in images if image.index >= state["first_image"]]
    # What the policy's `[i]` refers to (SPEC §2b: every image of the conversation; SPEC §2: the images of the
    # one turn; a pasted image stands for all its pages; a weighted selection saw only its chosen page).
    seen_as = None if protocol.multi_turn else ([run_images] if pasted else [[i] for i in run_images])
    weighing: dict = {}
    try:
        if not protocol.multi_turn and settings.single_image == "weighted" and run_images:
            completion, chosen, weighing = _weighted_selection(context, state, request, images, run_images)
            seen_as = [[chosen]]
        else:
            completion = context.policy.complete(request)
    except TimeoutError:
        return {"messages": messages, "action": {"kind": "stop", "status": "timeout"}}
    # A turn the policy handed over as data is acted on as it is: page text it quotes is never parsed.
    parsed = completion.parsed or protocol.parse(completion.text)
    messages.append({"role": "assistant", "content": completion.text})
    action = _action_dict(parsed.action)
    if seen_as is not None:
        action["seen_as"] = seen_as
    if answer_now and action["kind"] != "answer":
        action = {"kind": "stop", "status": "no_answer", "reason": f"the final turn gave {action['kind']}, not an answer"}
    elif action["kind"] == "invalid":
        messages.append(_retry(protocol, action["reason"]))
    detail = {**action, "think": parsed.think, "answer_now": answer_now,
              "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
              **weighing}
    return {
        "messages": messages,
        "turn": turn + 1,
        "action": action,
        "steps": _step(state, "observe", detail, text=completion.text, started=started, turn=turn + 1),
    }


def _weighted_selection(context: AgentContext, state: AgentState, request: PolicyRequest, images: list[ShownImage],
                        run_images: list[int]) -> tuple[Completion, int, dict]:
    """SPEC §6, VisRAG-Gen weighted selection: ask about each page alone, keep the answer whose retrieval weight
    times the model's own length-normalised sequence probability is highest."""
    by_index = {image.index: image for image in images}
    instruction = context.protocol.instruction.render(question=state["question"], image_count=1)
    candidates, completions = [], []
    for index in run_images:
        single = [_user(_text(instruction), {"type": "image", "image": index})]
        completion = context.policy.complete(replace(
            request, want_logprobs=True, images=(by_index[index],), timeout=state["deadline"] - time.time(),
            render_messages=lambda single=single, shown=[by_index[index]]: openai_messages(
                single, shown, context.pages, 1)))
        completions.append(completion)
        # The embedding similarity, as VisRAG weighs pages (SPEC §6): fused RRF scores (about 0.016-0.033) would
        # make every weight nearly equal.
        score = state["images"][index - 1].get("similarity", 0.0)
        candidates.append((completion.text, score, completion.logprobs))
    chosen, combined = weighted_selection(candidates)
    weighing = {"weighted": [{"image": index, "answer": c.text[-200:], "score": round(s, 6)}
                             for index, c, s in zip(run_images, completions, combined)]}
    return completions[chosen], run_images[chosen], weighing


def _action_dict(action: Search | Crop | Answer | Invalid) -> dict:
    if isinstance(action, Search):
        return {"kind": "search", "query": action.query}
    if isinstance(action, Crop):
        return {"kind": "crop", "box": list(action.box)}
    if isinstance(action, Answer):
        return {"kind": "answer", "text": action.text, "insufficient": action.insufficient,
                "evidence": [[line.index, line.text, line.relevant] for line in action.evidence]}
    return {"kind": "invalid", "reason": action.reason}


def route_observe(state: AgentState) -> Literal["search", "crop", "evidence", "answer", "observe"]:
    kind = state["action"]["kind"]
    if kind == "stop":
        return "answer"
    if kind == "answer":
        return "evidence"
    if kind == "invalid":
        return "observe"
    return kind  # search or crop


def search(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Show the best page for the query that this question has not shown yet (SPEC §1), or, for evisrag, the top
    pages together with the instruction (SPEC §2)."""
    context = runtime.context
    settings, protocol = context.settings, context.protocol
    started = time.perf_counter()
    query = state["action"]["query"]
    shown_pages = list(state["shown_pages"])
    want = settings.search_top_k if protocol.multi_turn else settings.evisrag_pages
    images, messages = list(state["images"]), list(state["messages"])
    parts, added, found = [], [], []
    if settings.relevance_filter == "all" or (settings.relevance_filter == "evisrag" and not protocol.multi_turn):
        hits, candidates = context.retriever.filtered(query, k=want)
        kept = {hit.page.page_id for hit in hits}
        # The trace shows every decision: the candidates the filter left out too.
        dropped = [{"page_id": c.page.page_id, "relevance": round(c.relevance, 4)} for c in candidates
                   if c.page.page_id not in kept]
    else:
        hits, dropped = context.retriever.search(query, k=want), []
    for rank, hit in enumerate(hits, start=1):
        page = hit.page
        if page.page_id in shown_pages:
            continue
        try:
            seen_size = smart_resize(page.width, page.height)
        except BadInputError:
            continue  # a page too elongated to show whole; the next hit stands in
        index = len(images) + 1
        supported = hit.supported is not False
        shown = ShownImage(index, page.page_id, page.document, page.page_number,
                           SeenImage.whole_page(page.page_id, page.width, page.height, *seen_size),
                           supported=supported)
        images.append({**image_record(shown, page.width, page.height), "score": hit.score,
                       "similarity": hit.similarity, "relevance": hit.relevance})
        shown_pages.append(page.page_id)
        parts.append({"type": "image", "image": index})
        if settings.page_text:
            text = "\n".join(line.text for line in context.store.lines(page.page_id))
            block = delimit(text, source=f"{page.document} p.{page.page_number} (image {index})")
            parts.append(_text(load_template("page_text").render(block=block)))
        added.append(index)
        found.append({"page_id": page.page_id, "document": page.document, "page_number": page.page_number,
                      "rank": rank, "score": round(hit.score, 6),
                      "relevance": None if hit.relevance is None else round(hit.relevance, 4),
                      "supported": supported})
        if protocol.multi_turn:
            break
    if not protocol.multi_turn:
        # The one turn shows the request's uploads (added by start) and the retrieved pages (SPEC §2).
        uploads = [{"type": "image", "image": i} for i in range(state["first_image"], len(images) + 1)
                   if i not in added]
        shown = len(uploads) + len(added)
        pasted = settings.single_image in ("horizontal", "vertical")
        instruction = protocol.instruction.render(question=state["question"], image_count=1 if pasted and shown
                                                  else shown)
        messages.append(_user(_text(instruction), *uploads, *parts))
    elif parts:
        messages.append(_user(*parts))
    else:
        messages.append(_user(_text(load_template("search_empty").render(query=query))))
    detail = {"query": query, "pages": found, **({"filtered_out": dropped} if dropped else {})}
    return {
        "images": images, "messages": messages, "shown_pages": shown_pages,
        "steps": _step(state, "search", detail, images=tuple(added), started=started),
    }


def crop(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Show the region the policy boxed on the most recent image, zoomed; a box that cannot be cut is a retry."""
    context = runtime.context
    settings = context.settings
    started = time.perf_counter()
    box = state["action"]["box"]
    images, messages = list(state["images"]), list(state["messages"])
    try:
        if not images:
            raise BadInputError("there is no image to zoom into yet; search first")
        last = shown_image(images[-1])
        seen_box = bbox_to_seen_pixels(tuple(box), settings.bbox_convention, last.seen.width, last.seen.height)
        # SPEC §1: widen by crop_padding pixels of the image seen, converted to page pixels.
        padding = settings.crop_padding * last.seen.region.box.width / last.seen.width
        result = crop_page(context.pages.page(last.page_id), last.page_id, seen_box, seen=last.seen, padding=padding)
    except BadInputError as error:
        reason = str(error).rstrip(".")
        messages.append(_retry(context.protocol, reason))
        return {"messages": messages,
                "steps": _step(state, "crop", {"box": box, "invalid": reason}, started=started)}
    index = len(images) + 1
    shown = ShownImage(index, last.page_id, last.document, last.page_number, result.seen, result.region)
    context.pages.remember(shown, result.image)
    page_width, page_height = context.pages.page(last.page_id).size
    images.append(image_record(shown, page_width, page_height))
    messages.append(_user({"type": "image", "image": index}))
    detail = {"box": box, "of_image": last.index, "page_id": last.page_id,
              "region": result.region.box.rounded().as_list()}
    return {"images": images, "messages": messages,
            "steps": _step(state, "crop", detail, images=(index,), started=started)}


def evidence(state: AgentState) -> dict:
    """Link each evidence line to the image it names (SPEC §2b); lines naming no shown image are dropped."""
    seen_as = state["action"].get("seen_as")
    count = len(state["images"])
    cited, ignored = [], []
    for index, text, relevant in state["action"]["evidence"]:
        if not relevant:
            continue
        if seen_as is None:
            targets = [index] if 1 <= index <= count else []
        else:
            targets = seen_as[index - 1] if 1 <= index <= len(seen_as) else []
        cited.extend({"image": image, "text": text} for image in targets)
        if not targets:
            ignored.append({"image": index, "text": text})
    detail = {"cited": [item["image"] for item in cited], "ignored": [item["image"] for item in ignored]}
    return {"evidence": cited, "steps": _step(state, "evidence", detail)}


def answer(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """End the run: the answer, or a clear no-answer result when the turns or the time ran out."""
    settings = runtime.context.settings
    action = state["action"]
    if action["kind"] == "answer":
        status = "insufficient" if action["insufficient"] else "answered"
        text = action["text"]
        message = ("the policy found the pages insufficient to answer" if action["insufficient"]
                   else f"answered after {state['turn']} policy call(s)")
    elif action["status"] == "timeout":
        status, text = "timeout", None
        message = (f"the run passed its {settings.run_timeout:g} s limit; raise run_timeout "
                   f"(PAGELENS_RUN_TIMEOUT) or use a faster policy")
    else:
        status, text = "no_answer", None
        message = (f"the policy used its {settings.max_turns} turn(s) and the final answer-now call "
                   f"without answering ({action.get('reason', 'no answer given')}); raise --max-turns or rephrase")
    return {"answer": text, "status": status, "message": message,
            "steps": _step(state, "answer", {"status": status, "answer": text, "message": message})}
