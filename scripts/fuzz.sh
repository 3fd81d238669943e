#!/usr/bin/env bash
# Fuzzes every file parser for a fixed time each: scripts/fuzz.sh [SECONDS_PER_TARGET] (default 60).
#
# With a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`), each target runs under
# libFuzzer with AddressSanitizer, debug assertions, and a 1 GiB cap on any single allocation,
# starting from the seeds the target itself writes. Without them (or with FUZZ_MODE=plain) each
# target is built as a plain program that runs a seeded mutator for the same time
# (fuzz/src/mutate.rs; FUZZ_SEED picks the seed). Inputs that fail are kept under
# fuzz/artifacts/<target>/; add each, once fixed, to tests/fuzz-regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${1:-60}
targets=(model_file config_json train_state shard_header manifest prepare_jsonl task_jsonl tokenizer)
mode=${FUZZ_MODE:-}
if [ -z "$mode" ]; then
    if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
        mode=libfuzzer
    else
        mode=plain
    fi
fi
seed=${FUZZ_SEED:-$(date +%s)}
echo "fuzzing ${#targets[@]} targets for ${budget} s each (${mode})"

# The plain build shares the main crate's target directory, so its dependencies are reused.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet --manifest-path fuzz/Cargo.toml --bins
plain_bin="$CARGO_TARGET_DIR/release"

failed=()
for t in "${targets[@]}"; do
    if [ "$mode" = libfuzzer ]; then
        corpus=fuzz/corpus/$t
        "$plain_bin/$t" --write-seeds "$corpus"
        mkdir -p "fuzz/artifacts/$t"
        # libFuzzer keeps its own build under fuzz/target, away from the plain one.
        if ! CARGO_TARGET_DIR=fuzz/target cargo +nightly fuzz run --debug-assertions \
            --sanitizer "${FUZZ_SANITIZER:-address}" "$t" "$corpus" -- \
            -max_total_time="$budget" -rss_limit_mb=4096 -malloc_limit_mb=1024 \
            -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2>"fuzz/artifacts/$t.log"; then
            tail -n 30 "fuzz/artifacts/$t.log"
            failed+=("$t")
        else
            grep -E "stat::number_of_executed_units|Done" "fuzz/artifacts/$t.log" | sed "s/^/$t: /" || true
        fi
    else
        if ! "$plain_bin/$t" "$budget" --seed "$seed"; then
            failed+=("$t")
        fi
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "failures in: ${failed[*]} (inputs under fuzz/artifacts/)"
    exit 1
fi
echo "all ${#targets[@]} targets ran ${budget} s without a failure"
