"""The ``ollama-fleet`` command line and demo: the one package that imports every application."""

__version__ = "0.1.0"

__all__ = ["__version__"]
