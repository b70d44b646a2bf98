#!/usr/bin/env bash
# Quickstart command (a): set up ./.venv if needed, draw the built-in sample dataset
# (sample:shapes, 32x32, 6 labelled classes) into datasets/, then train the `tiny` config on the
# CPU for a few kimg. The run directory appears under runs/ (snapshots, image grids, logs).
# Extra arguments go to train.py (e.g. `bash scripts/demo.sh --kimg=20`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh")"
cd "$repo"
export HF_HUB_OFFLINE=1
data="datasets/shapes32.zip"
if [ ! -f "$data" ]; then
    mkdir -p datasets
    "$py" dataset_tool.py --source=sample:shapes --dest="$data"
fi
"$py" train.py --outdir=runs --data="$data" --cfg=tiny --kimg=4 --snap=2 "$@"
echo "Done: the run directory is $(ls -d "$repo"/runs/*/ | sort | tail -n 1)"
