"""An OpenAI-compatible policy endpoint for a Qwen2.5-VL checkpoint (`pagelens serve policy`) and its backends."""
