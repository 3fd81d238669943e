#!/usr/bin/env bash
# The one prepared run for a GPU machine. It needs no Rust toolchain and no nvcc: it runs binaries
# built elsewhere by scripts/gpu-bundle.sh (gptk and the tests/gpu_*.rs binaries, kernels embedded).
#
#   scripts/gpu-check.sh [BUNDLE_DIR]        (default: target/gpu-bundle)
#
# Stages, each under its own time limit so that the whole run stays under 8 minutes:
#   nvidia-smi · gptk check (bf16, then f32) · the ignored GPU tests · compute-sanitizer memcheck on
#   the checks and racecheck on the attention kernels (when installed) · training: 50 steps of tiny
#   on the built-in corpus, 30 steps of d12 (GPT-2 124M, GPT-2 vocabulary) on this repository's
#   text, and 20 steps through `gptk launch --gpus 1` (NCCL) · the benchmarks: PyTorch's
#   counterparts of every kernel and of the d12 step timed by scripts/torch_reference.py (when
#   python3 has CUDA PyTorch), then `gptk bench` beside them.
# Every stage logs to $OUT/<stage>.log (OUT defaults to ./gpu-run); $OUT/summary.txt lists each
# stage's status and time; scripts/gpu-report.py $OUT turns the folder into the page for
# docs/gpu-runs/. Exits non-zero when a stage that ran failed. ONLY, when set, names the
# stages to run (comma-separated name prefixes, e.g. ONLY=check-bf16,test-gpu_attention,racecheck,bench),
# so that a part of the run fits one shorter device call. ONLY=bench runs the two benchmark stages
# alone, with the full iteration counts and PyTorch's torch.compile'd step, in under 8 minutes.
set -uo pipefail

bundle=${1:-target/gpu-bundle}
OUT=${OUT:-./gpu-run}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
failures=0
gptk="$bundle/gptk"

note() { echo "$*" | tee -a "$summary"; }

