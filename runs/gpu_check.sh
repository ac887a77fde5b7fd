#!/usr/bin/env bash
# One prepared check on a single H100/H200 in about 9 minutes, every figure under $OUT:
#   1. training tokens/s and bf16 MFU, compile on: s20 at r = 4 fixed and r sampled against the
#      d20 GPT of equal FLOPs per token (scripts/train_bench)                        <= 2.5 min
#   2. a loss race at equal training FLOPs: s8 against d8, the same shards, tokenizer and
#      RACE_FLOPS each, final val bpb on the same validation tokens (scripts/base_train) <= 5 min
#   3. decode tokens/s at B = 1 and 8: the bare forward loop, the Engine and the Scheduler's
#      thread (dev/decode_bench)                                                     <= 1 min
# then dev/gpu_check_report.py joins them into $OUT/gpu_check.json and $OUT/gpu_check.md. A stage
# that fails or passes its time limit is recorded as such and the others still run.
#
#   NANOCHAT_PYTHON=$(command -v python3) OUT=$OUT DATA_DIR=data/pretrain bash runs/gpu_check.sh  # a GPU machine
#   TINY=1 OUT=/tmp/gc bash runs/gpu_check.sh                   # CPU, about a minute: size 1, tiny shapes
#   DRY_RUN=1 bash runs/gpu_check.sh                            # print every command
#
# Settings (environment): OUT (out/gpu_check), DATA_DIR (../shared/data/pretrain: parquet shards, the
# last one validation; small shards are read again as epochs), RACE_FLOPS (1e16 per model: about 30 s of training on an H100 beside compile and eval), WORK
# (tokenizer and checkpoints, kept out of $OUT: /tmp/nanochat_gpu_check), TINY (0).
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh

OUT=${OUT:-out/gpu_check}
TINY=${TINY:-0}
DATA_DIR=${DATA_DIR:-../shared/data/pretrain}
WORK=${WORK:-/tmp/nanochat_gpu_check}
[[ $TINY =~ ^[01]$ ]] || die "TINY: '$TINY' must be 0 or 1"
if [ "$TINY" = 1 ]; then
    DATA_DIR=${TINY_DATA_DIR:-dev/sample_data}
    RACE_FLOPS=${RACE_FLOPS:-1e10}
    TRAIN=(--size 1 --seq-len 32 --batch-size 2 --steps 1 --warmup 1 --vocab-size 512 --compile 0)
    RACE=(--size 1 --max-seq-len 64 --device-batch-size 2 --total-batch-size 128 --eval-tokens 256)
    DECODE=(--size 1 --batch 1,2 --prompt-len 8 --max-tokens 4 --repeats 1 --vocab-size 512)
    VOCAB=512 LIMITS=(120 60 120 120 120)
else
    RACE_FLOPS=${RACE_FLOPS:-1e16}
    TRAIN=(--size 20 --seq-len 2048 --batch-size 16 --steps 10 --warmup 3 --compile 1)
    RACE=(--size 8 --max-seq-len 1024 --device-batch-size 32 --total-batch-size 262144 --eval-tokens 2097152)
    DECODE=(--size 20 --batch 1,8 --prompt-len 256 --max-tokens 64 --repeats 3)
    VOCAB=8192 LIMITS=(150 60 150 150 60)  # seconds per stage: at most 9.5 minutes even if every stage hangs
fi
[[ $RACE_FLOPS =~ ^[0-9]+(\.[0-9]+)?e[0-9]+$ ]] || die "RACE_FLOPS: '$RACE_FLOPS' is not like 2e16"
need_shards "$DATA_DIR"
activate_venv
export NANOCHAT_BASE_DIR=$WORK
run mkdir -p "$OUT" "$WORK"

stage() {  # stage NAME LIMIT CMD...: run it for at most LIMIT s, its log in $OUT/NAME.log, exit code in $OUT/NAME.rc
    local name=$1 limit=$2; shift 2
    echo "== $name (at most ${limit} s): $*"
    if dry; then return; fi
    set +e
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo $? >"$OUT/$name.rc"
    set -e
    tail -3 "$OUT/$name.log"
}

stage train "${LIMITS[0]}" python -m scripts.train_bench "${TRAIN[@]}" --json "$OUT/train.json"
stage tokenizer "${LIMITS[1]}" python -m scripts.tok_train --data-dir "$DATA_DIR" --vocab-size "$VOCAB"
COMMON=("${RACE[@]}" --target-flops "$RACE_FLOPS" --eval-every -1 --sample-every -1 --core-metric-every -1
        --save-every -1 --data-dir "$DATA_DIR" --seed 42)
stage race_looped "${LIMITS[2]}" python -m scripts.base_train "${COMMON[@]}" --model-tag race_looped
stage race_gpt "${LIMITS[3]}" python -m scripts.base_train "${COMMON[@]}" --arch gpt --model-tag race_gpt
stage decode "${LIMITS[4]}" python -m dev.decode_bench "${DECODE[@]}" --json "$OUT/decode.json"
run python -m dev.gpu_check_report --out "$OUT" --checkpoints "$WORK/base_checkpoints"
