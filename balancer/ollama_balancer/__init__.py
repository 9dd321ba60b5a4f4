"""ollama-fleet: a model-aware load balancer, operator and emulator for Ollama fleets."""

__version__ = "0.1.0"

#: The Ollama server version the emulator reports and the contract was read from.
OLLAMA_VERSION = "0.33.0"

__all__ = ["OLLAMA_VERSION", "__version__"]
