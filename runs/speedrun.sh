#!/usr/bin/env bash
# The whole pipeline on one 8xH100 node: environment (CUDA torch) -> new report -> pretraining
# shards -> tokenizer (train, eval) -> looped base model s20 at the recipe defaults (r ~ Poisson
# log-normal with E[r] = 4, backprop through the last 4 iterations, 4 tokens per non-embedding
# parameter) -> base eval (CORE, bpb) at r = 1, 2, 4, 8, 16 -> SFT -> chat eval -> report.md.
#
#   bash runs/speedrun.sh                          # 8 GPUs; artifacts in ~/.cache/nanochat
#   NPROC=4 WANDB_RUN=s20 bash runs/speedrun.sh    # 4 GPUs (more accumulation, the same run), wandb on
#   DATA_DIR=/data/shards bash runs/speedrun.sh    # local shards, no download
#   DRY_RUN=1 bash runs/speedrun.sh                # print every command; run only the input checks
#
# Settings (environment):
#   NPROC             GPUs to use (8)
#   SIZE              the size dial of the base model (20); checkpoints are tagged s$SIZE
#   DATASET           pretraining corpus: climbmix (nanochat's since its leaderboard entry 4) or fineweb-edu
#   NUM_SHARDS        train shards to download (derived from the horizon: s20 at ratio 4 reads 4 x 203M = 810M
#                     tokens; x 1.2 margin / ~61M tokens per ClimbMix shard = 16; printed)
#   DATA_DIR          a folder of parquet shards to use instead of downloading
#   DEVICE_BATCH_SIZE rows per GPU per micro-step (the scripts' default 32 fits 80 GB; lower it on smaller GPUs)
#   WANDB_RUN         wandb run name (empty: no wandb)
#   RL                1: also GRPO on GSM8K and its chat eval (0)
#   TORCH_SPEC        the torch wheel runs/setup_env.sh installs ("torch>=2.11": CUDA wheels)
#   VENV, NANOCHAT_PYTHON  the Python to use (runs/common.sh, activate_venv); neither set and no active
#                     environment with nanochat installed: runs/setup_env.sh makes .venv
#   NANOCHAT_BASE_DIR tokenizer, shards, checkpoints, report (~/.cache/nanochat)
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh

NPROC=${NPROC:-8}
SIZE=${SIZE:-20}
RL=${RL:-0}
TAG=s$SIZE
RECUR=1,2,4,8,16
TORCH_SPEC=${TORCH_SPEC:-torch>=2.11}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
export OMP_NUM_THREADS=1
[[ $SIZE =~ ^[1-9][0-9]*$ ]] || die "SIZE='$SIZE': expected a positive integer"
if [ -n "${DATA_DIR:-}" ]; then DOWNLOAD=0; else DOWNLOAD=1; fi
pretrain_data
TOKENS=$(( 4 * $(looped_params "$SIZE") ))  # base_train's default horizon: --target-param-data-ratio 4
NUM_SHARDS=${NUM_SHARDS:-$(shards_for_tokens "$DATASET" "$TOKENS")}
[[ $NUM_SHARDS =~ ^[1-9][0-9]*$ ]] || die "NUM_SHARDS='$NUM_SHARDS': expected a positive integer"
local_torchrun
WANDB=()
if [ -n "${WANDB_RUN:-}" ]; then WANDB=(--run "$WANDB_RUN"); fi
BATCH=()
if [ -n "${DEVICE_BATCH_SIZE:-}" ]; then BATCH=(--device-batch-size "$DEVICE_BATCH_SIZE"); fi
mkdir -p "$NANOCHAT_BASE_DIR"
echo "speedrun: s$SIZE on $NPROC GPUs | artifacts: $NANOCHAT_BASE_DIR${DRY_RUN:+ | dry run}"

# -----------------------------------------------------------------------------
# environment
if ! dry; then
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: speedrun.sh needs NVIDIA GPUs (runs/runcpu.sh is the CPU pipeline)"
    ngpu=$(nvidia-smi -L | wc -l)
    [ "$ngpu" -ge "$NPROC" ] || die "NPROC=$NPROC but nvidia-smi lists $ngpu GPUs"
