"""Where a release goes, from charts/ollama-fleet/values.yaml, for the release workflow.

    python3 .ci/release_targets.py TAG   ->  lines for $GITHUB_OUTPUT:
        version=1.2.3
        registry=ghcr.io
        image=ghcr.io/ollama-fleet/ollama-fleet
        charts=oci://ghcr.io/ollama-fleet/charts

The image goes to `image.repository` of values.yaml (so the chart's default image is the one
pushed), the charts to `charts` beside it on the same registry.  Fails when the tag does not
match the package version in pyproject.toml, the lock (uv.lock, from which the image installs
its packages) and the chart's version: one version names the chart, its image and its lock.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def targets(tag: str, root: Path = ROOT) -> dict[str, str]:
    version = tag.removeprefix("v")
    if not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", version):
        raise ValueError(f"tag {tag!r} is not a version (vMAJOR.MINOR.PATCH)")
    pyproject = (root / "pyproject.toml").read_text()
    package = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    chart = yaml.safe_load((root / "charts/ollama-fleet/Chart.yaml").read_text())
    sources = [
        ("pyproject.toml", package and package.group(1)),
        ("uv.lock", locked_version(root)),
        ("charts/ollama-fleet/Chart.yaml", chart["version"]),
        ("charts/ollama-fleet/Chart.yaml appVersion", chart["appVersion"]),
    ]
    for what, found in sources:
        if found != version:
            raise ValueError(f"tag {tag} does not match version {found} in {what}")
    repository = yaml.safe_load((root / "charts/ollama-fleet/values.yaml").read_text())["image"][
        "repository"
    ]
    registry, _, path = repository.partition("/")
    owner = path.rpartition("/")[0]
    if "." not in registry or not owner:
        raise ValueError(f"image.repository {repository!r} names no registry/owner/name")
    return {
        "version": version,
        "registry": registry,
        "image": repository,
        "charts": f"oci://{registry}/{owner}/charts",
    }


def locked_version(root: Path = ROOT) -> str | None:
    """The project's own version as uv.lock recorded it when it was last locked."""
    lock = tomllib.loads((root / "uv.lock").read_text())
    for package in lock.get("package", []):
        if package.get("name") == "ollama-fleet":
            return str(package.get("version"))
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: release_targets.py TAG", file=sys.stderr)
        return 2
    try:
        out = targets(argv[0])
    except ValueError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    for key, value in out.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
