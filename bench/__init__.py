"""Reproducible benchmarks of ollama-fleet against peers: ``python -m bench --help``.

Every benchmark runs on loopback, starts its own processes (emulator, balancer, nginx,
LiteLLM, load generator) and stops them by PID, is bounded in count and time, prints a
Markdown table with the command that made it, and writes JSON under ``bench/out/``.
Nothing here imports matplotlib except :mod:`bench.plots`.
"""