# wanted NAME: true when ONLY is unset or names a prefix of NAME.
wanted() {
    [ -z "${ONLY:-}" ] && return 0
    local prefix
    for prefix in ${ONLY//,/ }; do
        [[ $1 == "$prefix"* ]] && return 0
    done
    return 1
}

# stage NAME SECONDS COMMAND...: runs COMMAND with a time limit, logging to $OUT/NAME.log.
stage() {
    local name=$1 limit=$2
    shift 2
    if ! wanted "$name"; then
        note "SKIP  $name: not in ONLY=$ONLY"
        return 0
    fi
    local start=$SECONDS
    echo "=== $name: $*" | tee "$OUT/$name.log"
    timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    tail -n 25 "$OUT/$name.log"
    if [ $rc -eq 0 ]; then
        note "PASS  $name (${took}s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        note "FAIL  $name: timed out after ${limit}s"
        failures=$((failures + 1))
    else
        note "FAIL  $name: exit $rc (${took}s)"
        failures=$((failures + 1))
    fi
}

skip() { note "SKIP  $1: $2"; }

if [ ! -x "$gptk" ]; then
    echo "gpu-check: no gptk binary in $bundle (build it with scripts/gpu-bundle.sh)" >&2
    exit 2
fi
if [ -f "$bundle/COMMIT" ]; then
    cp "$bundle/COMMIT" "$OUT/COMMIT"
    note "INFO  binaries built from commit $(cat "$bundle/COMMIT")"
fi

# cuBLASLt and NCCL: the system's if the loader finds them, else those of a pip-installed nvidia
# wheel or torch in this machine's Python.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so' || ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so'; then
    extra=$(python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
dirs = list(sys.path)
try:
    dirs += site.getsitepackages()
except Exception:
    pass
found = []
for d in dirs:
    for pattern in ("nvidia/*/lib/libcublasLt.so*", "nvidia/cu*/lib/libcublasLt.so*", "torch/lib/libcublasLt.so*",
                    "nvidia/nccl/lib/libnccl.so*", "nvidia/*/lib/libnccl.so*"):
        for f in glob.glob(os.path.join(d, pattern)):
            lib = os.path.dirname(f)
            if lib not in found:
                found.append(lib)
print(":".join(found))
PY
)
    if [ -n "$extra" ]; then
        export LD_LIBRARY_PATH="$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        note "INFO  cuBLASLt / NCCL from $extra"
    else
        note "INFO  no libcublasLt found on this machine; the GPU stages will say so"
    fi
fi

# The loader gptk uses opens libnccl.so (or libnccl.so.<CUDA major>), never NCCL's own soname
# libnccl.so.2, which is all that the nvidia-nccl wheel and NCCL's runtime package ship: where
# only that one is found, a link of the expected name goes first on the library path.
nccl_found() {
    local d
    for d in ${LD_LIBRARY_PATH//:/ }; do
        [ -e "$d/$1" ] && { echo "$d/$1"; return 0; }
    done
    ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; exit }' | grep .
}
if ! nccl_found libnccl.so >/dev/null && so2=$(nccl_found libnccl.so.2); then
    links=$(mktemp -d)
    ln -s "$so2" "$links/libnccl.so"
    export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note "INFO  NCCL: $so2, linked as libnccl.so"
fi

# Stage limits add up to under 8 minutes; most stages take a fraction of theirs.
stage nvidia-smi 10 nvidia-smi
stage check-bf16 50 "$gptk" check --precision bf16
stage check-f32 30 "$gptk" check --precision f32

# The GPU tests, minus the checker ones (the two stages above ran it already).
for t in "$bundle"/gpu_*; do
    [ -x "$t" ] || continue
    stage "test-$(basename "$t")" 40 "$t" --ignored --skip every_kernel_matches --test-threads 1 --nocapture
done

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$sanitizer" ]; then
    # Every attention family: the tensor-core kernels (odd T, both head sizes), the simple ones,
    # the cached step; `gelu` takes the matmul+GELU ops too, whose cuBLASLt epilogue writes the
    # GELU's input through a pointer and leading dimension of gptk's; `optimizer` the recorded
    # step's optimizer; last, on Hopper, the wgmma kernels and the TMA probe (no rows elsewhere).
    stage memcheck 50 bash -c "for op in attention layernorm encoder cross_entropy gelu residual adamw optimizer wgmma tma_layout; do
        '$sanitizer' --tool memcheck --error-exitcode 1 '$gptk' check --precision bf16 --op \$op || exit 1; done"
    # Shared-memory hazards of the double-buffered tensor-core attention (the mma.sync kernels;
    # the wgmma ones are families of their own, `--op wgmma`, left to memcheck within this time).
    stage racecheck 25 "$sanitizer" --tool racecheck --error-exitcode 1 \
        "$gptk" check --precision bf16 --op attention_
else
    skip memcheck "compute-sanitizer is not installed"
fi

# Training: the tiny preset on the built-in corpus (loss must fall), GPT-2 124M (d12) with GPT-2's
# vocabulary on text of this repository (tokens/s and MFU of a real d12 step), and the
# data-parallel path through NCCL with one GPU.
run_dir="$OUT/runs"
quick=(--device cuda --sample-every 0 --checkpoint-every 0 --json)
stage train-tiny 30 "$gptk" train "${quick[@]}" --model tiny --steps 50 --val-every 25 --out "$run_dir/tiny"
stage train-d12 75 bash -c "'$gptk' prepare --input README.md docs/*.md src/*.rs src/*/*.rs src/*/*/*.rs --out '$run_dir/gpt2-text' --tokenizer gpt2 --val-fraction 0.05 &&
    '$gptk' train ${quick[*]} --data '$run_dir/gpt2-text' --model d12 --batch-size 8 --seq-len 1024 --steps 30 \
        --val-every 0 --warmup-steps 5 --lr 6e-4 --out '$run_dir/d12'"
stage launch-1gpu 35 "$gptk" launch --gpus 1 -- train "${quick[@]}" --model tiny --steps 20 --val-every 10 --out "$run_dir/nccl"

# Benchmarks: PyTorch's counterparts on gptk's shapes first (their JSON report, rewritten after
# every family so that a stage stopped by its limit leaves what it measured), then gptk's kernels
# and d12 step with the device's ceilings and the ratio to PyTorch per case; $OUT/bench_gptk.json
# keeps gptk's numbers (`gptk bench --results FILE --compare FILE` prints both again, anywhere).
# In a full run the two stages share what the stages above leave of the 8 minutes: fewer
# iterations, PyTorch eager only. Alone (every ONLY prefix a bench stage) they take the whole call:
# default iterations, and the torch.compile'd step with a budget for its compilation. gptk's d12
# step runs nine times: as the trainer runs it; with every off-by-default speedup on at once
# (CUDA graph, wgmma attention, atomic dQ: the one to hold against torch.compile, run second so
# that a stage cut short still has it); with the MLP's GELU and then the bias gradients apart
# from their GEMMs instead of in cuBLASLt's epilogues, replayed from a CUDA graph, with
# attention's dQ summed by atomics, with attention on wgmma, on wgmma with atomic dQ, and on wgmma
# with the warp-specialized TMA forward (last, the newest kernel): each optimisation's before and
# after in one run.
bench_alone=false
if [ -n "${ONLY:-}" ]; then
    bench_alone=true
    for prefix in ${ONLY//,/ }; do
        [[ $prefix == bench* ]] || bench_alone=false
    done
fi
if $bench_alone; then
    torch_limit=270 gptk_limit=150
    torch_args=(--compile --compile-budget 150)
    gptk_args=(--step-variants all-opt-ins,gelu-apart,bias-grad-apart,cuda-graphs,atomic-attention,wgmma-attention,wgmma-atomic-attention,wgmma-tma-attention)
else
    torch_limit=40 gptk_limit=55
    torch_args=(--warmup 3 --iters 20 --step-iters 10)
    gptk_args=(--warmup 3 --iters 20 --step-iters 10 --step-variants all-opt-ins,gelu-apart,bias-grad-apart,cuda-graphs,atomic-attention,wgmma-attention,wgmma-atomic-attention,wgmma-tma-attention)
fi
if "$gptk" bench --help >/dev/null 2>&1; then
    torch_json="$OUT/bench_torch.json"
    rm -f "$torch_json"
    # The bundle's copy of the script, else this checkout's.
    torch_script="$bundle/torch_reference.py"
    [ -f "$torch_script" ] || torch_script="$(dirname "$0")/torch_reference.py"
    if ! wanted bench-torch; then
        note "SKIP  bench-torch: not in ONLY=$ONLY"
    elif [ -f "$torch_script" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        stage bench-torch "$torch_limit" python3 "$torch_script" "${torch_args[@]}" --out "$torch_json"
    else
        skip bench-torch "no torch_reference.py in the bundle or scripts/, or no CUDA PyTorch in python3"
    fi
    compare=()
    if [ -s "$torch_json" ]; then compare=(--compare "$torch_json"); fi
    stage bench "$gptk_limit" "$gptk" bench ${gptk_args[@]+"${gptk_args[@]}"} --out "$OUT/bench_gptk.json" \
        ${compare[@]+"${compare[@]}"}
else
    skip bench "this gptk has no 'bench' command"
fi

note "total ${SECONDS}s, $failures failed stage(s); logs in $OUT"
[ "$failures" -eq 0 ]
