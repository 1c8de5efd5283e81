"""The MCP server as clients use it: the SDK's own client over stdio and over streamable HTTP against real
`pagelens serve mcp` subprocesses, and in process for the detailed cases; a real indexed sample store throughout.

Servers are module-scoped (each process loads MiniLM once, ~5 s on two cores), each on its own copy of the store,
since a Milvus Lite store is open in one process at a time.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult
from PIL import Image

from pagelens.graph.langchain import pagelens_tools
from pagelens.servers.config import Settings, load_settings
from pagelens.servers.mcp.server import build_server, mcp_config
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.regions import IMAGE_FACTOR, smart_resize

pytestmark = pytest.mark.anyio

TOOL_NAMES = {"search_pages", "view_page", "crop_region", "list_documents", "ask"}
CAP = 1024 * 1024
NORTHWIND = "northwind_annual_report_2023.pdf"
INVOICE = "invoice_cedar_finch_scan.pdf"
# A tool error: the SDK's prefix, then one sentence pagelens wrote (no line breaks, ending in a full stop).
ONE_SENTENCE = re.compile(r"Error executing tool \w+: [^\n]+\.")
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _copy(sample_home: Path, folder: Path) -> Path:
    home = folder / "store"
    shutil.copytree(sample_home, home)
    return home


def _settings(home: Path, **serving: object) -> Settings:
    settings = load_settings(env={"PAGELENS_HOME": str(home)})
    return replace(settings, serving=replace(settings.serving, **serving))


def _size(result: CallToolResult) -> int:
    """The result's size on the wire, base64 images included."""
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode())


def _images(result: CallToolResult) -> list[Image.Image]:
    return [Image.open(BytesIO(base64.b64decode(block.data))) for block in result.content if block.type == "image"]


def _error(result: CallToolResult) -> str:
    assert result.is_error, result.content
    text = result.content[0].text
    assert ONE_SENTENCE.fullmatch(text), text
    return text


async def _pages(client: Client) -> dict[str, list[str]]:
    listed = (await client.call_tool("list_documents", {})).structured_content
    return {d["name"]: d["page_ids"] for d in listed["documents"]}


