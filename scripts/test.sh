#!/usr/bin/env bash
# The whole test suite, including one end-to-end run of the real embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
