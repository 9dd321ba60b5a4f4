"""The pure parts of the fleet-wide shared state: its interface, values, key names, Lua
scripts, the in-memory mirror routing reads, and the local (single-replica) implementation.

The store that talks to Redis/Valkey, the fallback wrapper and the factory are I/O and live
in :mod:`ollama_balancer.shared`.
"""
