"""ModelPool operator: keeps declared models pulled and loaded across Ollama pods."""

__all__: list[str] = []
