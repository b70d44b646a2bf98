#!/usr/bin/env bash
# Create ./.venv and install requirements.txt into it, once: a stamp holding the
# requirements' hash makes later calls a no-op until requirements.txt changes.
# Sourced by scripts/demo.sh and scripts/test.sh; prints the venv's python path.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SG2KD_VENV:-$repo/.venv}"
python_bin="${PYTHON:-python3}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
    echo "Creating virtual environment in $venv ..." >&2
    "$python_bin" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "Installing requirements.txt into $venv (about a minute on a fresh machine) ..." >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/requirements.txt" >&2
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
