#!/usr/bin/env bash
# Create .venv and install nanochat with its dependencies (idempotent).
# torch: TORCH_SPEC picks the wheel; the default 2.13.0 is the CPU wheel on our dev machines
# (on a CUDA box use e.g. TORCH_SPEC="torch>=2.11" to take the usual CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e '.[dev,hf]'  # hf: transformers & co. for the export tests (tests/test_hf_export.py)
python -c "import torch, tiktoken, rustbpe, pyarrow; print(f'environment ready: torch {torch.__version__}')"
