"""llm-backend: start, watch and stop an OpenAI-compatible LLM server on one machine."""

__version__ = "0.1.0"
