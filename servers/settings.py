"""Serving settings: what the MCP server, the agent API and the policy server accept, from whom, how much at once."""

from __future__ import annotations

from dataclasses import dataclass

from pagelens.errors import BadInputError


@dataclass(frozen=True)
class ServingSettings:
    api_key: str = ""
    """Bearer key the agent API requires (PAGELENS_API_KEY); empty: no authentication (bind to loopback)."""
    mcp_token: str = ""
    """Bearer token the MCP server requires over HTTP (PAGELENS_MCP_TOKEN); empty: none. stdio needs none."""
    allowed_origins: str = ""
    """Comma-separated browser Origins the HTTP servers accept besides localhost (DNS-rebinding protection)."""
    max_running: int = 8
    """Agent API runs at once; more wait in the queue."""
    max_queued: int = 64
    """Agent API runs waiting; beyond this a request gets 429 with Retry-After."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body the agent API and the policy server take."""
    max_image_pixels: int = 40_000_000
    """Largest image (width x height) an agent API or policy server request may carry."""
    max_request_pixels: int = 64_000_000
    """Most pixels, all its images together, one agent API or policy server request may carry (decoded, each
    pixel costs the server several bytes: 64M pixels is about 1 GB at its peak)."""
    max_result_bytes: int = 1024 * 1024
    """Largest MCP tool result, base64 images included (desktop clients cap results at 1 MiB)."""

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.max_queued < 0:
            raise BadInputError("max_running must be at least 1 and max_queued at least 0.")
        if (self.max_body_bytes < 1024 or self.max_image_pixels < 1 or self.max_request_pixels < 1
                or self.max_result_bytes < 64 * 1024):
            raise BadInputError("max_body_bytes (>= 1024), max_image_pixels and max_request_pixels (>= 1) and "
                                "max_result_bytes (>= 65536) are too small; raise them.")

    @property
    def origins(self) -> tuple[str, ...]:
        return tuple(origin.strip() for origin in self.allowed_origins.split(",") if origin.strip())
