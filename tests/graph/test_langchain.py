"""pagelens through LangChain and LangGraph, on the indexed sample corpus: the retriever (alone and in LCEL
chains), the tools a chat model calls (directly and from a LangGraph ReAct agent), and the agent as a Runnable
(alone, streamed, awaited, as a node of a user's own graph) and as a compiled subgraph of one."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langgraph.graph import END, START, StateGraph
from PIL import Image
from pydantic import Field

from pagelens.graph.build import Agent
from pagelens.graph.langchain import PageLensRetriever, agent_runnable, pagelens_tools
from pagelens.graph.nodes import AgentContext
from pagelens.graph.policies.extractive import ExtractivePolicy
from pagelens.graph.settings import AgentSettings
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.boxes import Box
from pagelens.tools.regions import SeenImage, from_page_box, smart_resize
from pagelens.tools.search import Retriever
from pagelens.tools.untrusted import delimit

QUESTIONS = {q["id"]: q for q in json.loads(
    (Path(__file__).resolve().parents[2] / "servers" / "sample" / "questions.json").read_text())}
NORTHWIND = "northwind_annual_report_2023.pdf"
# The Europe row of Table 1 on Northwind's page 2, in page pixels at 144 dpi, with some margin.
EUROPE_ROW = Box(160, 356, 1060, 394)


@pytest.fixture(scope="module")
def store(sample_home):
    # One PageStore per process (Milvus Lite), shared by every test here.
    with PageStore(StoreSettings(home=sample_home)) as opened:
        yield opened


@pytest.fixture(scope="module")
def search(store):
    return Retriever(store)


@pytest.fixture(scope="module")
def tools(store, search):
    return {tool.name: tool for tool in pagelens_tools(store, search)}


def page_of(store, document, number):
    return next(p for p in store.pages() if p.document == document and p.page_number == number)


def gated(event: threading.Event, what: str):
    """Wait (in a worker thread) until the event loop has run a coroutine that sets `event`: a call that blocked the
    loop would never see it set."""
    assert event.wait(10), f"{what} blocked the event loop"


async def with_loop_running(call, event: threading.Event):
    async def release():
        await asyncio.sleep(0.01)
        event.set()

    result, _ = await asyncio.gather(call, release())
    return result


def decode(block: dict) -> Image.Image:
    assert block["type"] == "image" and block["mime_type"] == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(block["base64"])))


# -- retriever --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qid", ["q01", "q03", "q08", "q14"])
def test_retriever_returns_the_gold_page_first(store, search, qid):
    question = QUESTIONS[qid]
    docs = PageLensRetriever(store=store, retriever=search, k=3).invoke(question["question"])
    assert len(docs) == 3
    top = docs[0].metadata
    assert (top["document"], top["page_number"]) == (question["document"], question["page"])
    assert docs[0].id == top["page_id"]


def test_retriever_metadata_filter_full_text_and_thumbnail(store, search):
    retriever = PageLensRetriever(store=store, retriever=search, k=2, document="kx40*", full_text=True,
                                  thumbnails=True)
    docs = retriever.invoke(QUESTIONS["q08"]["question"])
    assert {d.metadata["document"] for d in docs} == {"kx40_maintenance_manual.pdf"}
    meta = docs[0].metadata
    assert set(meta) == {"page_id", "document", "page_number", "score", "relevance", "image_path", "thumbnail",
                         "thumbnail_mime_type"}
    page = store.page(meta["page_id"])
    assert meta["image_path"] == str(page.image_path) and Path(meta["image_path"]).is_file()
    assert meta["page_number"] == 2 and meta["score"] >= docs[1].metadata["score"] > 0
    # The page's text, as a delimited block of untrusted data (tools.untrusted; tests/servers/test_injection.py).
    assert docs[0].page_content == delimit("\n".join(line.text for line in store.lines(page.page_id)),
                                           f"{page.document} p.{page.page_number}")
    thumbnail = Image.open(io.BytesIO(base64.b64decode(meta["thumbnail"])))
    assert meta["thumbnail_mime_type"] == "image/jpeg" and max(thumbnail.size) == 256

    snippet = PageLensRetriever(store=store, retriever=search, k=1).invoke(QUESTIONS["q08"]["question"])[0]
    assert set(snippet.metadata) == {"page_id", "document", "page_number", "score", "relevance", "image_path"}
    block = re.fullmatch(r'<page_text source="[^"]+">\n(.+)\n</page_text>', snippet.page_content, re.DOTALL)
    assert 0 < len(block[1]) <= 242  # the matching snippet (240 characters and its ellipses)


def test_retriever_async_runs_off_the_event_loop(store, search):
    loop_ran = threading.Event()

    class GatedRetriever(Retriever):
        def search(self, *args, **kwargs):
            gated(loop_ran, "ainvoke")
            return super().search(*args, **kwargs)

    retriever = PageLensRetriever(store=store, retriever=GatedRetriever(store, search.embedder), k=3)
    question = QUESTIONS["q06"]
    docs = asyncio.run(with_loop_running(retriever.ainvoke(question["question"]), loop_ran))
    assert (docs[0].metadata["document"], docs[0].metadata["page_number"]) == (NORTHWIND, 4)
    # Concurrent searches on one store (abatch runs them in threads at once) are serialised and all answered.
    batches = asyncio.run(retriever.abatch([QUESTIONS[q]["question"] for q in ("q01", "q03", "q05", "q06")]))
    assert [d[0].metadata["page_number"] for d in batches] == [1, 2, 3, 4]


def format_pages(docs: list[Document]) -> str:
    """Retrieved pages as a prompt's context, each headed by the document and page it cites."""
    return "\n\n".join(f"[{d.metadata['document']} p.{d.metadata['page_number']}]\n{d.page_content}" for d in docs)


