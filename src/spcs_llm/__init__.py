"""spcs-llm: Snowflake Cortex LLM functions, self-hosted (SPCS service functions, OpenAI API, llama.cpp/vLLM)."""

from .config import Settings
from .server import create_app

__all__ = ["Settings", "create_app"]
__version__ = "0.1.0"
