#!/usr/bin/env bash
# Few-shot table row "APA" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 43.75 / 28.49 / 12.34 / 39.13 / 54.15.
# APA (target 0.6, 500 kimg) stacked on ADA as APA's README recommends (--with-dataaug).
# Usage: bash scripts/fewshot/apa.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main apa --aug=ada --apa -- "$@"
