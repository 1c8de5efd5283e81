"""The page store's tools over the Model Context Protocol, for desktop assistants (`pagelens serve mcp`)."""
