#!/usr/bin/env bash
# Few-shot table row "DA" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 46.87 / 27.08 / 12.06 / 42.44 / 58.85.
# DiffAugment color,translation,cutout on every image D sees (the lowshot preset's default).
# Usage: bash scripts/fewshot/da.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main da --aug=diffaug -- "$@"
