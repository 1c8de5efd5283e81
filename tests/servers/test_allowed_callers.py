"""One rule for who may call the HTTP servers (agent API and MCP), against DNS rebinding."""

from __future__ import annotations

from pagelens.servers.limits import AllowedCallers
from pagelens.servers.mcp.server import transport_security


def test_hosts_and_origins_allowed_by_binding_and_settings():
    callers = AllowedCallers.of("0.0.0.0", ["https://app.example.com", "http://tools.example.org:*"])
    for host in ("127.0.0.1", "localhost:8080", "[::1]:9", "0.0.0.0:8080", "app.example.com", "tools.example.org:*"):
        assert callers.host_allowed(host.replace(":*", ":8443")), host
    for host in ("evil.example.com", "app.example.com.evil.net", "localhost.evil:80", ""):
        assert not callers.host_allowed(host), host
    for origin in ("http://localhost:3000", "https://127.0.0.1", "https://app.example.com", "http://tools.example.org:81"):
        assert callers.origin_allowed(origin), origin
    for origin in ("https://app.example.com:8443", "http://app.example.com", "https://evil.example.com", "null"):
        assert not callers.origin_allowed(origin), origin
    assert AllowedCallers.of("::1", []).host_allowed("[::1]:8080")


def test_the_mcp_server_takes_the_same_lists():
    callers = AllowedCallers.of("127.0.0.1", ["https://app.example.com"])
    settings = transport_security("127.0.0.1", ["https://app.example.com"])
    assert settings.enable_dns_rebinding_protection
    assert settings.allowed_hosts == list(callers.hosts) and settings.allowed_origins == list(callers.origins)
