#!/usr/bin/env bash
# The whole pipeline at toy scale on a CPU, no network needed (about 10 minutes on 2 cores):
# environment -> tokenizer -> tokenizer eval -> a tiny looped model -> val bpb vs a unigram
# model, CORE on a subset -> samples -> val bpb at r = 1..16 -> SFT, chat eval, one reply -> report.md.
# Data: DATA_DIR if set, else ../shared/data/pretrain if present, else the sample shipped in dev/sample_data.
# CORE: on a seeded subset of each task (CORE_PER_TASK examples) at the end of training, when an eval bundle is
# found: EVAL_BUNDLE, else ../shared/data/eval_bundle, else $NANOCHAT_BASE_DIR/eval_bundle.
# Python: the active environment when nanochat is installed in it (or VENV / NANOCHAT_PYTHON), else .venv,
# made by runs/setup_env.sh. Artifacts: NANOCHAT_BASE_DIR (out/cpu); the last lines print the `export` that
# points the other commands (chat_cli, chat_web, base_eval) at them. report.md: as runs/speedrun.sh writes it.
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/common.sh
if ! python_ready; then bash runs/setup_env.sh; fi
activate_venv
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$PWD/out/cpu}
if [ -z "${DATA_DIR:-}" ]; then
    if [ -d ../shared/data/pretrain ]; then DATA_DIR=../shared/data/pretrain; else DATA_DIR=dev/sample_data; fi
fi
STEPS=${STEPS:-150}
# the 10-shot tasks need 11 examples; 12 x 21 tasks: ~1 min on 2 cores (BENCHMARKS.md: 4,200 examples at r=4 in 896 s)
CORE_PER_TASK=${CORE_PER_TASK:-12}
EVAL_BUNDLE=${EVAL_BUNDLE:-}
if [ -z "$EVAL_BUNDLE" ]; then
    for dir in ../shared/data/eval_bundle "$NANOCHAT_BASE_DIR/eval_bundle"; do
        if [ -f "$dir/core.yaml" ]; then EVAL_BUNDLE=$dir; break; fi
    done
fi
if [ -n "$EVAL_BUNDLE" ]; then
    [ -f "$EVAL_BUNDLE/core.yaml" ] || die "EVAL_BUNDLE=$EVAL_BUNDLE holds no core.yaml: point it at an eval bundle folder"
    CORE=(--core-metric-every "$STEPS" --core-metric-max-per-task "$CORE_PER_TASK" --eval-bundle "$EVAL_BUNDLE")
    core_note="CORE on $CORE_PER_TASK examples per task from $EVAL_BUNDLE"
else
    CORE=(--core-metric-every -1)
    core_note="no CORE: no eval bundle (set EVAL_BUNDLE, or put one at ../shared/data/eval_bundle)"
fi
mkdir -p "$NANOCHAT_BASE_DIR"
echo "data: $DATA_DIR | artifacts: $NANOCHAT_BASE_DIR | steps: $STEPS | $core_note"
python -m nanochat.report reset

finish() {  # the r curve, report.md, and where the artifacts are
    r_curve
    python -m nanochat.report generate
    echo "report: report.md (and $NANOCHAT_BASE_DIR/report/report.md)"
    echo "the other commands read NANOCHAT_BASE_DIR; to use these artifacts, run first:"
    echo "  export NANOCHAT_BASE_DIR=$NANOCHAT_BASE_DIR"
}

# a small vocabulary: the toy corpus is a few MB
python -m scripts.tok_train --data-dir "$DATA_DIR" --vocab-size 4096
python -m scripts.tok_eval --data-dir "$DATA_DIR"
python dev/packing_waste.py --data-dir "$DATA_DIR" --seq-len 512 --batch-size 8 --batches 20

# a tiny looped model (size 2: 128 wide, prelude 2 / recur 4 x r / coda 2), r ~ Poisson log-normal
python -m scripts.base_train --size 2 --max-seq-len 512 --device-batch-size 4 --total-batch-size 2048 \
    --num-iterations "$STEPS" --eval-every 50 --eval-tokens 16384 --sample-every -1 --save-every 50 \
    --set embedding_lr=0.3 --set matrix_lr=0.03 --data-dir "$DATA_DIR" "${CORE[@]}"
echo "loss curve: $NANOCHAT_BASE_DIR/base_checkpoints/s2/train_log.png"
# test-time compute: val bpb of the same checkpoint at r = 1..16 (table, CSV and PNG under base_eval/)
python -m scripts.base_eval --model-tag s2 --eval bpb --recur 1,2,4,8,16 --data-dir "$DATA_DIR" --eval-tokens 16384 \
    --device-batch-size 4
r_curve() {  # the last lines: val bpb at r = 1 and r = 4 from base_eval's CSV
    python - "$NANOCHAT_BASE_DIR/base_eval" <<'PY'
import csv, glob, os, sys
path = max(glob.glob(os.path.join(sys.argv[1], "s2_step*.csv")), key=os.path.getmtime)
bpb = {int(row["r"]): float(row["val_bpb"]) for row in csv.DictReader(open(path))}
print(f"looped s2 val bpb: r = 1 {bpb[1]:.4f} | r = 4 {bpb[4]:.4f} ({100 * (bpb[4] / bpb[1] - 1):+.2f} %) | "
      f"r = 16 {bpb[16]:.4f}  ({path})")
PY
}

# chat: SFT for one epoch of a small slice of the mixture (~15 steps), the chat evals on 8 problems per task at
# r = 1 and 4, and one reply. Data: CHAT_DATA if set, else ../shared/data/chat (the layout tasks/ reads), linked
# as $NANOCHAT_BASE_DIR/chat_data; SmolTalk and MMLU come from its local stand-in and dev split (no network).
CHAT_DATA=${CHAT_DATA:-../shared/data/chat}
if [ ! -d "$CHAT_DATA" ]; then
    echo "skipping the chat stages: no chat data at $CHAT_DATA (point CHAT_DATA at a folder laid out like ../shared/data/chat)"
    finish
    exit 0
fi
[ -e "$NANOCHAT_BASE_DIR/chat_data" ] || ln -s "$(cd "$CHAT_DATA" && pwd)" "$NANOCHAT_BASE_DIR/chat_data"
python -m scripts.chat_sft --model-tag s2 --local-data "smoltalk=$CHAT_DATA/sft/sft_conversations.jsonl,mmlu=$CHAT_DATA/mmlu/dev.jsonl" \
    --mixture smoltalk=80,mmlu=20,gsm8k=20x2,identity=-1x1,simple_spelling=40,spelling_bee=10 --device-batch-size 4 --total-batch-size 2048 \
    --eval-every 5 --eval-tokens 8192 --chat-eval-every -1
python -m scripts.chat_eval --source sft --model-tag s2 --max-problems 8 --max-new-tokens 64 --recur 1,4
python -m scripts.chat_cli --source sft --model-tag s2 -p "Why is the sky blue?" --max-new-tokens 48
finish
