#!/usr/bin/env bash
# Few-shot table row "LeCam + KD-DLGAN" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 29.38 / 19.65 / 8.41 / 31.89 / 50.22.
# KD-DLGAN added alongside the LeCam term.
# Usage: bash scripts/fewshot/lecam_kd.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main lecam_kd --aug=diffaug --lecam="$LECAM_WEIGHT" "${KD_DLGAN_OPTS[@]}" -- "$@"