fi
if python_ready; then  # VENV, NANOCHAT_PYTHON or an active environment with nanochat: use it as it is
    echo "environment: using the chosen Python, not runs/setup_env.sh (unset VENV/NANOCHAT_PYTHON, deactivate to get .venv)"
else
    run env TORCH_SPEC="$TORCH_SPEC" bash runs/setup_env.sh
    will_make "${VENV:-.venv}/bin/activate"
fi
activate_venv
run python -m nanochat.report reset

# -----------------------------------------------------------------------------
# data: the first 8 shards (~2B characters, the tokenizer's diet) now, the rest in the background
if [ "$DOWNLOAD" = 0 ]; then
    need_shards "$DATA_DIR"
else
    echo "data: $DATASET, s$SIZE at ratio 4 reads $TOKENS tokens -> $NUM_SHARDS train shards (+ the val shard) in $DATA_DIR"
    run python -m nanochat.dataset --dataset "$DATASET" -n 8
    will_make "$DATA_DIR"
    need_shards "$DATA_DIR"
    if dry; then
        run python -m nanochat.dataset --dataset "$DATASET" -n "$NUM_SHARDS"  # (in the background)
    else
        python -m nanochat.dataset --dataset "$DATASET" -n "$NUM_SHARDS" >"$NANOCHAT_BASE_DIR/download.log" 2>&1 &
        DOWNLOAD_PID=$!
        trap 'kill "$DOWNLOAD_PID" 2>/dev/null || true' EXIT  # a step failing stops the download too
        echo "downloading $NUM_SHARDS shards in the background (pid $DOWNLOAD_PID, log $NANOCHAT_BASE_DIR/download.log)"
    fi
fi

# -----------------------------------------------------------------------------
# tokenizer
run python -m scripts.tok_train "${DATA[@]}"
will_make "$NANOCHAT_BASE_DIR/tokenizer/tokenizer.json"
need_tokenizer
run python -m scripts.tok_eval "${DATA[@]}"

# -----------------------------------------------------------------------------
# base model
if [ -n "${DOWNLOAD_PID:-}" ]; then
    echo "waiting for the shard download (pid $DOWNLOAD_PID)..."
    wait "$DOWNLOAD_PID" || die "the shard download failed (see $NANOCHAT_BASE_DIR/download.log); rerun: finished shards are kept"
    trap - EXIT
fi
run "${LAUNCH[@]}" -m scripts.base_train --size "$SIZE" --model-tag "$TAG" "${DATA[@]}" "${BATCH[@]}" "${WANDB[@]}"
will_make "$(checkpoint_dir base "$TAG")"
need_checkpoint "$(checkpoint_dir base "$TAG")" "base_train did not save one"
run "${LAUNCH[@]}" -m scripts.base_eval --model-tag "$TAG" --recur "$RECUR" "${DATA[@]}" "${BATCH[@]}"

# -----------------------------------------------------------------------------
# chat: SFT, eval (and RL on GSM8K with RL=1)
run "${LAUNCH[@]}" -m scripts.chat_sft --model-tag "$TAG" "${BATCH[@]}" "${WANDB[@]}"
will_make "$(checkpoint_dir sft "$TAG")"
need_checkpoint "$(checkpoint_dir sft "$TAG")" "chat_sft did not save one"
run "${LAUNCH[@]}" -m scripts.chat_eval --source sft --model-tag "$TAG"
if [ "$RL" = 1 ]; then
    run "${LAUNCH[@]}" -m scripts.chat_rl --model-tag "$TAG" "${WANDB[@]}"
    will_make "$(checkpoint_dir rl "$TAG")"
    need_checkpoint "$(checkpoint_dir rl "$TAG")" "chat_rl did not save one"
    run "${LAUNCH[@]}" -m scripts.chat_eval --source rl -i GSM8K --model-tag "$TAG"
fi

# -----------------------------------------------------------------------------
run python -m nanochat.report generate
echo "done: report.md (and $NANOCHAT_BASE_DIR/report/report.md); talk to it: python -m scripts.chat_web"
