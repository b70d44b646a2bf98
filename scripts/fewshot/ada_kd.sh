#!/usr/bin/env bash
# Few-shot table row "ADA + KD-DLGAN" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 31.78 / 19.76 / 8.85 / 32.81 / 51.12.
# KD-DLGAN on the ADA-augmented images.
# Usage: bash scripts/fewshot/ada_kd.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main ada_kd --aug=ada "${KD_DLGAN_OPTS[@]}" -- "$@"
