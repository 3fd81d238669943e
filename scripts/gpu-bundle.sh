#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine, which needs no Rust toolchain or nvcc:
# the release gptk binary and the GPU test binary, debug info stripped, and the PyTorch
# benchmark script (scripts/torch_reference.py) and the commit (COMMIT) beside them, in one folder
# (default target/gpu-bundle; first argument overrides). Needs nvcc here (see .ci/install-nvcc.sh):
# without it the binaries carry no kernels and the bundle is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/gpu-bundle}

cargo build --release --bin gptk
# The test binary's path is printed by cargo as JSON; take the gpu_* ones.
tests=$(cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"].startswith("gpu_"):
        print(m["executable"])
')
if [ -z "$tests" ]; then
    echo "gpu-bundle: no tests/gpu_*.rs binary was built" >&2
    exit 1
fi
if ! grep -aq "attention_forward_bf16" target/release/gptk; then
    echo "gpu-bundle: target/release/gptk carries no CUDA kernels (was nvcc found at build time?)" >&2
    exit 1
fi
if ! grep -aq "flash_forward_sm90a_hs64_bf16" target/release/gptk; then
    echo "gpu-bundle: target/release/gptk carries no sm_90a kernels (kernels/*_sm90a.cu)" >&2
    exit 1
fi
rm -rf "$out"
mkdir -p "$out"
cp target/release/gptk "$out/gptk"
for t in $tests; do
    name=$(basename "$t")
    cp "$t" "$out/${name%-*}"
done
strip --strip-debug "$out"/* 2>/dev/null || true
cp scripts/torch_reference.py "$out/torch_reference.py"
# The commit the binaries come from, "-dirty" when the tree had changes; gpu-check.sh copies it
# into its output for scripts/gpu-report.py.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit-dirty"; fi
echo "$commit" >"$out/COMMIT"
ls -la "$out"
