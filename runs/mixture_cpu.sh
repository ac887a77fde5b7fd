#!/usr/bin/env bash
# One model that writes text and reasons: real text (TEXT_DIR) mixed with pointer chasing on the spaced
# surface (every letter one BPE token), pretrained through the normal path, against a text-only model at
# the same text tokens and a task-only model at the same task tokens. All three arms use the recipe the
# depth A/Bs chose for reasoning (base_train's defaults with one block per stage) and one 4096-token
# tokenizer trained on the mixture. The arm cur is a curriculum: the mixture's steps, started from the
# task arm's checkpoint of the same seed (the task first, then text and task together).
#
#   bash runs/mixture_cpu.sh                     # arms mix, text, task; seeds 42 and 7
#   ARMS=mix SEEDS=42 bash runs/mixture_cpu.sh
#   ARMS="task cur" SEEDS=42 bash runs/mixture_cpu.sh   # the curriculum (needs the task arm first)
#   DRY_RUN=1 bash runs/mixture_cpu.sh           # print every command
#
# Then, per seed: the mix, cur and task arms through depth_eval (accuracy by depth x r, adaptive exit), the
# mix and cur arms' iterations per token by kind (dev/depth_by_kind.py: text, table and answer tokens, at the
# serving default exit and at KL), and one figure of the per-token depth along a paragraph of text followed
# by a depth-8 problem (dev/token_depths.py). Everything lands in NANOCHAT_BASE_DIR (out/mix).
#
# Settings (environment): ARMS (mix text task; cur on request), JOIN (0: the share of the mixture's problems
# that follow the tail of a text piece in one document, make_mixture --join-share; above 0 the mix and cur
# arms read $NANOCHAT_BASE_DIR/data_join<JOIN> and are tagged <arm>_join<JOIN>_s<seed>, as is the text arm,
# whose steps match the joined mixture's text tokens; the tokenizer stays the plain mixture's, and the task
# arm keeps its tag: the curriculum's start, trained once, reused by every JOIN), SEEDS (42 7), TEXT_DIR
# (../shared/data/pretrain next to the repository, else $NANOCHAT_BASE_DIR/base_data/climbmix), FRACTION
# (0.5: the task's share of the training bytes), SEQ_LEN (128: rows of 129 tokens hold at most one 66-token
# table, as the task-only runs' rows do; at 256 a row holds up to four tables with the same letters, and the
# mixture learned no lookup; 8192 tokens a step either way), CHUNK (400: text documents are cut into pieces
# of at most this many characters, so a row can hold them whole; see dev/make_mixture.py), STEPS (1000 for
# the mixture; the text and task arms get the steps at which they read as many tokens of their kind, counted
# by dev/mixture_shares.py), EVAL_PROBLEMS (100 per test depth).
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh

ARMS=${ARMS:-mix text task}
SEEDS=${SEEDS:-42 7}
FRACTION=${FRACTION:-0.5}
SEQ_LEN=${SEQ_LEN:-128}
JOIN=${JOIN:-0}
CHUNK=${CHUNK:-400}
STEPS=${STEPS:-1000}
EVAL_PROBLEMS=${EVAL_PROBLEMS:-100}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$PWD/out/mix}
if [ -z "${TEXT_DIR:-}" ]; then
    TEXT_DIR=$NANOCHAT_BASE_DIR/base_data/climbmix
    [ -d ../shared/data/pretrain ] && TEXT_DIR=$(cd ../shared/data/pretrain && pwd)
fi
for seed in $SEEDS; do [[ $seed =~ ^[0-9]+$ ]] || die "SEEDS: '$seed' is not a non-negative integer"; done
for arm in $ARMS; do [[ $arm =~ ^(mix|text|task|cur)$ ]] || die "ARMS: unknown arm '$arm' (expected mix, text, task, cur)"; done
[[ $JOIN =~ ^(0|0?\.[0-9]+|1)$ ]] || die "JOIN: '$JOIN' is not a share in [0, 1]"
[[ $STEPS =~ ^[1-9][0-9]*$ ]] || die "STEPS: '$STEPS' is not a positive integer"
[[ $CHUNK =~ ^[0-9]+$ ]] || die "CHUNK: '$CHUNK' is not a number of characters"
[[ $SEQ_LEN =~ ^[1-9][0-9]*$ ]] && [ $((8192 % SEQ_LEN)) = 0 ] || die "SEQ_LEN: '$SEQ_LEN' must divide 8192 (tokens a step)"
[[ $EVAL_PROBLEMS =~ ^[1-9][0-9]*$ ]] || die "EVAL_PROBLEMS: '$EVAL_PROBLEMS' is not a positive integer"
need_shards "$TEXT_DIR"
activate_venv
T=$SEQ_LEN
ROWS=$((8192 / T))
B=$NANOCHAT_BASE_DIR
mkdir -p "$B"
if [ ! -e "$B/task/test_d16.jsonl" ]; then
    run python -m dev.make_pointer_chase --out "$B/task" --surface spaced --max-depth 4 --test-depths 1,2,3,4,8,16 \
        --n-train 130000
    will_make "$B/task"
