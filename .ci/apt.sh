#!/usr/bin/env bash
# Shared by .ci/tools.sh and .ci/chart-tools.sh (sourced, never run alone).
#
# ofci_apt_install LOG WHO PKG...  installs the Debian packages among PKG that are missing,
# quietly (output to LOG; its tail is shown on failure), running `apt-get update` at most
# once per shell.  Packages such as nginx and docker.io start a daemon from their postinst;
# a temporary policy-rc.d forbids that, so nothing listens on 0.0.0.0 behind our back.

ofci_apt_install() {
    local log="$1" who="$2" missing=() pkg
    shift 2
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local rc=0
    if [ "${OFCI_APT_UPDATED:-0}" -eq 0 ]; then
        echo "$who: apt-get update" >&2
        apt-get update -qq >>"$log" 2>&1 || rc=$?
        OFCI_APT_UPDATED=1
    fi
    local own_policy=0
    if [ "$rc" -eq 0 ]; then
        echo "$who: apt-get install ${missing[*]}" >&2
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            own_policy=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >>"$log" 2>&1 || rc=$?
        [ "$own_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    fi
    if [ "$rc" -ne 0 ]; then
        echo "$who: FAILED: apt-get for ${missing[*]}  (last lines of $log:)" >&2
        tail -n 40 "$log" >&2
    fi
    return "$rc"
}
