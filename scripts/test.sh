#!/usr/bin/env bash
# Quickstart command (b): set up ./.venv if needed, then run the whole test suite offline.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/dnnlib -x`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh")"
cd "$repo"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec "$py" -m pytest -q "$@"