RAG_PROMPT = ChatPromptTemplate.from_template("Answer from these pages and cite them.\n\n{context}\n\n"
                                              "Question: {question}")


def assert_prompt_cites_gold(prompt: Any, qid: str) -> None:
    question = QUESTIONS[qid]
    text = prompt.to_string()
    first = re.search(r"^\[(.+) p\.(\d+)\]$", text, re.MULTILINE)
    assert (first[1], int(first[2])) == (question["document"], question["page"])
    assert question["answer"] in text and text.endswith(f"Question: {question['question']}")


def test_retriever_in_an_lcel_chain_sync_and_async(store, search):
    retriever = PageLensRetriever(store=store, retriever=search, k=2, full_text=True)
    chain = {"context": retriever | RunnableLambda(format_pages), "question": RunnablePassthrough()} | RAG_PROMPT

    assert_prompt_cites_gold(chain.invoke(QUESTIONS["q01"]["question"]), "q01")
    assert_prompt_cites_gold(asyncio.run(chain.ainvoke(QUESTIONS["q14"]["question"])), "q14")
    # Batches run their searches in threads at once (sync) or off the loop (async); the store lock serialises them.
    qids = ["q06", "q08", "q12"]
    for prompt, qid in zip(chain.batch([QUESTIONS[q]["question"] for q in qids]), qids):
        assert_prompt_cites_gold(prompt, qid)
    for prompt, qid in zip(asyncio.run(chain.abatch([QUESTIONS[q]["question"] for q in qids])), qids):
        assert_prompt_cites_gold(prompt, qid)


