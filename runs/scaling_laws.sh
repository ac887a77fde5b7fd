#!/usr/bin/env bash
# Scaling laws, looped vs standard: for each FLOPs budget and size, train the looped model
# (tag s<size>_f<budget>) and the standard GPT of that width and depth (d<size>_f<budget>,
# --arch gpt) with base_train --target-flops, so both spend the same training compute; then
# CORE with base_eval, and dev/plot_scaling.py draws val bpb and CORE against FLOPs.
#
#   bash runs/scaling_laws.sh                              # one node, NPROC GPUs
#   SIZES="4 6 8" BUDGETS="1e17 3e17" bash runs/scaling_laws.sh
#   sbatch slurm/scaling_laws.sbatch                       # the same sweep, each run on all the job's nodes
#   DRY_RUN=1 bash runs/scaling_laws.sh                    # print every command; run only the input checks
#
# A run whose checkpoint already exists is skipped, so an interrupted sweep continues where it stopped.
# A run reads budget / (FLOPs per token) tokens: small sizes at large budgets need many shards
# (python -m nanochat.dataset --dataset climbmix -n N; base_train prints each run's token count and
# the shards it needs, next to the number the folder holds).
# Settings (environment):
#   SIZES             size dials (4 6 8 12 16 20)
#   BUDGETS           training FLOPs per run, written like 1e18 (1e18 3e18 1e19)
#   ARCHS             looped and/or gpt (looped gpt)
#   NPROC             GPUs on this node (8); LAUNCHER=slurm (set by the sbatch script) runs across the job's nodes
#   CORE_MAX_PER_TASK CORE examples per task in base_eval (500; -1 = all; CORE=0 skips base_eval)
#   DATASET           climbmix or fineweb-edu (climbmix): its folder is $NANOCHAT_BASE_DIR/base_data/$DATASET
#   DATA_DIR          a folder of parquet shards (default that of DATASET)
#   DEVICE_BATCH_SIZE rows per GPU per micro-step (the scripts' default 32)
#   NANOCHAT_BASE_DIR tokenizer, shards, checkpoints (~/.cache/nanochat); the plot goes to $NANOCHAT_BASE_DIR/scaling_laws.png
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh

SIZES=${SIZES:-4 6 8 12 16 20}
BUDGETS=${BUDGETS:-1e18 3e18 1e19}
ARCHS=${ARCHS:-looped gpt}
NPROC=${NPROC:-8}
CORE=${CORE:-1}
CORE_MAX_PER_TASK=${CORE_MAX_PER_TASK:-500}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
export OMP_NUM_THREADS=1
for size in $SIZES; do [[ $size =~ ^[1-9][0-9]*$ ]] || die "SIZES: '$size' is not a positive integer"; done
for budget in $BUDGETS; do [[ $budget =~ ^[0-9]+(\.[0-9]+)?e[0-9]+$ ]] || die "BUDGETS: '$budget' is not like 1e18 or 2.5e18"; done
for arch in $ARCHS; do [[ $arch == looped || $arch == gpt ]] || die "ARCHS: '$arch' is neither looped nor gpt"; done

if [ "${LAUNCHER:-local}" = slurm ]; then slurm_torchrun; else local_torchrun; fi
activate_venv
need_tokenizer
pretrain_data
need_shards "$DATA_DIR"
BATCH=()
if [ -n "${DEVICE_BATCH_SIZE:-}" ]; then BATCH=(--device-batch-size "$DEVICE_BATCH_SIZE"); fi

for budget in $BUDGETS; do
    for size in $SIZES; do
        for arch in $ARCHS; do
            tag=$([ "$arch" = gpt ] && echo d || echo s)${size}_f$budget
            ckpt=$(checkpoint_dir base "$tag")
            if compgen -G "$ckpt/step_*/meta.json" >/dev/null; then
                echo "skip $tag: $ckpt already has a checkpoint"
                continue
            fi
            echo "=== $tag: $arch, size $size, $budget FLOPs"
            run "${LAUNCH[@]}" -m scripts.base_train --arch "$arch" --size "$size" --target-flops "$budget" \
                --model-tag "$tag" --eval-every -1 --sample-every -1 --core-metric-every -1 "${DATA[@]}" "${BATCH[@]}"
            will_make "$ckpt"
            need_checkpoint "$ckpt" "base_train did not save one"
            if [ "$CORE" = 1 ]; then
                run "${LAUNCH[@]}" -m scripts.base_eval --model-tag "$tag" --eval core --max-per-task "$CORE_MAX_PER_TASK"
            fi
        done
    done
done

run python dev/plot_scaling.py --out "$NANOCHAT_BASE_DIR/scaling_laws.png"
