#!/usr/bin/env bash
# The CPU twin of runs/scaling_laws.sh: a tiny looped model (s2: 128 wide, prelude 2 / recur 4 x r /
# coda 2, r sampled with E[r] = 4) against the standard GPT of the same width and DEPTH layers, both at
# the same training FLOPs (--target-flops BUDGET), for each seed; base_eval gives the looped runs' val
# bpb at r = 1..16; dev/isoflop_table.py prints the table and draws the PNG. About 3 minutes a run on
# 2 cores (4 runs by default).
#
#   bash runs/isoflop_cpu.sh
#   SEEDS="42" DEPTH=20 bash runs/isoflop_cpu.sh
#   DRY_RUN=1 bash runs/isoflop_cpu.sh           # print every command; run only the input checks
#
# Settings (environment): SEEDS (42 7), DEPTH (8: the looped model's unique layers), BUDGET (1.13e13
# FLOPs: 100 steps of 4096 tokens of the looped model), DATA_DIR (../shared/data/pretrain if present,
# else dev/sample_data), NANOCHAT_BASE_DIR (out/isoflop). A run whose checkpoint exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh

SEEDS=${SEEDS:-42 7}
DEPTH=${DEPTH:-8}
BUDGET=${BUDGET:-1.13e13}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$PWD/out/isoflop}
if [ -z "${DATA_DIR:-}" ]; then
    if [ -d ../shared/data/pretrain ]; then DATA_DIR=../shared/data/pretrain; else DATA_DIR=dev/sample_data; fi
fi
for seed in $SEEDS; do [[ $seed =~ ^[0-9]+$ ]] || die "SEEDS: '$seed' is not a non-negative integer"; done
[[ $DEPTH =~ ^[1-9][0-9]*$ ]] || die "DEPTH: '$DEPTH' is not a positive integer"
[[ $BUDGET =~ ^[0-9]+(\.[0-9]+)?e[0-9]+$ ]] || die "BUDGET: '$BUDGET' is not like 1.13e13"
need_shards "$DATA_DIR"
activate_venv
mkdir -p "$NANOCHAT_BASE_DIR"
if [ ! -e "$NANOCHAT_BASE_DIR/tokenizer" ]; then
    run python -m scripts.tok_train --data-dir "$DATA_DIR" --vocab-size 4096
fi
COMMON=(--size 2 --max-seq-len 256 --device-batch-size 16 --total-batch-size 4096 --target-flops "$BUDGET"
        --eval-every -1 --eval-tokens 32768 --sample-every -1 --core-metric-every -1 --data-dir "$DATA_DIR")
LOOPED=() GPT=()
for seed in $SEEDS; do
    for arch in looped gpt; do
        if [ "$arch" = looped ]; then tag=loop_s$seed; extra=(); LOOPED+=("$tag"); else
            tag=gpt${DEPTH}_s$seed; extra=(--arch gpt --n-recur "$DEPTH"); GPT+=("$tag"); fi
        if compgen -G "$NANOCHAT_BASE_DIR/base_checkpoints/$tag/step_*/meta.json" >/dev/null; then
            echo "skip $tag: it already has a checkpoint"
            continue
        fi
        run python -m scripts.base_train "${COMMON[@]}" "${extra[@]}" --seed "$seed" --model-tag "$tag"
        if [ "$arch" = looped ]; then
            run python -m scripts.base_eval --model-tag "$tag" --eval bpb --recur 1,2,4,8,16 --data-dir "$DATA_DIR" \
                --eval-tokens 32768 --device-batch-size 16
        fi
    done
done
join() { local IFS=,; echo "$*"; }
run python dev/isoflop_table.py --looped "$(join "${LOOPED[@]}")" --gpt "$(join "${GPT[@]}")" \
    --out "$NANOCHAT_BASE_DIR/isoflop.png"