# -- tools ------------------------------------------------------------------------------------------------------------
def test_search_tool_returns_text_and_page_images(tools):
    message = tools["search_pages"].invoke({"type": "tool_call", "id": "call-1", "name": "search_pages",
                                            "args": {"query": QUESTIONS["q03"]["question"], "k": 2}})
    assert isinstance(message, ToolMessage) and message.status == "success" and message.tool_call_id == "call-1"
    texts = [b["text"] for b in message.content if b["type"] == "text"]
    images = [decode(b) for b in message.content if b["type"] == "image"]
    assert len(images) == 2 and [b["type"] for b in message.content] == ["text", "text", "image", "text", "image"]
    top = message.artifact[0]
    assert (top["document"], top["page_number"]) == (NORTHWIND, 2)
    assert top["page_id"] in texts[1] and f"seen_width={top['seen_width']}" in texts[1]
    assert images[0].size == (top["seen_width"], top["seen_height"])
    assert images[0].width * images[0].height <= 512 * 28 * 28 and images[0].width % 28 == 0


def test_crop_tool_in_page_pixels_and_in_seen_pixels(store, tools):
    page = page_of(store, NORTHWIND, 2)
    message = tools["crop_page"].invoke({"type": "tool_call", "id": "call-2", "name": "crop_page", "args": {
        "page_id": page.page_id, "x1": EUROPE_ROW.x1, "y1": EUROPE_ROW.y1, "x2": EUROPE_ROW.x2, "y2": EUROPE_ROW.y2}})
    assert message.status == "success"
    text, image_block = message.content
    image = decode(image_block)
    assert image.size == smart_resize(round(EUROPE_ROW.width), round(EUROPE_ROW.height))
    assert message.artifact["box"] == EUROPE_ROW.as_list() and message.artifact["page_id"] == page.page_id
    assert (message.artifact["width"], message.artifact["height"]) == image.size
    assert f"{image.width}x{image.height}" in text["text"] and "p.2" in text["text"]

    # The same row read off the page as search_pages showed it maps back to the same page region.
    seen = SeenImage.whole_page(page.page_id, page.width, page.height, *smart_resize(page.width, page.height))
    box = from_page_box(EUROPE_ROW, seen)
    content = tools["crop_page"].invoke({"page_id": page.page_id, "x1": box.x1, "y1": box.y1, "x2": box.x2,
                                         "y2": box.y2, "seen_width": seen.width, "seen_height": seen.height})
    assert decode(content[1]).size == image.size
    assert "[160.0, 356.0, 1060.0, 394.0]" in content[0]["text"]


@pytest.mark.parametrize("args, expected", [
    ({"page_id": "000000000000-p9", "x1": 0, "y1": 0, "x2": 10, "y2": 10},
     "page '000000000000-p9' is not in the store"),
    ({"x1": 50, "y1": 50, "x2": 10, "y2": 10}, "is empty or inverted"),
    ({"x1": 0, "y1": 0, "x2": 10, "y2": 10, "seen_width": 500}, "only one of seen_width=500"),
    ({"x1": 0, "y1": 0, "x2": "wide", "y2": 10}, "the arguments are invalid (x2:"),
])
def test_crop_tool_errors_come_back_as_text(store, tools, args, expected):
    args = {"page_id": page_of(store, NORTHWIND, 2).page_id, **args}
    message = tools["crop_page"].invoke({"type": "tool_call", "id": "call-3", "name": "crop_page", "args": args})
    assert message.status == "error" and expected in message.content and message.artifact is None


def test_search_tool_errors_come_back_as_text(tools):
    message = tools["search_pages"].invoke({"type": "tool_call", "id": "call-4", "name": "search_pages",
                                            "args": {"query": "revenue", "document": "nothing-*.pdf"}})
    assert message.status == "error" and "no indexed document matches 'nothing-*.pdf'" in message.content
    message = tools["search_pages"].invoke({"type": "tool_call", "id": "call-5", "name": "search_pages",
                                            "args": {"query": "revenue", "k": 50}})
    assert message.status == "error" and "k: Input should be less than or equal to 10" in message.content


