#!/usr/bin/env bash
# Refresh requirements.lock: every package knowpack[dev] needs, at exact versions, resolved by uv
# against the ranges in pyproject.toml. Run it on purpose (to upgrade), review the diff, run the tests.
# torch is pinned to the CPU build and left out of the lock: scripts/setup.sh installs it first, on its own,
# so no CUDA build (several GB) is pulled on a CPU machine; the lock keeps what torch needs (sympy, …).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.13,<0.14"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# Resolve against the CPU wheel's metadata (no nvidia-* dependencies): from a folder holding that wheel
# (TORCH_FIND_LINKS, default /opt/wheels) or, where it is reachable, PyTorch's CPU index (TORCH_INDEX).
echo "torch==$TORCH_VERSION+cpu" > "$constraints"
torch_source=(--find-links "${TORCH_FIND_LINKS:-/opt/wheels}")
[ -n "${TORCH_INDEX:-}" ] && torch_source+=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)
uv pip compile pyproject.toml --extra dev --python-version "$PYTHON_VERSION" --python-platform x86_64-manylinux_2_28 \
    --constraint "$constraints" "${torch_source[@]}" \
    --no-emit-package torch --no-header --quiet --output-file requirements.lock.tmp
{
    echo "# knowpack's locked dependencies (knowpack[dev]), exact versions; installed by scripts/setup.sh."
    echo "# Refresh on purpose with: bash scripts/lock.sh   (uv $(uv --version | cut -d' ' -f2), Python $PYTHON_VERSION, Linux x86_64)"
    echo "# torch==$TORCH_VERSION (CPU build) is installed first, separately, and is not listed here."
    cat requirements.lock.tmp
} > requirements.lock
rm requirements.lock.tmp
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"
