"""The ways in, one folder each: the command line (cli/), the agent API (api/), the MCP server (mcp/) and the policy
server (policy/); beside them, what several share (settings, limits, the chat request, the terminal)."""