def test_tool_schemas_describe_every_argument(tools):
    for tool in tools.values():
        schema = tool.tool_call_schema.model_json_schema()
        assert tool.description and all(p.get("description") for p in schema["properties"].values())
    assert set(tools["crop_page"].args) == {"page_id", "x1", "y1", "x2", "y2", "seen_width", "seen_height"}


def test_tools_run_off_the_event_loop(tools):
    message = asyncio.run(tools["search_pages"].ainvoke(
        {"type": "tool_call", "id": "call-6", "name": "search_pages", "args": {"query": "carbon-neutral", "k": 1}}))
    assert message.artifact[0]["page_number"] == 4


# -- the tools in a LangGraph ReAct agent -----------------------------------------------------------------------------
class ToolCallingFakeModel(GenericFakeChatModel):
    """langchain-core's scripted fake chat model, standing in for a real tool-calling model (none can run here).

    `bind_tools` keeps the bound tools' names and returns the model itself (the scripted replies hold the calls); each
    call's input messages are kept in `inputs`, so a scripted turn can read what the tools sent back.
    """

    bound_tools: list[str] = Field(default_factory=list)
    inputs: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ToolCallingFakeModel:
        self.bound_tools = [tool.name for tool in tools]
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> Any:
        self.inputs.append(list(messages))
        return super()._generate(messages, stop, run_manager, **kwargs)


def react_turns(model: ToolCallingFakeModel, pages: dict) -> Iterator[AIMessage]:
    """What a tool-calling model would say to q03: search, zoom into the Europe row of the top page, answer."""
    question = QUESTIONS["q03"]
    yield AIMessage("", tool_calls=[{"id": "call-search", "name": "search_pages",
                                     "args": {"query": question["question"], "k": 2}}])
    # The top hit as the model read it in the tool's text: its page id and the size its image was shown at.
    found = model.inputs[-1][-1]
    text = next(block["text"] for block in found.content if block["type"] == "text" and "page_id " in block["text"])
    page_id, width, height = re.search(r"page_id (\S+): .*shown at (\d+)x(\d+)", text).groups()
    page = pages[page_id]
    # Where the row lies on that image, in its pixels (a real model reads it off the image block).
    seen = SeenImage.whole_page(page_id, page.width, page.height, int(width), int(height))
    box = from_page_box(EUROPE_ROW, seen)
    yield AIMessage("", tool_calls=[{"id": "call-crop", "name": "crop_page", "args": {
        "page_id": page_id, "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2,
        "seen_width": seen.width, "seen_height": seen.height}}])
    yield AIMessage(f"USD {question['answer']} million ({page.document} p.{page.page_number}, Table 1).")


@pytest.mark.parametrize("call", ["invoke", "ainvoke"])
# langgraph 1.x points to langchain.agents.create_agent, in the `langchain` package, which pagelens does not depend
# on; create_react_agent is the same loop in langgraph itself.
@pytest.mark.filterwarnings("ignore::langgraph.warnings.LangGraphDeprecatedSinceV10")
def test_a_react_agent_calls_the_tools(store, search, call):
    from langgraph.prebuilt import create_react_agent

    model = ToolCallingFakeModel(messages=iter(()))
    # The script reads the model's inputs as it goes, so it is made once the model exists.
    model.messages = react_turns(model, {page.page_id: page for page in store.pages()})
    agent = create_react_agent(model, pagelens_tools(store, search))
    given = {"messages": [HumanMessage(QUESTIONS["q03"]["question"])]}
    state = agent.invoke(given) if call == "invoke" else asyncio.run(agent.ainvoke(given))

    messages = state["messages"]
    assert model.bound_tools == ["search_pages", "crop_page"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage, ToolMessage, AIMessage]
    found, cropped, final = messages[2], messages[4], messages[5]

    assert (found.name, found.tool_call_id, found.status) == ("search_pages", "call-search", "success")
    assert [b["type"] for b in found.content] == ["text", "text", "image", "text", "image"]
    top = found.artifact[0]
    assert (top["document"], top["page_number"]) == (NORTHWIND, 2) and len(found.artifact) == 2
    assert top["page_id"] in found.content[1]["text"]
    assert decode(found.content[2]).size == (top["seen_width"], top["seen_height"])

    assert (cropped.name, cropped.tool_call_id, cropped.status) == ("crop_page", "call-crop", "success")
    text, image = cropped.content
    assert cropped.artifact["page_id"] == top["page_id"] and cropped.artifact["page_number"] == 2
    assert cropped.artifact["box"] == pytest.approx(EUROPE_ROW.as_list(), abs=0.01)
    assert decode(image).size == (cropped.artifact["width"], cropped.artifact["height"])
    assert decode(image).size == smart_resize(round(EUROPE_ROW.width), round(EUROPE_ROW.height))
    assert top["page_id"] in text["text"] and "p.2" in text["text"]

    # The model was given both tool messages, images included, and its last turn ended the run.
    assert model.inputs[-1][-1].content == cropped.content and model.inputs[1][-1].content == found.content
    assert final.content == f"USD 4.2 million ({NORTHWIND} p.2, Table 1)." and not final.tool_calls


