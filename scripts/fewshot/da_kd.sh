#!/usr/bin/env bash
# Few-shot table row "DA + KD-DLGAN" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 31.54 / 20.13 / 8.93 / 32.99 / 51.63.
# KD-DLGAN (AGKD + CGKD, weight 10 each) on the DiffAugmented images.
# Usage: bash scripts/fewshot/da_kd.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main da_kd --aug=diffaug "${KD_DLGAN_OPTS[@]}" -- "$@"