fi
# a mixture folder is made once and then reused: the settings that made it are written beside its shards,
# and a later run asking for others (FRACTION, CHUNK, JOIN) stops instead of silently reading it
made_with() {  # made_with DIR SETTINGS, after DIR was made by this run
    dry || echo "$2" > "$1/made_with"
}
same_settings() {  # same_settings DIR SETTINGS: DIR (if stamped) was made with these
    [ -e "$1/made_with" ] && [ "$(cat "$1/made_with")" != "$2" ] && die "$1 was made with $(cat "$1/made_with"), \
this run asks for $2: set NANOCHAT_BASE_DIR to another folder (the task, tokenizer and checkpoints are made again there)"
    return 0
}
for folder in data text; do
    fraction=$FRACTION
    [ $folder = text ] && fraction=0  # the same text pieces, no task: the text-only arm's corpus
    settings="FRACTION $fraction, CHUNK $CHUNK"
    if [ ! -e "$B/$folder" ]; then
        run python -m dev.make_mixture --text-dir "$TEXT_DIR" --task-dir "$B/task" --task-fraction "$fraction" \
            --text-chunk-chars "$CHUNK" --out "$B/$folder"
        will_make "$B/$folder"
        made_with "$B/$folder" "$settings"
    fi
    same_settings "$B/$folder" "$settings"
done
[ -e "$B/tokenizer" ] || run python -m scripts.tok_train --data-dir "$B/data" --vocab-size 4096
MIX=$B/data SUFFIX=
if [ "$JOIN" != 0 ]; then
    MIX=$B/data_join$JOIN SUFFIX=_join$JOIN settings="FRACTION $FRACTION, CHUNK $CHUNK, JOIN $JOIN"
    if [ ! -e "$MIX" ]; then
        run python -m dev.make_mixture --text-dir "$TEXT_DIR" --task-dir "$B/task" --task-fraction "$FRACTION" \
            --text-chunk-chars "$CHUNK" --join-share "$JOIN" --out "$MIX"
        will_make "$MIX"
        made_with "$MIX" "$settings"
    fi
    same_settings "$MIX" "$settings"
fi
if dry; then
    TEXT_STEPS=TEXT_STEPS TASK_STEPS=TASK_STEPS  # counted by the step printed just before
    run python -m dev.mixture_shares --data-dir "$MIX" --steps "$STEPS" --batch $ROWS --seq-len $T
else
    shares=$(python -m dev.mixture_shares --data-dir "$MIX" --steps "$STEPS" --batch $ROWS --seq-len $T)
    echo "$shares"
    TEXT_STEPS=$(sed -n 's/.*text-only \([0-9]*\) steps.*/\1/p' <<<"$shares")
    TASK_STEPS=$(sed -n 's/.*task-only \([0-9]*\) steps.*/\1/p' <<<"$shares")
fi
COMMON=(--size 2 --n-head 4 --n-prelude 1 --n-recur 1 --n-coda 1 --max-seq-len $T --device-batch-size $ROWS
        --total-batch-size $((ROWS * T)) --eval-every -1 --eval-tokens $((8 * ROWS * T)) --sample-every -1
        --core-metric-every -1)
PARAGRAPH="The river rose in the night and the town woke to water in the streets. By morning the bridge was gone, and the people on the far bank waited for the boats."
PROBLEM=$(python -c "import json; p = json.loads(open('$B/data/test_d8.jsonl').readline()); print(p['prompt'])" 2>/dev/null \
    || echo "<the first depth-8 test prompt>")
for seed in $SEEDS; do
    for arm in $ARMS; do
        tag=${arm}_s$seed
        [[ $arm =~ ^(mix|cur|text)$ ]] && tag=${arm}${SUFFIX}_s$seed  # text: its steps match the joined mixture's text
        init=()
        case $arm in
            mix) data=$MIX steps=$STEPS ;;
            cur) data=$MIX steps=$STEPS init=(--init-from "$B/base_checkpoints/task_s$seed") ;;
            text) data=$B/text steps=$TEXT_STEPS ;;
            task) data=$B/task steps=$TASK_STEPS ;;
        esac
        if compgen -G "$B/base_checkpoints/$tag/step_*/meta.json" >/dev/null; then
            echo "skip training $tag: it already has a checkpoint"
        else
            [ $arm = cur ] && need_checkpoint "$B/base_checkpoints/task_s$seed" \
                "the curriculum starts from the task arm's checkpoint: run ARMS=\"task cur\""
            run python -m scripts.base_train "${COMMON[@]}" --num-iterations "$steps" --data-dir "$data" --seed "$seed" \
                "${init[@]}" --model-tag "$tag"
            will_make "$B/base_checkpoints/$tag"
        fi
        [ $arm = text ] && continue
        [ -e "$B/depth_eval_$tag.md" ] || run python -m scripts.depth_eval --model-tags "$tag" --data-dir "$B/data" \
            --recur 1,2,4,8,16,32 --max-problems "$EVAL_PROBLEMS" --out "$B/depth_eval_$tag"
        [ $arm = task ] && continue
        for exit in "state 0.3" "kl 0.001"; do
            read -r criterion threshold <<<"$exit"
            out=$B/depth_by_kind_${tag}_$criterion.md
            [ -e "$out" ] || run python -m dev.depth_by_kind --model-tag "$tag" --data-dir "$B/data" \
                --problems "$EVAL_PROBLEMS" --criterion "$criterion" --threshold "$threshold" --out "$out"
            png=$B/token_depths_${tag}_$criterion.png
            [ -e "$png" ] || run python -m dev.token_depths --model-tag "$tag" --segment "text=$PARAGRAPH"$'\n' \
                --segment "table=${PROBLEM% | *} |" --segment "query= ${PROBLEM##* | }" --criterion "$criterion" \
                --threshold "$threshold" --out "$png"
        done
    done
done
