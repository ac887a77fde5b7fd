#!/usr/bin/env bash
# Does the default recipe learn to iterate? The pointer-chasing data of runs/depth_cpu.sh (trained on
# depth <= MAX_DEPTH, tested at 1..MAX_DEPTH, 2x and 4x), one looped model per arm and seed at the same
# training FLOPs, through the normal path (base_train, then depth_eval). The arm "default" is
# base_train's own recipe: only the size, the heads, the sequence length and the budget are set.
# Every other arm changes one thing from it, so each row of the table is a one-change A/B:
#
#   default   base_train's defaults
#   sum       --set inject_init=sum      u = e + s at init instead of u = e ([I | I] vs [I | 0])
#   mean6     --recur-mean 6             E[r] 6 instead of 4
#   b111      --n-prelude 1 --n-recur 1 --n-coda 1   one block per stage instead of 2 / 4 / 2
#   b212      --n-recur 1                           one block per iteration, prelude and coda kept at 2
#   b141      --n-prelude 1 --n-coda 1              prelude and coda of one block, the iteration kept at 4
#   copy      --set init_state=copy      s_0 = e instead of random noise
#   nove      --set value_embeds=0       no value embeddings in the repeated block
#
#   bash runs/depth_recipe.sh                           # every arm, seeds 42 and 7
#   ARMS="default sum" SEEDS=42 bash runs/depth_recipe.sh
#   TASK=var_chase ARMS=b111 NANOCHAT_BASE_DIR=out/var bash runs/depth_recipe.sh   # the other families
#   TASK=copy_chase ARMS=b111 NANOCHAT_BASE_DIR=out/copy bash runs/depth_recipe.sh
#   MAX_DEPTH=2 TEST_DEPTHS=1,2,4,8,16 NANOCHAT_BASE_DIR=out/depth2 bash runs/depth_recipe.sh  # 8x
#   N_SYMBOLS=40 TEST_DEPTHS=1,2,3,4,8,16,32 ARMS=b111 INIT_FROM=out/depth NANOCHAT_BASE_DIR=out/depth40c \
#       bash runs/depth_recipe.sh                       # a curriculum: 40-letter tables after 24
#   DRY_RUN=1 bash runs/depth_recipe.sh                 # print every command
#
# Settings (environment): ARMS, SEEDS (42 7), TASK (pointer_chase, var_chase or copy_chase: tasks/<TASK>.py,
# written by dev/make_<TASK>.py), N_SYMBOLS (24 letters or variables per problem), QUERIES (8 per
# training document), MAX_DEPTH (4), TEST_DEPTHS (1..MAX_DEPTH, 2x and 4x it; the generator checks
# that the table holds them), EVAL_RECUR (r values of the eval, 1,2,4,8,16,32), BUDGET (7e13 FLOPs), EVAL_PROBLEMS (problems per test depth, -1 = all
# 300; fewer makes the eval of a 2/4/2 model at r up to 32 quicker), NANOCHAT_BASE_DIR (out/depth;
# shares data and tokenizer with runs/depth_cpu.sh, so give another TASK or MAX_DEPTH its own), INIT_FROM
# (empty, or an earlier run's NANOCHAT_BASE_DIR: each arm and seed starts from its own checkpoint there,
# with that run's tokenizer, and BUDGET counts this stage's FLOPs only). A run
# whose checkpoint exists is skipped; each arm's depth_eval goes to <base>/depth_eval_<tag>.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh

ARMS=${ARMS:-default sum mean6 b111 copy nove}
SEEDS=${SEEDS:-42 7}
TASK=${TASK:-pointer_chase}
N_SYMBOLS=${N_SYMBOLS:-24}
QUERIES=${QUERIES:-8}
EVAL_RECUR=${EVAL_RECUR:-1,2,4,8,16,32}
MAX_DEPTH=${MAX_DEPTH:-4}
TEST_DEPTHS=${TEST_DEPTHS:-$(seq -s, 1 "$MAX_DEPTH"),$((2 * MAX_DEPTH)),$((4 * MAX_DEPTH))}
BUDGET=${BUDGET:-7e13}
EVAL_PROBLEMS=${EVAL_PROBLEMS:--1}
INIT_FROM=${INIT_FROM:-}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$PWD/out/depth}
for seed in $SEEDS; do [[ $seed =~ ^[0-9]+$ ]] || die "SEEDS: '$seed' is not a non-negative integer"; done
[[ $TASK =~ ^(pointer_chase|var_chase|copy_chase)$ ]] || die "TASK: '$TASK' is not pointer_chase, var_chase or copy_chase"
[[ $MAX_DEPTH =~ ^[1-9]$ ]] || die "MAX_DEPTH: '$MAX_DEPTH' must be 1..9 (dev.make_$TASK checks that the table holds the test depths)"
[[ $TEST_DEPTHS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "TEST_DEPTHS: '$TEST_DEPTHS' is not a comma-separated list of depths"
[[ $N_SYMBOLS =~ ^[0-9]+$ ]] && [ "$N_SYMBOLS" -le 52 ] || die "N_SYMBOLS: '$N_SYMBOLS' must be an integer <= 52"
[[ $QUERIES =~ ^[1-9][0-9]*$ ]] || die "QUERIES: '$QUERIES' is not a positive integer"
[[ $EVAL_RECUR =~ ^[0-9]+(,[0-9]+)*$ ]] || die "EVAL_RECUR: '$EVAL_RECUR' is not a comma-separated list of r values"
[[ $EVAL_PROBLEMS =~ ^(-1|[1-9][0-9]*)$ ]] || die "EVAL_PROBLEMS: '$EVAL_PROBLEMS' is not -1 or a positive integer"
[[ $BUDGET =~ ^[0-9]+(\.[0-9]+)?e[0-9]+$ ]] || die "BUDGET: '$BUDGET' is not like 3e13"
arm_flags() {
    case $1 in
        default) ;;
        sum) echo --set inject_init=sum ;;
        mean6) echo --recur-mean 6 ;;
        b111) echo --n-prelude 1 --n-recur 1 --n-coda 1 ;;
        b212) echo --n-recur 1 ;;
        b141) echo --n-prelude 1 --n-coda 1 ;;
        copy) echo --set init_state=copy ;;
        nove) echo --set value_embeds=0 ;;
        *) die "ARMS: unknown arm '$1' (expected default, sum, mean6, b111, b212, b141, copy, nove)" ;;
    esac
}
for arm in $ARMS; do arm_flags "$arm" >/dev/null; done
activate_venv
DATA_DIR=$NANOCHAT_BASE_DIR/data
mkdir -p "$NANOCHAT_BASE_DIR"
if [ ! -e "$DATA_DIR/test_d$MAX_DEPTH.jsonl" ]; then
    run python -m "dev.make_$TASK" --out "$DATA_DIR" --max-depth "$MAX_DEPTH" --test-depths "$TEST_DEPTHS" \
        --n-symbols "$N_SYMBOLS" --queries "$QUERIES"
    will_make "$DATA_DIR"
fi
need_shards "$DATA_DIR"
if [ -n "$INIT_FROM" ]; then
    for seed in $SEEDS; do for arm in $ARMS; do
        need_checkpoint "$INIT_FROM/base_checkpoints/${arm}_s$seed" "INIT_FROM: train arm $arm, seed $seed there first"
    done; done
    [ -e "$NANOCHAT_BASE_DIR/tokenizer" ] || run cp -r "$INIT_FROM/tokenizer" "$NANOCHAT_BASE_DIR/tokenizer"
elif [ ! -e "$NANOCHAT_BASE_DIR/tokenizer" ]; then
    run python -m scripts.tok_train --data-dir "$DATA_DIR" --vocab-size 265  # byte level: every letter one token
fi
# one document per row, T + 1 tokens with BOS: N entries of 3 (pointer and copy chase) or 6 (var
# chase) tokens less a space, "|", the first question (2 tokens), the others (3 each). A step holds ~6080
# tokens (64 documents of the default pointer chase, T = 95) for any task and size.
case $TASK in
    pointer_chase|copy_chase) T=$((3 * N_SYMBOLS + 3 * QUERIES - 1)) ;;
    var_chase) T=$((6 * N_SYMBOLS + 3 * QUERIES - 1)) ;;
esac
DOCS=$(( (6080 + T / 2) / T ))
COMMON=(--size 2 --n-head 4 --max-seq-len "$T" --device-batch-size "$DOCS" --total-batch-size $((DOCS * T))
        --target-flops "$BUDGET" --eval-every -1 --eval-tokens $((10 * DOCS * T)) --sample-every -1
        --core-metric-every -1 --data-dir "$DATA_DIR")
for seed in $SEEDS; do
    for arm in $ARMS; do
        tag=${arm}_s$seed
        init=()
        [ -n "$INIT_FROM" ] && init=(--init-from "$INIT_FROM/base_checkpoints/$tag")
        if compgen -G "$NANOCHAT_BASE_DIR/base_checkpoints/$tag/step_*/meta.json" >/dev/null; then
            echo "skip training $tag: it already has a checkpoint"
        else
            # shellcheck disable=SC2046  # arm_flags prints separate words on purpose
            run python -m scripts.base_train "${COMMON[@]}" $(arm_flags "$arm") --seed "$seed" --model-tag "$tag" "${init[@]}"
        fi
        [ -e "$NANOCHAT_BASE_DIR/depth_eval_$tag.md" ] && continue
        run python -m scripts.depth_eval --task "$TASK" --model-tags "$tag" --data-dir "$DATA_DIR" --recur "$EVAL_RECUR" \
            --exit-cap "${EVAL_RECUR##*,}" --max-problems "$EVAL_PROBLEMS" --out "$NANOCHAT_BASE_DIR/depth_eval_$tag"
    done
done