# -- the agent as a Runnable ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runnable(store, search):
    return agent_runnable(Agent(store, ExtractivePolicy(), AgentSettings(), retriever=search))


def assert_cites_gold(result: dict, qid: str) -> None:
    question = QUESTIONS[qid]
    assert result["status"] == "answered" and question["answer"] in result["answer"]
    assert any((e["document"], e["page_number"]) == (question["document"], question["page"])
               for e in result["evidence"])


def test_agent_runnable_answers_with_evidence(runnable):
    assert_cites_gold(runnable.invoke(QUESTIONS["q03"]["question"]), "q03")
    result = runnable.invoke({"question": QUESTIONS["q06"]["question"]})
    assert_cites_gold(result, "q06")
    assert result["policy"] == "extractive" and [s["kind"] for s in result["steps"]][-1] == "answer"


def test_agent_runnable_streams_steps_then_the_result(runnable):
    chunks = list(runnable.stream({"question": QUESTIONS["q02"]["question"]}))
    assert all(len(chunk) == 1 for chunk in chunks)
    steps = [chunk["step"] for chunk in chunks[:-1]]
    assert [s["kind"] for s in steps][:2] == ["observe", "search"] and steps[-1]["kind"] == "answer"
    assert_cites_gold(chunks[-1]["result"], "q02")
    assert chunks[-1]["result"]["steps"] == steps


def test_agent_runnable_rejects_input_without_a_question(runnable):
    from pagelens.errors import BadInputError

    with pytest.raises(BadInputError, match="has no 'question' string"):
        runnable.invoke({"query": "revenue"})


def test_agent_runnable_ainvoke_and_astream_do_not_block_the_loop(store, search):
    loop_ran = threading.Event()

    class GatedPolicy(ExtractivePolicy):
        def complete(self, request):
            gated(loop_ran, "the agent")
            return super().complete(request)

    runnable = agent_runnable(Agent(store, GatedPolicy(), AgentSettings(), retriever=search))
    assert_cites_gold(asyncio.run(with_loop_running(runnable.ainvoke(QUESTIONS["q14"]["question"]), loop_ran)),
                      "q14")

    async def collect():
        return [chunk async for chunk in runnable.astream(QUESTIONS["q07"]["question"])]

    chunks = asyncio.run(collect())
    assert "step" in chunks[0] and "result" in chunks[-1]
    assert_cites_gold(chunks[-1]["result"], "q07")


class Report(TypedDict, total=False):
    question: str
    answer: str | None
    status: str
    evidence: list[dict]
    report: str


