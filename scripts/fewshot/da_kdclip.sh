#!/usr/bin/env bash
# Few-shot table row "DA + KD (CLIP, plain feature KD)" (METHOD.md 5). Paper FID, Obama / Grumpy Cat / Panda / AnimalFace Cat / Dog:
# 45.22 / 25.62 / 11.24 / 38.31 / 35.13 (Dog as printed).
# Plain CLIP feature distillation (FitNets through D's projection head, weight 10) instead of AGKD + CGKD.
# Usage: bash scripts/fewshot/da_kdclip.sh DATASET ZIP [train.py options...]   (recipe and environment: common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fewshot_main da_kdclip --aug=diffaug "${KD_CLIP_OPTS[@]}" -- "$@"
