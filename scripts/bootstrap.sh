# shellcheck shell=bash
# Sourced by the README commands: creates or reuses ./.venv and installs the
# package (editable, with dev extras) whenever pyproject.toml changed.
# Safe to source repeatedly; prints what it does.
set -euo pipefail

CRETOAI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CRETOAI_VENV:-$CRETOAI_ROOT/.venv}"
PYTHON="${CRETOAI_PYTHON:-}"

_find_python() {
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    if [ -z "$PYTHON" ]; then
        PYTHON="$(_find_python)" || {
            echo "error: Python 3.11 is required (looked for python3.11 and python3)." >&2
            exit 1
        }
    fi
    echo "==> creating virtualenv $VENV with $PYTHON"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian splits venv/ensurepip into python3.11-venv.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing python3.11-venv (Debian)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-venv >/dev/null
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV"
        else
            echo "error: '$PYTHON -m venv' failed; on Debian run: sudo apt-get install python3.11-venv" >&2
            exit 1
        fi
    fi
fi

STAMP="$VENV/.cretoai-installed"
WANT="$(sha256sum "$CRETOAI_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "==> installing cretoai-node and its dependencies into $VENV (first run takes a minute)"
    # (Some machines' pip configs point at local mirrors that may be absent; hide that noise.)
    "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v "is ignored: it is neither" || true; }
    "$VENV/bin/python" -m pip install -q -e "$CRETOAI_ROOT[dev]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
    echo "$WANT" > "$STAMP"
fi

export PATH="$VENV/bin:$PATH"

# Byte-code of the project's own modules (an editable install has none until a module is
# first imported, and PYTHONDONTWRITEBYTECODE stops that import from writing it): without
# a current .pyc each of a node's service processes compiles every module from source at
# every start, which leaves 2-3 MB more in its heap (8.4 MB per node idle; docs/node.md,
# "Memory").
# Only stale files are compiled again: 0.2 s when nothing changed.
"$VENV/bin/python" -m compileall -q -j 0 \
    "$CRETOAI_ROOT/cretoai" "$CRETOAI_ROOT/services" "$CRETOAI_ROOT/node" \
    "$CRETOAI_ROOT/devkit" "$CRETOAI_ROOT/bench" ||
    echo "warning: could not byte-compile the project (a read-only checkout?); the services compile it at every start" >&2
