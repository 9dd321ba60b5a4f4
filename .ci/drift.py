"""Where the installed packages differ from a lock export.

    python .ci/drift.py requirements/test.txt

Prints one line per package whose installed version is not the locked one (or that one side
lacks), as a Markdown table, so the scheduled drift run can say which upstream releases it
tested.  Exit status 0 always: the test suite, not this table, decides the run.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.markers import Marker

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line)
        if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
            out[_norm(m.group(1))] = m.group(2)
    return out


def installed() -> dict[str, str]:
    return {
        _norm(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    }


def main(argv: list[str]) -> int:
    lock = locked(Path(argv[1] if len(argv) > 1 else "requirements/test.txt"))
    have = installed()
    have.pop("ollama-fleet", None)
    rows = [
        (name, lock.get(name, "-"), have.get(name, "-"))
        for name in sorted(set(lock) | set(have))
        if lock.get(name) != have.get(name) and name not in ("pip", "setuptools", "wheel")
    ]
    print("| package | locked | installed |")
    print("|---|---|---|")
    for name, old, new in rows:
        print(f"| {name} | {old} | {new} |")
    if not rows:
        print("| (none: the newest allowed releases are the locked ones) | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
