#!/usr/bin/env bash
# Package the Helm charts of a release (run by .github/workflows/release.yaml, and by the test
# suite so that the packaged charts are known good):
#
#   bash .ci/package-charts.sh VERSION OUTDIR
#
# Lints both charts strictly, then writes OUTDIR/ollama-fleet-crds-VERSION.tgz and
# OUTDIR/ollama-fleet-VERSION.tgz with version and appVersion set to VERSION (a leading "v" is
# dropped: tag v1.2.3 -> chart 1.2.3, image tag 1.2.3).  helm: $OLLAMA_FLEET_HELM or PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -ne 2 ]; then
    echo "usage: $0 VERSION OUTDIR" >&2
    exit 2
fi
version="${1#v}"
out="$2"
helm="${OLLAMA_FLEET_HELM:-helm}"
mkdir -p "$out"
for chart in charts/ollama-fleet-crds charts/ollama-fleet; do
    "$helm" lint --strict "$chart" >/dev/null
    "$helm" package "$chart" --version "$version" --app-version "$version" --destination "$out"
done
