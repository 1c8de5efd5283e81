"""What the agent API and the policy server both refuse, one implementation for both: bodies over the size cap,
images over the per-image or per-request pixel cap (read from the image headers, before anything is decoded), and
requests without the bearer key when one is set. Refusals are `ApiError`s in OpenAI's error shape.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import ipaddress
import json
import re
import sys
from dataclasses import dataclass

from PIL import Image
from starlette.requests import Request

from pagelens.servers.settings import ServingSettings

# This machine's names as a Host header or a URL writes them.
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg|webp|gif|bmp|tiff);base64,(.*)", re.DOTALL)


@dataclass(frozen=True)
class AllowedCallers:
    """Who may call an HTTP server bound to `host`, against DNS rebinding (a web page whose name now resolves to
    this server must not reach it): the Host header must name loopback, the bound address or an allowed origin's
    host; an Origin header, where a browser sends one, must be a loopback one or one of the allowed origins. An
    entry ending in ":*" allows any port, as MCP's TransportSecuritySettings (which takes these lists) reads them."""

    hosts: tuple[str, ...]
    origins: tuple[str, ...]

    @classmethod
    def of(cls, host: str, origins: tuple[str, ...] | list[str]) -> AllowedCallers:
        bound = f"[{host}]" if ":" in host else host
        names = list(dict.fromkeys((*LOOPBACK, bound)))
        hosts = [*names, *(f"{name}:*" for name in names), *(origin.split("://", 1)[-1] for origin in origins)]
        loopback = [f"{scheme}://{name}{port}" for scheme in ("http", "https") for name in LOOPBACK
                    for port in ("", ":*")]
        return cls(tuple(hosts), (*loopback, *origins))

    @property
    def origin_pattern(self) -> re.Pattern:
        return _pattern(self.origins)

    def host_allowed(self, host: str) -> bool:
        return bool(_pattern(self.hosts).fullmatch(host))

    def origin_allowed(self, origin: str) -> bool:
        return bool(self.origin_pattern.fullmatch(origin))


def _pattern(allowed: tuple[str, ...]) -> re.Pattern:
    """A regex matching any of `allowed`, where a trailing ":*" stands for any port."""
    return re.compile("|".join(re.escape(item[:-2]) + r":\d+" if item.endswith(":*") else re.escape(item)
                               for item in allowed))


class ApiError(Exception):
    """A request the server refuses, in OpenAI's error shape: HTTP status, message, type, param and code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


async def read_json(request: Request, limit: int) -> object:
    """The body as JSON, refused (413) as soon as it is known to be over `limit` bytes."""
    too_large = ApiError(413, f"the request body is over the {limit:,}-byte limit; send fewer or smaller images, or "
                              "raise max_body_bytes in [serving].", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON; send a chat-completions request as JSON.") from None


def check_key(request: Request, key: str, named: str) -> None:
    """Refuse (401) a request without `Authorization: Bearer <key>`, compared in constant time; no key: no check.
    `named` says where the server's key comes from, for the message."""
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, f"the request has no valid API key; send the server's {named} as 'Authorization: Bearer "
                            "KEY' (the openai client's api_key).", "authentication_error", code="invalid_api_key")


def warn_if_exposed(host: str, key: str, named: str) -> None:
    """A warning on stderr when the server listens beyond this machine with no key guarding it."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name rather than an address
        loopback = host == "localhost"
    if not key and not loopback:
        print(f"warning: {host} is not loopback and {named} is not set, so anyone who reaches this port can use "
              f"this server; set {named}.", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ReceivedImage:
    """An image of a request, its header read but its pixels not yet decoded."""

    where: str
    kind: str
    data: bytes
    size: tuple[int, int]

    def decode(self) -> Image.Image:
        try:
            with Image.open(io.BytesIO(self.data)) as image:
                return image.convert("RGB")
        except Exception as exc:  # Pillow signals broken files with many exception types (OSError, SyntaxError, ...)
            raise _unreadable(self.where, self.kind, exc) from None


class ImageBudget:
    """The images of one request, checked against the per-image and per-request pixel caps as each is read, so a
    request over either is refused before any image is decoded."""

    def __init__(self, serving: ServingSettings):
        self.max_image_pixels, self.max_request_pixels = serving.max_image_pixels, serving.max_request_pixels
        self.pixels = 0

    def read(self, url: str, where: str) -> ReceivedImage:
        """The image in a base64 data URL, its size read from its header; web addresses are refused (nothing is
        downloaded)."""
        if url.startswith(("http://", "https://")):
            raise ApiError(400, f"{where} is a web address ({url[:60]}); this server does not download images, so "
                                "send the image inline as a data:image/png;base64 URL.", param=where)
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise ApiError(400, f"{where} is not a base64 image data URL ({url[:40]!r}); send "
                                "data:image/png;base64,... (png, jpeg, webp, gif, bmp or tiff).", param=where)
        try:
            data = base64.b64decode(match[2], validate=True)
        except binascii.Error:
            raise ApiError(400, f"{where} holds invalid base64; encode the image bytes with standard base64.",
                           param=where) from None
        size = None
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                size = image.size
        except Image.DecompressionBombError:
            pass  # Pillow's own cap (about 179M pixels) refused it while reading the header
        except Exception as exc:
            raise _unreadable(where, match[1], exc) from None
        pixels = size[0] * size[1] if size else None
        if pixels is None or pixels > self.max_image_pixels:
            described = f"a {size[0]}x{size[1]} image ({pixels:,} pixels)" if size else "an image"
            raise ApiError(400, f"{where} is {described}, over the {self.max_image_pixels:,}-pixel limit; send it "
                                "smaller or raise max_image_pixels in [serving].", param=where, code="image_too_large")
        self.pixels += pixels
        if self.pixels > self.max_request_pixels:
            raise ApiError(400, f"the request's images up to {where} hold {self.pixels:,} pixels, over the "
                                f"{self.max_request_pixels:,}-pixel limit for one request; send fewer or smaller "
                                "images, or raise max_request_pixels in [serving].", param=where,
                           code="images_too_large")
        return ReceivedImage(where, match[1], data, size)  # type: ignore[arg-type]


def _unreadable(where: str, kind: str, exc: Exception) -> ApiError:
    return ApiError(400, f"{where} does not hold a readable {kind} image ({exc}); send a valid image file's bytes.",
                    param=where)