def test_agent_runnable_is_a_node_of_a_parent_graph(runnable):
    from langgraph.checkpoint.memory import InMemorySaver

    def write_report(state: Report) -> dict:
        pages = sorted({f"{e['document']} p.{e['page_number']}" for e in state["evidence"]})
        return {"report": f"{state['answer']} [{'; '.join(pages)}]"}

    graph = StateGraph(Report)
    graph.add_node("research", runnable)
    graph.add_node("write_report", write_report)
    graph.add_edge(START, "research")
    graph.add_edge("research", "write_report")
    graph.add_edge("write_report", END)
    # The parent's own checkpointer stays the parent's: the agent runs as a self-contained run inside the node.
    parent = graph.compile(checkpointer=InMemorySaver())

    state = parent.invoke({"question": QUESTIONS["q04"]["question"]}, {"configurable": {"thread_id": "sync"}})
    assert_cites_gold(state, "q04")
    assert state["report"].endswith(f"[{NORTHWIND} p.2]")

    state = asyncio.run(parent.ainvoke({"question": QUESTIONS["q12"]["question"]},
                                       {"configurable": {"thread_id": "async"}}))
    assert_cites_gold(state, "q12")
    updates = list(parent.stream({"question": QUESTIONS["q06"]["question"]}, {"configurable": {"thread_id": "s"}},
                                 stream_mode="updates", subgraphs=True))
    assert [next(iter(update)) for namespace, update in updates] == ["research", "write_report"]


class Research(TypedDict, total=False):
    question: str
    answer: str | None
    status: str | None
    evidence: list[dict]
    images: list[dict]
    report: str


def test_agent_graph_is_a_subgraph_of_a_parent_graph(store, search):
    from langgraph.checkpoint.memory import InMemorySaver

    agent = Agent(store, ExtractivePolicy(), AgentSettings(), retriever=search)

    def write_report(state: Research) -> dict:
        # The subgraph hands back its own state: each evidence item names the shown image it cites (1-based).
        cited = [state["images"][item["image"] - 1] for item in state["evidence"]]
        pages = sorted({f"{image['document']} p.{image['page_number']}" for image in cited})
        return {"report": f"{state['answer']} [{'; '.join(pages)}]"}

    graph = StateGraph(Research, context_schema=AgentContext)
    graph.add_node("research", agent.graph)
    graph.add_node("write_report", write_report)
    graph.add_edge(START, "research")
    graph.add_edge("research", "write_report")
    graph.add_edge("write_report", END)
    # The compiled agent graph is the node itself: it shares the parent's checkpointer and runs in the parent's
    # context, which carries the store, retriever and policy its nodes act with.
    parent = graph.compile(checkpointer=InMemorySaver())

    state = parent.invoke({"question": QUESTIONS["q04"]["question"]}, {"configurable": {"thread_id": "sub"}},
                          context=agent.context)
    assert state["status"] == "answered" and QUESTIONS["q04"]["answer"] in state["answer"]
    assert state["report"].endswith(f"[{NORTHWIND} p.2]")

    state = asyncio.run(parent.ainvoke({"question": QUESTIONS["q12"]["question"]},
                                       {"configurable": {"thread_id": "sub-async"}}, context=agent.context))
    assert QUESTIONS["q12"]["answer"] in state["answer"]
    assert state["report"].endswith("[marrow_estuary_eelgrass_study.pdf p.1]")

    updates = list(parent.stream({"question": QUESTIONS["q06"]["question"]}, {"configurable": {"thread_id": "s"}},
                                 context=agent.context, stream_mode="updates", subgraphs=True))
    parent_nodes = [next(iter(update)) for namespace, update in updates if not namespace]
    agent_nodes = [next(iter(update)) for namespace, update in updates if namespace]
    assert parent_nodes == ["research", "write_report"]
    # The agent's own steps stream from inside the parent, under the research node's namespace.
    assert {namespace[0].split(":")[0] for namespace, _ in updates if namespace} == {"research"}
    assert agent_nodes[:3] == ["start", "observe", "search"] and agent_nodes[-2:] == ["evidence", "answer"]
