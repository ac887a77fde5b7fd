#!/usr/bin/env bash
# Create a virtual environment (VENV, default .venv) and install nanochat with its dependencies (idempotent).
# torch: TORCH_SPEC picks the wheel; the default 2.13.0 is the CPU wheel on our dev machines
# (on a CUDA box use e.g. TORCH_SPEC="torch>=2.11" to take the usual CUDA wheels).
# An environment of your own works as well: `pip install -e '.[dev]'` in it, and the run scripts use it
# when it is active (runs/common.sh, activate_venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q --upgrade pip >/dev/null 2>&1 || true
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e '.[dev,hf]'  # hf: transformers & co. for the export tests (tests/test_hf_export.py)
python -c "import torch, tiktoken, rustbpe, pyarrow; print(f'environment ready: torch {torch.__version__}')"