# -- over stdio: what a desktop assistant launches ------------------------------------------------------------------
@pytest.fixture(scope="module")
async def stdio(sample_home, tmp_path_factory) -> AsyncIterator[tuple[Client, Path, list[Exception]]]:
    """`python -m pagelens serve mcp` as a subprocess, through the SDK's stdio client; yields the client, the store
    and the transport faults it saw (a line on stdout that is not protocol is one)."""
    folder = tmp_path_factory.mktemp("mcp-stdio")
    home = _copy(sample_home, folder)
    params = StdioServerParameters(command=sys.executable, args=["-m", "pagelens", "serve", "mcp"], cwd=folder,
                                   env={"PAGELENS_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    faults: list[Exception] = []

    async def record(message: object) -> None:
        if isinstance(message, Exception):
            faults.append(message)

    log = folder / "stderr.log"
    with open(log, "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), message_handler=record) as client:
            yield client, home, faults
    assert "Traceback" not in log.read_text(), log.read_text()


async def test_stdio_lists_tools_searches_asks_and_survives_errors(stdio):
    client, _, faults = stdio
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", tool.name)
        assert tool.description and tool.input_schema["type"] == "object"
        assert tool.output_schema and tool.output_schema["type"] == "object"
        assert tool.annotations.read_only_hint
    assert tools["search_pages"].input_schema["properties"]["k"]["description"]

    found = await client.call_tool("search_pages", {"query": "quarterly revenue by region Europe", "k": 3})
    assert not found.is_error
    hits = json.loads(found.content[0].text)["hits"]
    assert found.structured_content["hits"] == hits and len(hits) == 3
    assert set(hits[0]) == {"page_id", "document", "page_number", "score", "relevance", "snippet"}
    assert (hits[0]["document"], hits[0]["page_number"]) == (NORTHWIND, 2)
    thumbnails = _images(found)
    assert len(thumbnails) == 3 and max(thumbnails[0].size) == 256

    answered = await client.call_tool("ask", {"question": "What was Northwind's revenue in Europe in Q3 2023, in "
                                                          "USD million?"})
    result = answered.structured_content
    assert not answered.is_error and result["status"] == "answered" and "4.2" in result["answer"]
    assert result["policy"] == "extractive"
    assert any((c["document"], c["page_number"], c["box"] is not None) == (NORTHWIND, 2, True)
               for c in result["citations"])
    assert len(_images(answered)) == len(result["images"]) >= 1

    assert "'no-such-page'" in _error(await client.call_tool("view_page", {"page_id": "no-such-page"}))
    again = await client.call_tool("view_page", {"page_id": hits[0]["page_id"], "max_pixels": 200_000})
    assert not again.is_error and _images(again)[0].size == (again.structured_content["width"],
                                                             again.structured_content["height"])
    assert faults == []


async def test_index_while_serving_names_the_server_and_leaves_the_store(stdio, cli, sample):
    client, home, _ = stdio
    before = await _pages(client)
    lock = (home / "lock").read_text()
    proc = cli("index", str(sample / "kx40_maintenance_manual.pdf"), home=home, check=False)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert message.count("\n") == 0 and "is open in another process" in message
    assert f"(process {lock})" in message and lock.endswith("pagelens serve mcp")
    assert "PAGELENS_MILVUS_URI" in message
    assert await _pages(client) == before
    found = await client.call_tool("search_pages", {"query": "maintenance intervals", "k": 1})
    assert found.structured_content["hits"][0]["document"] == "kx40_maintenance_manual.pdf"


# -- over streamable HTTP -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http_server(sample_home, tmp_path_factory, pagelens_server) -> Iterator[str]:
    """`pagelens serve mcp --transport http` with a bearer token and one extra allowed origin; yields its /mcp URL."""
    folder = tmp_path_factory.mktemp("mcp-http")
    home = _copy(sample_home, folder)
    (folder / "pagelens.toml").write_text('[serving]\nallowed_origins = "https://app.example.com"\n')
    env = {"PAGELENS_HOME": str(home), "PAGELENS_MCP_TOKEN": TOKEN}
    with pagelens_server(folder, "mcp", "--transport", "http", env=env) as url:
        yield f"{url}/mcp"


def _initialize(url: str, headers: dict[str, str]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "test", "version": "0"}}}
    return httpx.post(url, json=body, headers={"Accept": "application/json, text/event-stream", **headers})


async def test_http_needs_the_token_and_refuses_foreign_origins(http_server):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert _initialize(http_server, {}).status_code == 401
    refused = _initialize(http_server, {"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and "PAGELENS_MCP_TOKEN" in refused.json()["error_description"]
    assert _initialize(http_server, {**bearer, "Origin": "http://evil.example"}).status_code == 403
    assert _initialize(http_server, {**bearer, "Origin": "http://localhost:5173"}).status_code == 200
    assert _initialize(http_server, {**bearer, "Origin": "https://app.example.com"}).status_code == 200

    async with httpx2.AsyncClient(headers=bearer) as http, Client(streamable_http_client(http_server,
                                                                                         http_client=http)) as client:
        pages = await _pages(client)
        assert len(pages) == 5 and sum(map(len, pages.values())) == 12
        shown = await client.call_tool("view_page", {"page_id": pages[NORTHWIND][0]})
        assert not shown.is_error and shown.structured_content["page_number"] == 1


# -- in process: the detailed cases -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def client(sample_home, tmp_path_factory) -> AsyncIterator[Client]:
    server = build_server(_settings(_copy(sample_home, tmp_path_factory.mktemp("mcp-inproc"))))
    async with Client(server) as connected:
        yield connected


async def test_a_slow_ask_holds_up_no_search(sample_home, tmp_path_factory, policy_server):
    slow = 4.0
    url, record = policy_server([
        {"text": "<search>quarterly revenue by region</search>"},
        {"text": "<evidence>\n[1]: the revenue table\n</evidence><answer>4.2</answer>", "seconds": slow},
    ])
    home = _copy(sample_home, tmp_path_factory.mktemp("mcp-slow"))
    server = build_server(load_settings(env={"PAGELENS_HOME": str(home), "PAGELENS_POLICY_URL": url}))
    answered: list[CallToolResult] = []
    async with Client(server) as client:
        async with anyio.create_task_group() as running:
            async def ask() -> None:
                answered.append(await client.call_tool("ask", {"question": "Europe's Q3 revenue?"}))

            running.start_soon(ask)
            with anyio.fail_after(60):  # until the policy has been asked for its slow reply
                while not record.exists() or len(record.read_text().splitlines()) < 2:
                    await anyio.sleep(0.05)
            start = time.perf_counter()
            found = await client.call_tool("search_pages", {"query": "maintenance intervals", "k": 2})
            elapsed = time.perf_counter() - start
            assert answered == []  # the ask is still waiting on its policy

    assert not found.is_error and found.structured_content["hits"]
    assert elapsed < slow / 2, elapsed
    assert answered[0].structured_content["answer"] == "4.2"


async def test_results_stay_under_the_cap_with_huge_requests(client):
    pages = await _pages(client)
    found = await client.call_tool("search_pages", {"query": "revenue", "k": 50})
    assert not found.is_error and len(found.structured_content["hits"]) == 12
    assert found.structured_content["thumbnails"] == 12 and len(_images(found)) == 12
    assert _size(found) < CAP
    # The scanned invoice is ~1.5 MB as PNG: only choosing its format keeps the result under 1 MiB.
    for page_id in (pages[INVOICE][0], pages[NORTHWIND][1]):
        shown = await client.call_tool("view_page", {"page_id": page_id, "max_pixels": 10**12})
        view = shown.structured_content
        assert not shown.is_error and _size(shown) < CAP
        full = smart_resize(view["page_width"], view["page_height"], max_pixels=10**12)
        assert (view["width"], view["height"]) == full == _images(shown)[0].size and view["note"] == ""
        assert view["mime_type"] in ("image/png", "image/jpeg")


async def test_small_cap_downscales_and_leaves_thumbnails_out(sample_home, tmp_path_factory):
    cap = 64 * 1024
    server = build_server(_settings(_copy(sample_home, tmp_path_factory.mktemp("mcp-cap")), max_result_bytes=cap))
    async with Client(server) as small:
        found = await small.call_tool("search_pages", {"query": "revenue", "k": 12})
        result = found.structured_content
        assert _size(found) < cap and 0 < result["thumbnails"] < 12 == len(result["hits"])
        assert len(_images(found)) == result["thumbnails"] and "view_page" in result["note"]
        invoice = (await _pages(small))[INVOICE][0]
        shown = await small.call_tool("view_page", {"page_id": invoice})
        view = shown.structured_content
        assert _size(shown) < cap and view["width"] < view["page_width"] and "downscaled" in view["note"]
        # Made smaller by the seen-size rule itself, so the size still is one a model is shown.
        assert view["width"] % IMAGE_FACTOR == view["height"] % IMAGE_FACTOR == 0
        assert _images(shown)[0].size == (view["width"], view["height"])
        answered = await small.call_tool("ask", {"question": "What was Northwind's revenue in Europe in Q3 2023?"})
        result = answered.structured_content
        assert not answered.is_error and _size(answered) < cap and "downscaled" in result["note"]
        assert [image.size for image in _images(answered)] == [(i["width"], i["height"]) for i in result["images"]]


async def test_crop_maps_a_box_given_in_seen_pixels(client):
    page_id = (await _pages(client))[NORTHWIND][1]
    view = (await client.call_tool("view_page", {"page_id": page_id, "max_pixels": 1224 * 1584 // 4})).structured_content
    assert view["width"] * view["height"] <= 1224 * 1584 // 4 < view["page_width"] * view["page_height"]
    scale_x, scale_y = view["page_width"] / view["width"], view["page_height"] / view["height"]
    cropped = await client.call_tool("crop_region", {"page_id": page_id, "box": [100, 150, 300, 250],
                                                     "seen_width": view["width"], "seen_height": view["height"]})
    region = cropped.structured_content
    assert not cropped.is_error
    assert region["box"] == pytest.approx([100 * scale_x, 150 * scale_y, 300 * scale_x, 250 * scale_y], abs=0.01)
    assert region["normalized"] == pytest.approx([region["box"][0] / 1224, region["box"][1] / 1584,
                                                  region["box"][2] / 1224, region["box"][3] / 1584], abs=1e-5)
    image = _images(cropped)[0]
    assert image.size == (region["width"], region["height"]) and image.width % 28 == 0 and image.height % 28 == 0

    unzoomed = await client.call_tool("crop_region", {"page_id": page_id, "box": [100, 150, 300, 250], "zoom": False})
    assert _images(unzoomed)[0].size == (200, 100)
    clamped = await client.call_tool("crop_region", {"page_id": page_id, "box": [1000, 1400, 5000, 5000]})
    assert clamped.structured_content["box"] == [1000, 1400, 1224, 1584]


async def test_mcp_and_langchain_show_a_page_and_a_crop_at_the_same_seen_size(sample_home, tmp_path_factory):
    """One rule sizes what a model is shown (tools.regions.smart_resize): on one open store, the MCP server (through
    the SDK's client) and the LangChain tools show the same page and the same crop at the same size, and say so."""
    settings = _settings(_copy(sample_home, tmp_path_factory.mktemp("mcp-langchain")))
    with PageStore(settings.store, settings.retrieval) as store:
        tools = {tool.name: tool for tool in pagelens_tools(store)}
        async with Client(build_server(settings, store)) as client:
            found = await tools["search_pages"].ainvoke({"type": "tool_call", "id": "call-1", "name": "search_pages",
                                                         "args": {"query": "quarterly revenue by region Europe",
                                                                  "k": 1}})
            hit = found.artifact[0]
            assert (hit["document"], hit["page_number"]) == (NORTHWIND, 2)
            viewed = await client.call_tool("view_page", {"page_id": hit["page_id"]})
            view = viewed.structured_content
            seen = (hit["seen_width"], hit["seen_height"])
            assert (view["width"], view["height"]) == seen == _images(viewed)[0].size
            assert seen == smart_resize(view["page_width"], view["page_height"]) and view["note"] == ""

            # The Europe row of Table 1, read off the page as both showed it.
            box = [round(v * seen[0] / view["page_width"], 2) for v in (160, 356, 1060, 394)]
            cropped = await client.call_tool("crop_region", {"page_id": hit["page_id"], "box": box,
                                                             "seen_width": seen[0], "seen_height": seen[1]})
            zoomed = await tools["crop_page"].ainvoke({"type": "tool_call", "id": "call-2", "name": "crop_page",
                                                       "args": {"page_id": hit["page_id"], "x1": box[0],
                                                                "y1": box[1], "x2": box[2], "y2": box[3],
                                                                "seen_width": seen[0], "seen_height": seen[1]}})
    mcp, langchain = cropped.structured_content, zoomed.artifact
    assert mcp["box"] == langchain["box"] and mcp["note"] == ""
    assert (mcp["width"], mcp["height"]) == (langchain["width"], langchain["height"]) == _images(cropped)[0].size
    sent = Image.open(BytesIO(base64.b64decode(zoomed.content[1]["base64"])))
    assert sent.size == (mcp["width"], mcp["height"]) and mcp["width"] % IMAGE_FACTOR == 0


async def test_bad_input_is_one_sentence_and_the_server_keeps_serving(client):
    page_id = (await _pages(client))[NORTHWIND][0]
    cases = [
        ("crop_region", {"page_id": page_id, "box": [5000, 5000, 6000, 6000]}, "lies outside page"),
        ("crop_region", {"page_id": page_id, "box": [300, 300, 100, 100]}, "empty or inverted"),
        ("crop_region", {"page_id": page_id, "box": [1, 2, 3]}, "give four"),
        ("crop_region", {"page_id": page_id, "box": [1, 2, 3, 4], "seen_width": 600}, "give both"),
        ("crop_region", {"page_id": page_id, "box": [1, 2, 3, 4], "seen_width": 0, "seen_height": 0},
         "seen size 0x0 is not positive"),
        ("crop_region", {"page_id": "nope-p1", "box": [1, 2, 3, 4]}, "'nope-p1' is not indexed"),
        ("search_pages", {"query": "   "}, "the query is empty"),
        ("search_pages", {"query": "revenue", "k": 500}, "k=500 is out of range"),
        ("search_pages", {"query": "revenue", "k": 0}, "k=0 is out of range"),
        ("search_pages", {"query": "revenue", "document": "/etc/*"}, "no indexed document matches '/etc/*'"),
        ("view_page", {"page_id": page_id, "max_pixels": 10}, "max_pixels=10 is too small"),
        ("ask", {"question": ""}, "the question is empty"),
    ]
    for tool, arguments, expected in cases:
        assert expected in _error(await client.call_tool(tool, arguments)), (tool, arguments)
    assert not (await client.call_tool("view_page", {"page_id": page_id})).is_error


async def test_huge_mistyped_and_unmappable_arguments_are_one_sentence(client):
    page_id = (await _pages(client))[NORTHWIND][1]
    mebibyte = "revenue " * (CAP // 8)
    cases = [
        ("search_pages", {"query": mebibyte}, "query should have at most 2000 characters (got 1,048,576 characters)"),
        ("ask", {"question": mebibyte}, "question should have at most 2000 characters"),
        ("view_page", {"page_id": mebibyte}, "page_id should have at most 500 characters"),
        ("search_pages", {}, "query is missing; give query, what to look for, in words"),
        ("search_pages", {"query": "revenue", "k": None}, "k should be a valid integer (got null); give k, how many"),
        ("crop_region", {"page_id": page_id, "box": [None, 1, 2, 3]},
         "box[0] should be a valid number (got null); give box, [x1, y1, x2, y2]"),
        ("crop_region", {"box": [1, 2, 3, "x"]}, "page_id is missing; box[3] should be a valid number"),
        # A seen size of 10^9 maps the box to a ten-thousandth of a page pixel: an error, not a 1-pixel crop.
        ("crop_region", {"page_id": page_id, "box": [0, 0, 100, 100], "seen_width": 10**9, "seen_height": 10**9},
         "read on a 1000000000x1000000000 image maps to [0.0, 0.0, 0.0001, 0.0002] in page pixels, under one pixel"),
    ]
    for tool, arguments, expected in cases:
        result = await client.call_tool(tool, arguments)
        assert expected in _error(result) and _size(result) < 4096, (tool, arguments)


async def test_document_glob_filters_the_search(client):
    found = await client.call_tool("search_pages", {"query": "revenue", "k": 10, "document": "kx40_*"})
    hits = found.structured_content["hits"]
    assert len(hits) == 3 and {h["document"] for h in hits} == {"kx40_maintenance_manual.pdf"}


async def test_pages_are_resources(client):
    templates = (await client.list_resource_templates()).resource_templates
    assert [(t.uri_template, t.mime_type) for t in templates] == [("page://{page_id}", "image/jpeg")]
    listed = (await client.call_tool("list_documents", {})).structured_content
    assert (listed["total_documents"], listed["total_pages"], listed["note"]) == (5, 12, "")
    page_id = (await _pages(client))[NORTHWIND][2]
    contents = (await client.read_resource(f"page://{page_id}")).contents[0]
    assert contents.mime_type == "image/jpeg"
    with Image.open(BytesIO(base64.b64decode(contents.blob))) as image:
        assert (image.format, image.size) == ("JPEG", (1224, 1584))
    with pytest.raises(MCPError, match="'nope-p1' is not indexed"):
        await client.read_resource("page://nope-p1")
    with pytest.raises(MCPError):
        await client.read_resource("page://..%2F..%2Fetc%2Fpasswd")


# -- the desktop configuration entry ----------------------------------------------------------------------------------
def test_mcp_config_points_at_this_installation(cli, tmp_path):
    home = tmp_path / "some store"
    entry = json.loads(cli("mcp-config", home=home).stdout)["mcpServers"]["pagelens"]
    assert entry["command"] == str(Path(sys.executable).parent / "pagelens")
    assert entry["args"] == ["serve", "mcp"]
    assert entry["env"] == {"PAGELENS_HOME": str(home.resolve())}
    version = subprocess.run([entry["command"], "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("pagelens ")
    shared = mcp_config(load_settings(env={"PAGELENS_HOME": str(home), "PAGELENS_MILVUS_URI": "http://milvus:19530"}))
    assert shared["mcpServers"]["pagelens"]["env"]["PAGELENS_MILVUS_URI"] == "http://milvus:19530"
