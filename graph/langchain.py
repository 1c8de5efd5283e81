"""pagelens for LangChain and LangGraph: a retriever, tools any tool-calling chat model can use, and the agent.

- `PageLensRetriever`: a `BaseRetriever` whose `Document`s are page hits (the snippet, or the page's full text).

Page text reaches a model here only as a `<page_text>` block of untrusted data (`tools.untrusted.delimit`): in
the search tool's text and in each Document's `page_content`, which a chain pastes into a prompt.
- `pagelens_tools(store)`: `search_pages` and `crop_page` as `StructuredTool`s. Each wraps the one tools function
  (search: `Retriever.search`; crop: `tools.regions.crop`) and answers with text and images as langchain-core's
  standard content blocks (`{"type": "image", "base64": …, "mime_type": "image/png"}`), with the structured result
  as the ToolMessage's artifact. A bad argument comes back to the model as an error message it can read.
- `agent_runnable(agent)`: the whole agent as a `Runnable` (`invoke`, `stream`, `ainvoke`, `astream`) that takes a
  question and returns the `ask --json` dict, so it can be a node in a user's own LangGraph.

Everything here calls synchronous code (SQLite, Milvus, PIL, the agent graph). The async paths run it in a worker
thread (LangChain's default for retrievers, tools and runnables), so an event loop is never blocked; an open page
store serves several threads at once (the agent API relies on the same), so concurrent async calls are safe.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import StructuredTool, ToolException
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
# pydantic builds schemas only from typing_extensions' TypedDict before Python 3.12 (Runnable input schemas).
from typing_extensions import NotRequired, TypedDict

from pagelens.errors import BadInputError
from pagelens.graph.build import Agent
from pagelens.graph.run import RunResult, Step
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.imagefiles import EncodedImage, load_page_image
from pagelens.tools.boxes import Box
from pagelens.tools.search import Hit
from pagelens.tools.regions import SeenImage, crop, fit_for_model
from pagelens.tools.search import Retriever
from pagelens.tools.untrusted import delimit

# -- the retriever ----------------------------------------------------------------------------------------------------
class PageLensRetriever(BaseRetriever):
    """Pages of a pagelens store as LangChain `Document`s, best first.

    `page_content` is the passage that matched (or, with `full_text`, the page's whole text) as a delimited
    `<page_text source="report.pdf p.3">` block of untrusted data, ready for a prompt; `metadata` holds
    page_id, document, page_number, score, image_path and, with `thumbnails`, the page's thumbnail as base64 JPEG
    (`thumbnail`, `thumbnail_mime_type`). `ainvoke` runs the search in a worker thread (BaseRetriever's default).
    """

    store: PageStore
    retriever: Retriever | None = None
    """The pagelens search to use (share one with an Agent or the tools to load the embedder once); default: new."""
    k: int = 5
    """Pages to return (1 to 100)."""
    document: str | None = None
    """Only pages of documents whose name matches this glob (`pagelens pages` lists the names)."""
    full_text: bool = False
    """Put the page's full extracted text in page_content instead of the matching snippet."""
    thumbnails: bool = False
    """Add the page's thumbnail (base64 JPEG, at most 256 px a side) to each Document's metadata."""

    def model_post_init(self, context: Any, /) -> None:
        if self.retriever is None:
            self.retriever = Retriever(self.store)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.retriever.search(query, self.k, self.document)
        return [self._document(hit) for hit in hits]

    def _document(self, hit: Hit) -> Document:
        page = hit.page
        metadata: dict[str, Any] = {
            "page_id": page.page_id,
            "document": page.document,
            "page_number": page.page_number,
            "score": hit.score,
            "relevance": hit.relevance,
            "image_path": str(page.image_path),
        }
        if self.thumbnails:
            thumbnail = EncodedImage(page.thumbnail_path.read_bytes(), "jpeg")
            metadata["thumbnail"], metadata["thumbnail_mime_type"] = thumbnail.base64, thumbnail.mime_type
        text = "\n".join(line.text for line in self.store.lines(page.page_id)) if self.full_text else hit.snippet
        content = delimit(text, source=f"{page.document} p.{page.page_number}")
        return Document(page_content=content, metadata=metadata, id=page.page_id)


# -- the tools --------------------------------------------------------------------------------------------------------
class SearchArgs(BaseModel):
    query: str = Field(description="what to look for, in words")
    k: int = Field(3, ge=1, le=10, description="how many pages to return, each with its image (1-10)")
    document: str | None = Field(None, description="only documents whose name matches this glob, e.g. 'report*.pdf'")


class CropArgs(BaseModel):
    page_id: str = Field(description="the page to crop, as search_pages names it")
    x1: float = Field(description="left edge of the box")
    y1: float = Field(description="top edge of the box")
    x2: float = Field(description="right edge of the box")
    y2: float = Field(description="bottom edge of the box")
    seen_width: int | None = Field(None, description="width of the page image the box was read on, as search_pages "
                                                     "showed it; leave both seen sizes empty for page pixels")
    seen_height: int | None = Field(None, description="height of the page image the box was read on")


def _image_block(image: Image.Image) -> dict:
    encoded = EncodedImage.encode(image, "png")
    return {"type": "image", "base64": encoded.base64, "mime_type": encoded.mime_type}


def _validation_message(error: ValidationError) -> str:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return f"the arguments are invalid ({problems}); fix them and call the tool again."


def _as_tool_error(function: Callable[..., tuple[list[dict], Any]]) -> Callable[..., tuple[list[dict], Any]]:
    """Turn the user errors of pagelens (bad box, unknown page or glob) into ToolExceptions the model reads back."""

    @functools.wraps(function)
    def wrapped(**kwargs: Any) -> tuple[list[dict], Any]:
        try:
            return function(**kwargs)
        except BadInputError as error:
            raise ToolException(str(error)) from error

    return wrapped


def pagelens_tools(store: PageStore, retriever: Retriever | None = None) -> list[StructuredTool]:
    """`search_pages` and `crop_page` over `store`, for any tool-calling chat model.

    Called with a tool call they return a ToolMessage whose content is text and image blocks and whose artifact is
    the structured result (the hits' dicts; the crop's region and size); called with plain arguments, the content.
    """
    search = retriever or Retriever(store)

    def search_pages(query: str, k: int = 3, document: str | None = None) -> tuple[list[dict], list[dict]]:
        hits = search.search(query, k, document)
        shown = [fit_for_model(load_page_image(hit.page.image_path), hit.page.page_id) for hit in hits]
        content: list[dict] = [{"type": "text", "text": f"{len(hits)} pages for {query!r}, best first:"}]
        artifact = []
        for rank, (hit, (image, seen)) in enumerate(zip(hits, shown), start=1):
            page = hit.page
            content.append({"type": "text", "text": (
                f"[{rank}] page_id {page.page_id}: {page.document} p.{page.page_number}, score {hit.score:.4f}; "
                f"shown at {seen.width}x{seen.height} (crop_page with seen_width={seen.width}, "
                f"seen_height={seen.height} takes a box in these pixels); matched text:\n"
                f"{delimit(hit.snippet, source=f'{page.document} p.{page.page_number}')}")})
            content.append(_image_block(image))
            artifact.append({**hit.to_dict(), "seen_width": seen.width, "seen_height": seen.height})
        return content, artifact

    def crop_page(page_id: str, x1: float, y1: float, x2: float, y2: float, seen_width: int | None = None,
                  seen_height: int | None = None) -> tuple[list[dict], dict]:
        if (seen_width is None) != (seen_height is None):
            raise BadInputError(f"only one of seen_width={seen_width} and seen_height={seen_height} is set; give "
                                f"both (the size search_pages showed the page at) or neither (page pixels).")
        page = store.page(page_id)
        seen = (SeenImage.whole_page(page.page_id, page.width, page.height, seen_width, seen_height)
                if seen_width is not None else None)
        result = crop(load_page_image(page.image_path), page.page_id, Box(x1, y1, x2, y2), seen=seen, zoom=True)
        region = result.region.to_dict()
        text = (f"crop of page_id {page.page_id} ({page.document} p.{page.page_number}): page box {region['box']} "
                f"of {page.width}x{page.height} page pixels, zoomed to {result.image.width}x{result.image.height}.")
        artifact = {**region, "document": page.document, "page_number": page.page_number,
                    "width": result.image.width, "height": result.image.height}
        return [{"type": "text", "text": text}, _image_block(result.image)], artifact

    common: dict[str, Any] = {"response_format": "content_and_artifact", "handle_tool_error": True,
                              "handle_validation_error": _validation_message}
    return [
        StructuredTool.from_function(
            _as_tool_error(search_pages), name="search_pages", args_schema=SearchArgs, **common,
            description="Search the indexed pages for a query; returns the best pages, each with its id, document, "
                        "page number, the text that matched and the page image."),
        StructuredTool.from_function(
            _as_tool_error(crop_page), name="crop_page", args_schema=CropArgs, **common,
            description="Crop a box out of a page and zoom into it, to read small text, a table cell or a chart "
                        "value; the box is in pixels of the page image search_pages showed (pass its size as "
                        "seen_width and seen_height) or, without them, in page pixels."),
    ]


# -- the agent as a Runnable ------------------------------------------------------------------------------------------
class AgentInput(TypedDict):
    question: str
    thread_id: NotRequired[str | None]
    """Continue this conversation (the Agent needs a checkpointer); other keys, e.g. a parent graph's, are ignored."""


class AgentRunnable(Runnable[AgentInput | str, dict]):
    """An `Agent` as a LangChain Runnable; build it with `agent_runnable(agent)`.

    `invoke` returns `RunResult.to_dict()` (answer, status, message, evidence, steps, images, …). `stream` yields
    `{"step": Step.to_dict()}` as each step finishes, then `{"result": …}`. `ainvoke` (Runnable's default) and
    `astream` run the agent in a worker thread. As a node of a parent StateGraph it reads the parent state's
    `question` (and `thread_id`) and its result updates the parent's keys of the same names (answer, evidence, …).
    """

    def __init__(self, agent: Agent):
        self.agent = agent

    def invoke(self, input: AgentInput | str, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        return self._call_with_config(self._run, input, config)

    def stream(self, input: AgentInput | str, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[dict]:
        yield from self._transform_stream_with_config(iter([input]), self._stream_steps, config)

    async def astream(self, input: AgentInput | str, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[dict]:
        chunks = self.stream(input, config)
        done = object()
        while (chunk := await asyncio.to_thread(next, chunks, done)) is not done:
            yield chunk

    def _run(self, input: AgentInput | str) -> dict:
        question, thread_id = _question(input)
        return self._ask(question, thread_id, None).to_dict()

    def _stream_steps(self, inputs: Iterator[AgentInput | str]) -> Iterator[dict]:
        question, thread_id = _question(next(inputs))
        updates: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                result = self._ask(question, thread_id, lambda step: updates.put(("step", step)))
                updates.put(("result", result))
            except BaseException as error:  # re-raised in the consumer's thread below
                updates.put(("error", error))

        # The run goes on in a worker thread that reports each step; this generator hands them on as they come. A
        # stream abandoned early leaves its run to finish in the background (a graph run cannot be cut short).
        threading.Thread(target=work, name="pagelens-agent", daemon=True).start()
        while True:
            kind, value = updates.get()
            if kind == "error":
                raise value
            if kind == "result":
                yield {"result": value.to_dict()}
                return
            yield {"step": value.to_dict()}

    def _ask(self, question: str, thread_id: str | None, on_step: Callable[[Step], None] | None) -> RunResult:
        # An empty context: inside a parent graph's node the caller's context carries that graph's internal config,
        # which would make the agent's compiled graph run as the parent's subgraph (taking the parent's checkpointer
        # and checkpoint namespace, pushing its raw state into the parent's stream). The agent is a self-contained
        # run, with its own threads.
        return contextvars.Context().run(self.agent.ask, question, thread_id=thread_id, on_step=on_step)


def _question(input: AgentInput | str) -> tuple[str, str | None]:
    if isinstance(input, str):
        return input, None
    if isinstance(input, dict) and isinstance(input.get("question"), str):
        return input["question"], input.get("thread_id")
    what = f"keys {sorted(input)}" if isinstance(input, dict) else f"a {type(input).__name__}"
    raise BadInputError(f"the agent's input ({what}) has no 'question' string; pass the question as a string or "
                        f"as {{'question': '…'}}.")


def agent_runnable(agent: Agent) -> AgentRunnable:
    """The agent as a Runnable: `agent_runnable(agent).invoke("question")` or a node in a parent StateGraph."""
    return AgentRunnable(agent)
