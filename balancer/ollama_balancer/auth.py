"""``python -m ollama_balancer.auth hash [KEY]``: print an API key's ``key_sha256``.

The keys file's parser and the per-key limits are :mod:`ollama_balancer.core.auth`; this
module is only the command that hashes a key for that file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .core.auth import hash_key

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Without KEY it reads one line from stdin, so the key stays out of shell history."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "hash" or len(args) > 2:
        print("usage: python -m ollama_balancer.auth hash [KEY]  (KEY read from stdin if omitted)")
        return 2
    key = args[1] if len(args) == 2 else sys.stdin.readline().rstrip("\r\n")
    if not key:
        print("empty key", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
