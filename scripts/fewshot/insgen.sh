#!/usr/bin/env bash
# Few-shot table row "InsGen" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 45.85 / 27.48 / 12.13 / 41.33 / 55.12.
# InsGen on ADA: real + fake instance discrimination (queues of 5% of the images, x2 with mirror), G term 0.1.
# Usage: bash scripts/fewshot/insgen.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main insgen --aug=ada --insgen -- "$@"
