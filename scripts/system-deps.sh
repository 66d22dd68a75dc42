#!/usr/bin/env bash
# Installs the Debian packages some tests need, when they are missing:
#   prometheus   /usr/bin/promtool and /usr/bin/prometheus (tests/test_metrics_promtool.py,
#                tests/cluster/test_prometheus.py; tests/deployment/test_compose.py builds
#                its Prometheus image from it)
#   docker.io    dockerd and docker: tests/deployment/test_compose.py runs compose.yaml
#                on an engine of its own (its own data root and socket)
#   debootstrap  that test's base image (no image registry needed)
# Idempotent: a package already installed is skipped, and `apt-get update` runs only
# when something is missing. Never fails the caller: without root (or sudo without a
# password) or without apt-get it prints a warning and exits 0, and the tests that need
# a missing tool skip with a reason that names it.
#
# Usage: scripts/system-deps.sh            install what is missing
#        scripts/system-deps.sh --check    only report; exit 1 if something is missing
#        CRETOAI_SYSTEM_DEPS_DRY_RUN=1 scripts/system-deps.sh   simulate (apt-get -s)
#
# Packages are installed without starting their services: /usr/sbin/policy-rc.d answers
# 101 ("not allowed") during the install (created only if absent, removed after), so the
# `prometheus` package's daemon does not start (it would listen on :9090); any
# prometheus process that appears during the install anyway is stopped by its pid.
set -euo pipefail

# One package per line: what the tests need. (Add to this list, in this one place.)
PACKAGES=(
    prometheus
    docker.io
    debootstrap
)

say() { echo "==> system-deps: $*"; }
warn() { echo "warning: system-deps: $*" >&2; }

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
    warn "not a Debian system (no dpkg-query); install these yourself: ${PACKAGES[*]}"
    exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
    if installed "$package"; then
        say "$package: already installed"
    else
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    warn "missing: ${missing[*]}"
    exit 1
fi
say "missing: ${missing[*]}"

SUDO=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        warn "missing ${missing[*]}, and not root (nor passwordless sudo): not installing."
        warn "run as root: apt-get update && apt-get install -y ${missing[*]}"
        warn "the tests that need them will be skipped (they say which tool is missing)"
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    warn "missing ${missing[*]}, and apt-get is not available: not installing"
    exit 0
fi

simulate=()
if [ -n "${CRETOAI_SYSTEM_DEPS_DRY_RUN:-}" ]; then
    simulate=(-s)
    say "dry run (apt-get -s): nothing is changed"
fi

POLICY=/usr/sbin/policy-rc.d
made_policy=""
cleanup() {
    if [ -n "$made_policy" ]; then
        "${SUDO[@]}" rm -f "$POLICY"
        say "removed $POLICY"
    fi
}
trap cleanup EXIT
if [ -z "${simulate[*]}" ] && [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# written by cretoai scripts/system-deps.sh during an install\nexit 101\n' |
        "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    made_policy=1
    say "wrote $POLICY (no service starts during the install)"
fi

# The packaged daemon runs as the user `prometheus` (tests run theirs as themselves).
before="$(pgrep -x -u prometheus prometheus 2>/dev/null || true)"
export DEBIAN_FRONTEND=noninteractive
say "apt-get update"
if ! "${SUDO[@]}" apt-get update -qq; then
    warn "apt-get update failed: not installing ${missing[*]}"
    exit 0
fi
say "apt-get install ${missing[*]}"
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${simulate[@]}" "${missing[@]}"; then
    warn "apt-get install ${missing[*]} failed; the tests that need them will be skipped"
    exit 0
fi

# A daemon the install started regardless (no policy-rc.d honoured): stop it by pid.
for pid in $(pgrep -x -u prometheus prometheus 2>/dev/null || true); do
    if ! grep -qx "$pid" <<<"$before"; then
        warn "the install started prometheus (pid $pid): stopping it"
        "${SUDO[@]}" kill "$pid" || true
    fi
done
if command -v ss >/dev/null 2>&1 && ss -Hltn 'sport = :9090' | grep -q .; then
    warn "something listens on :9090 after the install: $(ss -Hltnp 'sport = :9090' | head -1)"
fi
if [ -z "${simulate[*]}" ]; then
    for package in "${missing[@]}"; do
        if installed "$package"; then
            say "$package: installed"
        else
            warn "$package: still not installed"
        fi
    done
fi
