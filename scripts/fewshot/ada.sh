#!/usr/bin/env bash
# Few-shot table row "ADA" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 45.69 / 26.62 / 12.90 / 40.77 / 56.83.
# ADA bgc pipe, target 0.6, p adapted every 4 steps over 500 kimg (100 when resuming).
# Usage: bash scripts/fewshot/ada.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main ada --aug=ada -- "$@"
