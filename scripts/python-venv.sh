#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv with the pinned clients of
# tests/python/requirements.txt and prints its interpreter's path on
# standard output; progress goes to standard error. Used by scripts/test.sh
# and by the benchmarks that drive Python clients.
#
# The venv lives in ${XDG_CACHE_HOME:-$HOME/.cache}/pulsar-gateway/venv-<hash>,
# keyed on the requirements; $PYTHON (default python3) creates it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/pulsar-gateway"
REQUIREMENTS="$ROOT/tests/python/requirements.txt"
PYTHON="${PYTHON:-python3}"

command -v "$PYTHON" >/dev/null 2>&1 || {
    echo "error: $PYTHON not found" >&2
    exit 1
}
hash="$(sha256sum "$REQUIREMENTS" | cut -c1-16)"
py_version="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
VENV="$CACHE_ROOT/venv-$hash"
mkdir -p "$CACHE_ROOT"

# Serialise concurrent runs that would build the same venv.
exec 9>"$CACHE_ROOT/venv.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# The stamp is written only after a complete install; it also records the
# interpreter, so a changed python3 rebuilds the venv.
stamp="$VENV/.installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$py_version" ]] &&
    "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "reusing $VENV (Python $py_version)" >&2
else
    echo "creating $VENV with $PYTHON (Python $py_version)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$REQUIREMENTS" >&2
    printf '%s\n' "$py_version" >"$stamp"
fi
exec 9>&-
echo "$VENV/bin/python"
