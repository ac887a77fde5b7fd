# Shared by runs/*.sh and slurm/*.sbatch (sourced, not run): the dry-run switch, input checks
# with clear messages, and the two torchrun launchers.
#
# DRY_RUN=1: every `run` prints its command (one line, "+ cmd args", shell-quoted) instead of
# running it. The input checks still run, so a dry run fails where the real run would; a file that
# an earlier step of the same script would have produced (declared with `will_make`) counts as
# present, since that step was only printed.

dry() { [ "${DRY_RUN:-0}" = 1 ]; }

run() {
    if dry; then
        local line="+" a
        for a in "$@"; do
            if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $a"; else line+=" $(printf %q "$a")"; fi
        done
        echo "$line"
    else
        "$@"
    fi
}

die() {
    echo "error: $*" >&2
    exit 1
}

MADE=" "
will_make() { MADE+="$1 "; }  # a path the step just run produces (checked by need_* in a dry run)

_made() { dry && [[ $MADE == *" $1 "* ]]; }

need() {  # need PATH HINT: PATH exists (or an earlier step of this dry run makes it)
    [ -e "$1" ] || _made "$1" || die "$1 is missing: $2"
}

need_shards() {  # need_shards DIR: at least two parquet shards (train + the last one, val)
    local n
    n=$(compgen -G "$1/*.parquet" | wc -l || true)  # compgen fails when nothing matches
    [ "$n" -ge 2 ] || _made "$1" || die "$1 holds $n parquet shards, need at least 2: download them " \
        "(python -m nanochat.dataset -n 8) or point DATA_DIR at a folder of shards"
}

need_checkpoint() {  # need_checkpoint DIR HINT: a completed step_*/meta.json in DIR
    compgen -G "$1/step_*/meta.json" >/dev/null || _made "$1" || die "no checkpoint in $1: $2"
}

need_base_dir() {  # SLURM jobs: the artifacts must live where every node can read them
    [ -n "${NANOCHAT_BASE_DIR:-}" ] || die "NANOCHAT_BASE_DIR is not set: export it to a directory on a filesystem every node shares"
    [ -d "$NANOCHAT_BASE_DIR" ] || die "NANOCHAT_BASE_DIR=$NANOCHAT_BASE_DIR does not exist"
}

need_tokenizer() {
    need "$NANOCHAT_BASE_DIR/tokenizer/tokenizer.json" "train the tokenizer first (python -m scripts.tok_train)"
}

# The Python every later `python` and `torchrun` runs, the first of: VENV (a virtual environment), NANOCHAT_PYTHON
# (an interpreter; the tests pass their own), the active environment (VIRTUAL_ENV or CONDA_PREFIX) when nanochat
# is installed in it, the repository's .venv (runs/setup_env.sh makes it).
DEPS="import nanochat, torch, tiktoken, rustbpe, pyarrow"

python_ready() {  # true when a Python is chosen and exists (NANOCHAT_PYTHON, VENV, or an active environment with nanochat)
    [ -n "${NANOCHAT_PYTHON:-}" ] && return 0
    [ -n "${VENV:-}" ] && { [ -e "$VENV/bin/activate" ]; return; }
    [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && (cd / && python -I -c "$DEPS") 2>/dev/null
}

activate_venv() {
    local how
    if [ -n "${VENV:-}" ]; then
        need "$VENV/bin/activate" "no virtual environment at VENV=$VENV: create it (VENV=$VENV bash runs/setup_env.sh) or unset VENV"
        if [ -e "$VENV/bin/activate" ]; then . "$VENV/bin/activate"; fi  # absent only in a dry run before setup
        how="VENV=$VENV"
    elif [ -n "${NANOCHAT_PYTHON:-}" ]; then
        [ -x "$NANOCHAT_PYTHON" ] || die "NANOCHAT_PYTHON=$NANOCHAT_PYTHON is not an executable: point it at a Python interpreter"
        PATH="$(dirname "$NANOCHAT_PYTHON"):$PATH"  # its torchrun, when it has one
        python() { "$NANOCHAT_PYTHON" "$@"; }
        how="NANOCHAT_PYTHON=$NANOCHAT_PYTHON"
    elif python_ready; then
        how="the active environment ${VIRTUAL_ENV:-$CONDA_PREFIX}"
    elif [ -e .venv/bin/activate ] || _made .venv/bin/activate; then
        if [ -e .venv/bin/activate ]; then . .venv/bin/activate; fi
        how="$PWD/.venv"
    else
        die "no virtual environment with nanochat: activate one where \`pip install -e '.[dev]'\` ran, set VENV or" \
            "NANOCHAT_PYTHON, or create .venv with bash runs/setup_env.sh"
    fi
    if ! dry; then
        (cd / && python -I -c "$DEPS") 2>/dev/null ||
            die "the Python of $how cannot import nanochat and its dependencies: run \`pip install -e '.[dev]'\` in it"
    fi
    echo "python: $how"
}

checkpoint_dir() {  # checkpoint_dir SOURCE TAG: base | sft | rl (as nanochat/checkpoint_manager.py names them)
    case $1 in
        base) echo "$NANOCHAT_BASE_DIR/base_checkpoints/$2" ;;
        sft) echo "$NANOCHAT_BASE_DIR/chatsft_checkpoints/$2" ;;
        rl) echo "$NANOCHAT_BASE_DIR/chatrl_checkpoints/$2" ;;
        *) die "source '$1': expected base, sft or rl" ;;
    esac
}

