"""The kernel every ollama-fleet application shares: Ollama's names, durations, quantities,
error bodies, the wire client with its ``/api/tags`` and ``/api/ps`` parsers, and how a
backend (an Ollama server) is named and reached.

Nothing here imports the balancer, the emulator or the operator (import-linter checks it).
"""

#: The Ollama server version the emulator reports and docs/ollama.md describes.
OLLAMA_VERSION = "0.33.0"

__all__ = ["OLLAMA_VERSION"]
