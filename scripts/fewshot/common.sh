#!/usr/bin/env bash
# Shared by the few-shot scripts (one per row of the paper's 100-shot / AnimalFace table, METHOD.md 5).
# Sourced, not run. Usage of every row script:
#
#     bash scripts/fewshot/<row>.sh DATASET ZIP [extra train.py options...]
#
#     DATASET  obama | grumpy_cat | panda | animalface_cat | animalface_dog
#     ZIP      the 256x256 dataset built by scripts/fewshot/prepare_dataset.sh
#
# Common recipe (METHOD.md 4, A18): DiffAugment's StyleGAN2 low_shot preset (--cfg=lowshot: batch 8,
# R1 gamma 10, lr 0.002, G EMA 10 kimg, 2-layer mapping, mbstd 4), x-flips on as DiffAugment's
# low-shot runs, 300 kimg for the 100-shot sets and 500 kimg for AnimalFace, FID as the few-shot
# protocol (fid5k_full: 5k fakes vs every training image). Every row keeps this recipe and only
# swaps the data-limited method, so the rows differ in exactly the options each script adds.
#
# Environment: OUTDIR (default runs/fewshot), GPUS (default 1), SEED (default 0; the paper reports
# mean +- std over runs: repeat with SEED=1, 2, ...), PYTHON (default: ./.venv via setup_env.sh),
# TEACHER_CKPT (local CLIP ViT-B/32 weights for the +KD rows on offline machines), DRY_RUN=1
# (print the options and exit; same as passing --dry-run).
set -euo pipefail

FEWSHOT_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FEWSHOT_DATASETS="obama grumpy_cat panda animalface_cat animalface_dog"

# KD-DLGAN as the paper adds it to every baseline (METHOD.md 4): AGKD + CGKD, weight 10 each, CLIP ViT-B/32.
KD_DLGAN_OPTS=(--kd=agkd,cgkd)
# The table's "DA + KD (CLIP)" row: plain feature KD (FitNets through the projection head, METHOD.md 6.7).
KD_CLIP_OPTS=(--kd=fitnets)
# LeCam weight: the paper does not give it; the official StyleGAN2 scripts use 3e-7 (FFHQ-1k) and
# 1e-6 (CIFAR); the smaller-data value is used here (METHOD.md 6.4 [INF]). Decay 0.99 (zero-debiased).
LECAM_WEIGHT="${LECAM_WEIGHT:-3e-7}"

fewshot_usage() {
    echo "usage: bash $0 DATASET ZIP [train.py options...]   (DATASET: ${FEWSHOT_DATASETS// / | })" >&2
    exit 2
}

fewshot_kimg() {  # the DA low_shot schedule: 300 kimg for 100-shot, 500 kimg for AnimalFace (METHOD.md A18)
    case "$1" in
        obama|grumpy_cat|panda) echo 300 ;;
        animalface_cat|animalface_dog) echo 500 ;;
        *) echo "unknown dataset '$1'; use one of: $FEWSHOT_DATASETS" >&2; exit 2 ;;
    esac
}

# fewshot_main ROW [method options...] -- DATASET ZIP [extra user options...]: what every row script runs.
fewshot_main() {
    local row="$1" method=()
    shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        method+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    [ $# -ge 2 ] || fewshot_usage
    local dataset="$1" zip="$2"
    shift 2
    fewshot_train "$row" "$dataset" "$zip" "${method[@]}" "$@"
}

# fewshot_train ROW DATASET ZIP [method options...] [extra user options...]
fewshot_train() {
    local row="$1" dataset="$2" zip="$3"
    shift 3
    local kimg
    kimg="$(fewshot_kimg "$dataset")"
    if [ ! -e "$zip" ]; then
        echo "$zip does not exist; build it with: bash scripts/fewshot/prepare_dataset.sh $dataset IMAGE_DIR" >&2
        exit 2
    fi
    local py="${PYTHON:-}"
    if [ -z "$py" ]; then
        py="$(bash "$FEWSHOT_REPO/scripts/setup_env.sh")"
    fi
    local teacher=()
    if [ -n "${TEACHER_CKPT:-}" ] && [[ " $* " == *" --kd="* ]]; then
        teacher=(--teacher-ckpt="$TEACHER_CKPT")
    fi
    local dry=()
    if [ "${DRY_RUN:-0}" = "1" ]; then
        dry=(--dry-run)
    fi
    cd "$FEWSHOT_REPO"
    set -x
    "$py" train.py --outdir="${OUTDIR:-runs/fewshot}" --data="$zip" --gpus="${GPUS:-1}" --seed="${SEED:-0}" \
        --cfg=lowshot --mirror=1 --kimg="$kimg" --metrics=fid5k_full --desc="$row" \
        "$@" "${teacher[@]}" "${dry[@]}"
}
