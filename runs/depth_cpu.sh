#!/usr/bin/env bash
# More iterations, harder problems: easy-to-hard (depth) extrapolation on CPU. Pointer chasing to
# a fixed point (tasks/pointer_chase.py): training questions need at most MAX_DEPTH lookups, the test
# sets need 1..MAX_DEPTH, 2x and 4x as many, at the same length. A tiny looped model (prelude 1 /
# recur 1 x r / coda 1, 128 wide, 4 heads, r sampled with E[r] = RECUR_MEAN) and a standard GPT of
# GPT_DEPTH layers at the same training FLOPs (--target-flops BUDGET), for each seed, through the
# normal path: byte-level tokenizer, parquet shards, dataloader, base_train. scripts/depth_eval.py
# then gives accuracy per test depth x r and with adaptive exit (table, JSON, heatmap). About 15
# minutes a run on 2 free cores (4 runs by default) plus a few minutes of eval.
#
#   bash runs/depth_cpu.sh
#   SEEDS="42" bash runs/depth_cpu.sh
#   DRY_RUN=1 bash runs/depth_cpu.sh           # print every command; run only the input checks
#   N_SYMBOLS=52 TEST_DEPTHS=1,2,4,8,16,32 ARCHS=looped EVAL_RECUR=1,4,16,32,48,64 \
#       NANOCHAT_BASE_DIR=out/depth52 bash runs/depth_cpu.sh      # 8x the trained depth: 52-letter tables
#
# Settings (environment): SEEDS (42 7), MAX_DEPTH (4), RECUR_MEAN (6), GPT_DEPTH (8: 1 + 6 + 1, the
# looped model's layers at the mean r), BUDGET (7e13 FLOPs: ~1260 steps of 64 documents of the
# looped model), N_SYMBOLS (24 letters per table, at most 52: a..z then A..Z; the sequence length
# follows), TEST_DEPTHS (1..MAX_DEPTH, 2x and 4x it), ARCHS (looped gpt), EVAL_RECUR (r values of the
# eval, 1,2,4,8,16,32; the largest is also the adaptive-exit cap), NANOCHAT_BASE_DIR (out/depth).
# Data and tokenizer live under it; a run whose checkpoint exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh

SEEDS=${SEEDS:-42 7}
MAX_DEPTH=${MAX_DEPTH:-4}
RECUR_MEAN=${RECUR_MEAN:-6}
GPT_DEPTH=${GPT_DEPTH:-8}
BUDGET=${BUDGET:-7e13}
N_SYMBOLS=${N_SYMBOLS:-24}
TEST_DEPTHS=${TEST_DEPTHS:-$(seq -s, 1 "$MAX_DEPTH"),$((2 * MAX_DEPTH)),$((4 * MAX_DEPTH))}
ARCHS=${ARCHS:-looped gpt}
EVAL_RECUR=${EVAL_RECUR:-1,2,4,8,16,32}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$PWD/out/depth}
for seed in $SEEDS; do [[ $seed =~ ^[0-9]+$ ]] || die "SEEDS: '$seed' is not a non-negative integer"; done
[[ $MAX_DEPTH =~ ^[1-9]$ ]] || die "MAX_DEPTH: '$MAX_DEPTH' must be 1..9 (dev.make_pointer_chase checks that the table holds the test depths)"
[[ $RECUR_MEAN =~ ^[1-9][0-9]*$ ]] || die "RECUR_MEAN: '$RECUR_MEAN' is not a positive integer"
[[ $GPT_DEPTH =~ ^[1-9][0-9]*$ ]] || die "GPT_DEPTH: '$GPT_DEPTH' is not a positive integer"
[[ $BUDGET =~ ^[0-9]+(\.[0-9]+)?e[0-9]+$ ]] || die "BUDGET: '$BUDGET' is not like 3e13"
[[ $N_SYMBOLS =~ ^[0-9]+$ ]] && [ "$N_SYMBOLS" -le 52 ] || die "N_SYMBOLS: '$N_SYMBOLS' must be an integer <= 52"
[[ $TEST_DEPTHS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "TEST_DEPTHS: '$TEST_DEPTHS' is not a comma-separated list of depths"
[[ $EVAL_RECUR =~ ^[0-9]+(,[0-9]+)*$ ]] || die "EVAL_RECUR: '$EVAL_RECUR' is not a comma-separated list of r values"
for arch in $ARCHS; do [[ $arch =~ ^(looped|gpt)$ ]] || die "ARCHS: '$arch' is not looped or gpt"; done
activate_venv
DATA_DIR=$NANOCHAT_BASE_DIR/data
mkdir -p "$NANOCHAT_BASE_DIR"
if [ ! -e "$DATA_DIR/test_d$MAX_DEPTH.jsonl" ]; then
    run python -m dev.make_pointer_chase --out "$DATA_DIR" --max-depth "$MAX_DEPTH" --n-symbols "$N_SYMBOLS" \
        --test-depths "$TEST_DEPTHS"
    will_make "$DATA_DIR"
fi
need_shards "$DATA_DIR"
if [ ! -e "$NANOCHAT_BASE_DIR/tokenizer" ]; then
    run python -m scripts.tok_train --data-dir "$DATA_DIR" --vocab-size 265  # byte level: every letter one token
fi
# one document per row: BOS, N table entries "ab " (the last without its space), "|", "qb", 7 x " kb"
# = 3N + 24 tokens = T + 1 (T = 95 at 24 letters)
T=$((3 * N_SYMBOLS + 23))
COMMON=(--size 2 --n-head 4 --max-seq-len "$T" --device-batch-size 64 --total-batch-size $((64 * T)) --target-flops "$BUDGET"
        --eval-every -1 --eval-tokens $((640 * T)) --sample-every -1 --core-metric-every -1 --data-dir "$DATA_DIR")
TAGS=()
for seed in $SEEDS; do
    for arch in $ARCHS; do
        if [ "$arch" = looped ]; then tag=loop_s$seed
            extra=(--n-prelude 1 --n-recur 1 --n-coda 1 --recur-mean "$RECUR_MEAN" --set max_r=16 --set inject_init=sum)
        else tag=gpt${GPT_DEPTH}_s$seed; extra=(--arch gpt --n-recur "$GPT_DEPTH"); fi
        TAGS+=("$tag")
        if compgen -G "$NANOCHAT_BASE_DIR/base_checkpoints/$tag/step_*/meta.json" >/dev/null; then
            echo "skip $tag: it already has a checkpoint"
            continue
        fi
        run python -m scripts.base_train "${COMMON[@]}" "${extra[@]}" --seed "$seed" --model-tag "$tag"
    done
done
join() { local IFS=,; echo "$*"; }
run python -m scripts.depth_eval --model-tags "$(join "${TAGS[@]}")" --data-dir "$DATA_DIR" --recur "$EVAL_RECUR" \
    --exit-cap "${EVAL_RECUR##*,}" --out "$NANOCHAT_BASE_DIR/depth_eval"
