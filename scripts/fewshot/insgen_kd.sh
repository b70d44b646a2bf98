#!/usr/bin/env bash
# Few-shot table row "InsGen + KD-DLGAN" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 38.28 / 22.16 / 9.51 / 32.39 / 50.13.
# KD-DLGAN added to D's main loss next to the contrastive terms.
# Usage: bash scripts/fewshot/insgen_kd.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main insgen_kd --aug=ada --insgen "${KD_DLGAN_OPTS[@]}" -- "$@"
