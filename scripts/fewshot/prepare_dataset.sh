#!/usr/bin/env bash
# Build the 256x256 training zips of the few-shot table with dataset_tool.py.
#
#     bash scripts/fewshot/prepare_dataset.sh DATASET SOURCE [DEST_DIR]
#     bash scripts/fewshot/prepare_dataset.sh all SOURCE_ROOT [DEST_DIR]
#
# DATASET: obama | grumpy_cat | panda | animalface_cat | animalface_dog. SOURCE: a folder (or zip)
# of that dataset's images, e.g. DiffAugment's 100-shot-obama / AnimalFace-cat archives (100, 100,
# 100, 160 and 389 images). With `all`, SOURCE_ROOT holds one folder or zip per dataset, named
# after it (obama, grumpy_cat, ... or obama.zip, ...). Output: DEST_DIR/<dataset>.zip (default
# datasets/fewshot), center-cropped to a square and resized to 256x256 (Lanczos); an existing zip
# is replaced only once the new one is complete. Environment: PYTHON (default ./.venv).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
datasets="obama grumpy_cat panda animalface_cat animalface_dog"

if [ $# -lt 2 ]; then
    echo "usage: bash $0 DATASET|all SOURCE [DEST_DIR]   (DATASET: ${datasets// / | })" >&2
    exit 2
fi
name="$1"
source_path="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
dest_dir="${3:-$repo/datasets/fewshot}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    py="$(bash "$repo/scripts/setup_env.sh")"
fi
mkdir -p "$dest_dir"
dest_dir="$(cd "$dest_dir" && pwd)"

build() {  # build NAME SOURCE
    case " $datasets " in
        *" $1 "*) ;;
        *) echo "unknown dataset '$1'; use one of: $datasets" >&2; exit 2 ;;
    esac
    if [ ! -e "$2" ]; then
        echo "$2 does not exist; pass the folder or zip of the $1 images" >&2
        exit 2
    fi
    (cd "$repo" && "$py" dataset_tool.py --source="$2" --dest="$dest_dir/$1.zip" --resolution=256x256 \
        --transform=center-crop --overwrite)
}

if [ "$name" = "all" ]; then
    for dataset in $datasets; do
        if [ -e "$source_path/$dataset" ]; then
            build "$dataset" "$source_path/$dataset"
        elif [ -e "$source_path/$dataset.zip" ]; then
            build "$dataset" "$source_path/$dataset.zip"
        else
            echo "skipping $dataset: neither $source_path/$dataset nor $source_path/$dataset.zip exists" >&2
        fi
    done
else
    build "$name" "$source_path"
fi
