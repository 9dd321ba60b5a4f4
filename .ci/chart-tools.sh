#!/usr/bin/env bash
# Extra system tools for the chart/image tests (tests/chart), installed idempotently on
# Debian bookworm (as root).  Run alone (`bash .ci/chart-tools.sh`) or sourced after
# .ci/tools.sh; the image test runs it itself when something is missing.
#
#   - docker.io (dockerd + docker CLI) and debootstrap, from Debian;
#   - a base image root filesystem, made once with
#       debootstrap --variant=minbase --include=python3,python3-venv bookworm
#     and cached as a tarball (no image registry is reachable here, so `FROM python:...`
#     cannot be pulled: the Dockerfile takes its base image as a build argument).
#
# Exports OLLAMA_FLEET_BASE_ROOTFS (path of the tarball, for `docker import`).

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
fi

# shellcheck source=.ci/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_ofc_main() {
    local cache="${OLLAMA_FLEET_CACHE:-$HOME/.cache/ollama-fleet}"
    local rootfs="$cache/base-bookworm-python3.tar"
    local log="$cache/chart-tools.log"
    mkdir -p "$cache"
    : >"$log"
    (
        exec 9>"$cache/.chart-lock"
        flock 9
        ofci_apt_install "$log" chart-tools docker.io debootstrap || return
        if [ ! -s "$rootfs" ]; then
            echo "chart-tools: debootstrap bookworm base image (about a minute)" >&2
            local tree="$cache/debootstrap-tree"
            rm -rf "$tree"
            debootstrap --variant=minbase --include=python3,python3-venv bookworm "$tree" \
                http://deb.debian.org/debian >>"$log" 2>&1 || {
                tail -n 30 "$log" >&2
                return 1
            }
            rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
            tar -C "$tree" -cf "$rootfs.tmp" . && mv "$rootfs.tmp" "$rootfs"
            rm -rf "$tree"
        fi
    )
    export OLLAMA_FLEET_BASE_ROOTFS="$rootfs"
    echo "chart-tools: ready: base rootfs $rootfs" >&2
}

_ofc_main
unset -f _ofc_main
