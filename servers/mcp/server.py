"""`pagelens serve mcp`: the page store's tools over the Model Context Protocol, for desktop assistants.

An assistant connected here is the policy: it searches, views and crops pages itself, or calls `ask` to run
pagelens' own agent. The tools and the page resource are in servers/mcp/tools.py; this module assembles the server
(the store, retriever and agent opened once, in its lifespan), runs it, and writes the desktop configuration entry.

- stdio (what desktop assistants launch): stdout carries nothing but protocol. The SDK points fd 1 at stderr while
  it serves; logs, and anything printed before, go to stderr.
- streamable HTTP (`/mcp`): binds 127.0.0.1 by default; the Host and Origin headers are checked against DNS
  rebinding (localhost, the bound address and `ServingSettings.allowed_origins`); with a token set
  (PAGELENS_MCP_TOKEN), a request without `Authorization: Bearer <token>` gets 401.
- Arguments that do not fit a tool's input schema (a missing query, a null number, an over-long text) are a tool
  error of one sentence naming each argument and how to give it (`PageLensMCPServer`), not pydantic's report.
- The server holds the store while it runs (Milvus Lite allows one process), so `pagelens index` meanwhile is
  refused with one sentence naming this server; a Milvus server (PAGELENS_MILVUS_URI) lifts that limit.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pagelens import __version__
from pagelens.errors import BadInputError
from pagelens.servers.config import Settings
from pagelens.servers.limits import AllowedCallers
from pagelens.servers.mcp.tools import TOOLS, PageLensContext, page_resource
from pagelens.tools.corpus.store import PageStore

INSTRUCTIONS = (
    "pagelens holds indexed page images (PDF pages, scans, slides, photos) with their text. search_pages finds the "
    "pages for a query (with thumbnails); view_page shows a page; crop_region zooms into a box of it to read small "
    "text, table cells or chart values; list_documents lists what is indexed; ask runs pagelens' own agent. Cite "
    "pages by document and page number."
)


def build_server(settings: Settings, store: PageStore | None = None) -> MCPServer[PageLensContext]:
    """The MCP server over the store `settings` name. Its lifespan (entered when it starts serving, or when an
    in-process `Client` connects) sets up the retriever and the agent that every tool call shares, on `store` when
    given (the caller closes it), else on a store it opens and closes itself."""

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[PageLensContext]) -> AsyncIterator[PageLensContext]:
        # Imported here, not at the top: `pagelens mcp-config` needs none of the graph (LangGraph).
        from pagelens.graph.build import Agent
        from pagelens.graph.policies import make_policy
        from pagelens.tools.search import Retriever

        with contextlib.ExitStack() as owned:
            opened = store or owned.enter_context(PageStore(settings.store, settings.retrieval))
            retriever = Retriever(opened)
            agent = Agent(opened, make_policy(settings.policy), settings.agent, retriever=retriever)
            yield PageLensContext(opened, retriever, agent, settings.serving)

    # WARNING: the SDK logs every request at INFO, which would bury a desktop assistant's server log.
    server = PageLensMCPServer("pagelens", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan,
                               log_level="WARNING")
    for tool in TOOLS:
        server.add_tool(tool, annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    server.resource("page://{page_id}", name="page", mime_type="image/jpeg")(page_resource)
    return server


class PageLensMCPServer(MCPServer[PageLensContext]):
    """The SDK's server, with arguments that fail the tool's schema reported as one sentence naming each argument
    and the fix, instead of pydantic's multi-line report."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None
                        ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as error:
            cause = error.__cause__
            if isinstance(error, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            schema = next((tool.input_schema for tool in await self.list_tools() if tool.name == name), {})
            # Still caused by the ValidationError: the SDK then logs the arguments' names only, not their values.
            raise ToolError(f"Error executing tool {name}: {argument_error(cause, schema)}") from cause


def argument_error(error: ValidationError, schema: dict) -> str:
    """Pydantic's report on a tool's arguments as one sentence: each problem, then how to give the first argument
    named (its description in the tool's input schema)."""
    problems, first = [], None
    for item in error.errors(include_url=False):
        loc = item["loc"] or ("arguments",)
        name = str(loc[0]) + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
        first = first or str(loc[0])
        if item["type"] == "missing":
            problems.append(f"{name} is missing")
            continue
        message = re.sub(r"^(Input|String|List|Value|Dictionary) ", "", " ".join(item["msg"].split()))
        given = item["input"]
        if isinstance(given, str) and item["type"] == "string_too_long":
            shown = f"{len(given):,} characters"
        else:
            shown = json.dumps(given, default=str)
            shown = shown if len(shown) <= 40 else shown[:40] + "…"
        problems.append(f"{name} {message[:1].lower()}{message[1:]} (got {shown})")
    description = schema.get("properties", {}).get(first, {}).get("description")
    fix = (f"give {first}, {description.rstrip('.')}" if description
           else "give the arguments as the tool's input schema (tools/list) describes them")
    return f"{'; '.join(problems)}; {fix}."


def run_mcp_server(settings: Settings, *, transport: Literal["stdio", "http"] = "stdio", host: str = "127.0.0.1",
                   port: int = 8765) -> None:
    """Serve until the client closes stdin (stdio) or the process is stopped (HTTP, at http://host:port/mcp)."""
    if transport not in ("stdio", "http"):
        raise BadInputError(f"transport {transport!r} is unknown; use 'stdio' or 'http'.")
    # Opening the store before serving turns a store that cannot be opened (held by another process, built with
    # other settings) into one clear error and exit status 2, not a traceback from inside the transport. Anything
    # printed meanwhile goes to stderr: on stdio, stdout is the protocol's.
    with contextlib.redirect_stdout(sys.stderr):
        store = PageStore(settings.store, settings.retrieval, holder="pagelens serve mcp")
    with store:
        server = build_server(settings, store)
        if transport == "stdio":
            print(f"pagelens MCP server on stdio, store {store.home}", file=sys.stderr, flush=True)
            server.run("stdio")
            return
        import uvicorn

        app: ASGIApp = server.streamable_http_app(
            transport_security=transport_security(host, settings.serving.origins))
        if settings.serving.mcp_token:
            app = RequireBearerToken(app, settings.serving.mcp_token)
        shown = f"[{host}]" if ":" in host else host
        print(f"pagelens MCP server on http://{shown}:{port}/mcp, store {store.home}", file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()


def transport_security(host: str, origins: Sequence[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection for HTTP, with the hosts and origins the agent API allows too (`AllowedCallers`).
    Requests without Origin (clients that are not browsers) pass."""
    callers = AllowedCallers.of(host, list(origins))
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=list(callers.hosts),
                                     allowed_origins=list(callers.origins))


class RequireBearerToken:
    """ASGI middleware: an HTTP request without `Authorization: Bearer <token>` gets 401 (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(
                    {"error": "invalid_token",
                     "error_description": "this server needs the header Authorization: Bearer <token>, with the "
                                          "token its PAGELENS_MCP_TOKEN holds."},
                    status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def mcp_config(settings: Settings) -> dict:
    """The `claude_desktop_config.json` entry that runs `pagelens serve mcp` on this store.

    The command is the `pagelens` executable beside the running interpreter (so the entry uses this installation
    even when another is first on PATH), else the one on PATH, else this interpreter with `-m pagelens`.
    """
    beside = shutil.which("pagelens", path=str(Path(sys.executable).parent)) or shutil.which("pagelens")
    if beside is not None:
        command, args = str(Path(beside).absolute()), ["serve", "mcp"]
    else:
        command, args = str(Path(sys.executable).absolute()), ["-m", "pagelens", "serve", "mcp"]
    env = {"PAGELENS_HOME": str(settings.store.home.resolve())}
    if settings.store.milvus_uri:
        env["PAGELENS_MILVUS_URI"] = settings.store.milvus_uri
    return {"mcpServers": {"pagelens": {"command": command, "args": args, "env": env}}}
