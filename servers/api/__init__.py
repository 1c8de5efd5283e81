"""The agent as an OpenAI-compatible chat completions API (`pagelens serve api`)."""
