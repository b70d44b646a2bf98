#!/usr/bin/env bash
# Few-shot table row "LeCam" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 33.16 / 24.93 / 10.16 / 34.18 / 54.88.
# LeCam on DiffAugment (the paper's LeCam numbers are LeCam's own DA + R_LC results), weight $LECAM_WEIGHT
# (default 3e-7), EMA decay 0.99.
# Usage: bash scripts/fewshot/lecam.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main lecam --aug=diffaug --lecam="$LECAM_WEIGHT" -- "$@"
