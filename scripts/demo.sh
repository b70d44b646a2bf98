#!/usr/bin/env bash
# Quickstart command (a): set up ./.venv if needed, draw the built-in sample dataset
# (sample:shapes, 32x32, labelled) into datasets/, and print its summary.
# Training on it arrives with the training loop (see README, "Status").
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
"$py" - "$data" <<'PY'
import sys
from training.dataset import ImageFolderDataset
ds = ImageFolderDataset(sys.argv[1], use_labels=True)
img, label = ds[0]
print(f"Dataset {ds.name}: {len(ds)} images, shape {list(ds.image_shape)}, "
      f"labels {ds.label_shape}, classes {ds.class_names}")
print(f"First item: image {img.dtype} {list(img.shape)}, label {label.tolist()}")
PY
