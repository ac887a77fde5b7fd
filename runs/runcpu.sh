#!/usr/bin/env bash
# The whole pipeline at toy scale on a CPU, no network needed:
# environment -> tokenizer -> tokenizer eval -> packed batches.
# Data: DATA_DIR if set, else ../shared/data/pretrain if present, else the sample shipped in dev/sample_data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash runs/setup_env.sh
. .venv/bin/activate
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$PWD/out/cpu}
if [ -z "${DATA_DIR:-}" ]; then
    if [ -d ../shared/data/pretrain ]; then DATA_DIR=../shared/data/pretrain; else DATA_DIR=dev/sample_data; fi
fi
echo "data: $DATA_DIR | artifacts: $NANOCHAT_BASE_DIR"

# a small vocabulary: the toy corpus is a few MB
python -m scripts.tok_train --data-dir "$DATA_DIR" --vocab-size 4096
python -m scripts.tok_eval --data-dir "$DATA_DIR"
python dev/packing_waste.py --data-dir "$DATA_DIR" --seq-len 512 --batch-size 8 --batches 20