# Launchers: each sets the array LAUNCH, the command to put in front of `-m scripts.X args`.
local_torchrun() {  # one node, NPROC processes
    [[ ${NPROC:-} =~ ^[1-9][0-9]*$ ]] || die "NPROC='${NPROC:-}': expected a positive number of GPUs"
    LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC")
}

first_host() {  # first_host NODELIST: its first host name, without scontrol (n[001-004,7] -> n001)
    local list=${1%%,*}
    if [[ $1 =~ ^([^,\[]*)\[([^],-]+) ]]; then list=${BASH_REMATCH[1]}${BASH_REMATCH[2]}; fi
    echo "$list"
}

slurm_torchrun() {  # every node of the SLURM job: one torchrun per node (srun), c10d rendezvous on the first node
    [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_NNODES:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ] ||
        die "not inside a SLURM job (SLURM_JOB_ID, SLURM_NNODES, SLURM_JOB_NODELIST unset): submit with sbatch"
    local hosts=()
    if command -v scontrol >/dev/null; then
        hosts=($(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null)) || true
    fi
    if [ "${#hosts[@]}" -eq 0 ]; then
        if dry; then  # a dry run prints only (no SLURM here, or no controller to ask): the list's first host will do
            hosts=($(first_host "$SLURM_JOB_NODELIST"))
        elif command -v scontrol >/dev/null; then
            die "scontrol lists no hosts for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST (run it there to see why)"
        else
            die "scontrol not found: this must run on a SLURM node (DRY_RUN=1 prints the commands without it)"
        fi
    fi
    MASTER_ADDR=${hosts[0]}
    GPUS_PER_NODE=${GPUS_PER_NODE:-8}
    echo "nodes: ${hosts[*]} | rendezvous: $MASTER_ADDR:${MASTER_PORT:-29500} | $GPUS_PER_NODE GPUs per node"
    LAUNCH=(srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1
            torchrun --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE"
            --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id="$SLURM_JOB_ID")
}

cluster_setup() {  # top of every sbatch script: the repository, its Python, the artifacts, the launcher
    activate_venv
    need_base_dir
    export OMP_NUM_THREADS=1
    slurm_torchrun
}

# Pretraining data: nanochat/dataset.py's sources; each downloads into its own folder, base_data/<name>.
# The tokens per shard and the 20% margin repeat nanochat/dataset.py's SOURCES (tests/test_dataset.py keeps them equal).
pretrain_data() {  # sets DATASET (climbmix unless given), DATA_DIR (as given, else the source's folder) and DATA (the flag)
    DATASET=${DATASET:-climbmix}
    case $DATASET in climbmix | fineweb-edu) ;; *) die "DATASET='$DATASET': expected climbmix or fineweb-edu" ;; esac
    DATA_DIR=${DATA_DIR:-$NANOCHAT_BASE_DIR/base_data/$DATASET}
    DATA=(--data-dir "$DATA_DIR")
}

shards_for_tokens() {  # shards_for_tokens DATASET TOKENS: train shards a run of TOKENS tokens reads (+20%), at most all
    local per last n
    case $1 in
        climbmix) per=61000000 last=6542 ;;
        fineweb-edu) per=55000000 last=1822 ;;
        *) die "dataset '$1': expected climbmix or fineweb-edu" ;;
    esac
    n=$(( ($2 * 12 + per * 10 - 1) / (per * 10) ))
    echo $(( n < last ? n : last ))
}

looped_params() {  # looped_params SIZE: non-embedding parameters of the looped model at --size SIZE, the closed
    # form of GPT.num_params() for the default config at width d = ceil(SIZE x 64 / 128) x 128 (98 d^2: the blocks'
    # matrices; 32802 d: lm_head and the norm weights; 3 d / 16: the gates of the 2 value-embedding blocks, 12 inputs
    # per kv head of 128); tests/test_dataset.py checks it
    local d=$(( ($1 * 64 + 127) / 128 * 128 ))
    echo $(( 98 * d * d + 32802 * d + 3 * d / 16 ))
}
