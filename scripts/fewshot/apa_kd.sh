#!/usr/bin/env bash
# Few-shot table row "APA + KD-DLGAN" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 34.68 / 23.14 / 8.70 / 31.77 / 51.23.
# KD-DLGAN on D's real batch after pseudo-augmentation (some entries are detached fakes).
# Usage: bash scripts/fewshot/apa_kd.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main apa_kd --aug=ada --apa "${KD_DLGAN_OPTS[@]}" -- "$@"
