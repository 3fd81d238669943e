#!/bin/sh
# The experiment of docs/experiments/pretraining.md: does pretraining pay on a small corpus?
#
#   scripts/brown-experiment.sh [GPTK] [OUT]      (defaults: target/release/gptk, runs/brown)
#
# 1. Brown corpus -> pretraining documents + a genre-group task on held-out documents
#    (scripts/fetch-brown.sh, scripts/brown-genre-task.py).
# 2. Pretrain the same small model twice on the pretraining documents: causal LM and masked LM.
# 3. Fine-tune for the task: from the CLM model with λ = 0.5 and λ = 0, from the MLM model
#    (bidirectional, λ = 0), and from random initialisation with λ = 0.5, λ = 0, and bidirectional
#    (λ = 0: the control for the MLM run).
# Each fine-tuning configuration runs once per seed in FT_SEEDS; every run prints its validation
# accuracy and OUT/results.jsonl collects them all.
# Sizes are chosen for a CPU (about 1.5 hours on two cores); set STEPS (pretraining), EPOCHS,
# MAX_TRAIN (task training passages), FT_SEEDS and MODEL to scale.
set -eu
gptk=${1:-target/release/gptk}
out=${2:-runs/brown}
steps=${STEPS:-1500}
epochs=${EPOCHS:-4}
max_train=${MAX_TRAIN:-400}
ft_seeds=${FT_SEEDS:-1 2 3}
model=${MODEL:-tiny}
seed=${SEED:-1}

[ -f data/brown/genres.jsonl ] || scripts/fetch-brown.sh
python3 scripts/brown-genre-task.py --brown data/brown --out data/brown-task --seed "$seed" --max-train "$max_train"
"$gptk" prepare --input data/brown-task/pretrain --out data/brown-task/bytes --tokenizer bytes \
    --val-fraction 0.03 --seed "$seed" --force

mkdir -p "$out"
: > "$out/results.jsonl"
for objective in clm mlm; do
    if [ ! -d "$out/pretrain-$objective/step_$(printf %06d "$steps")" ]; then
        rm -rf "$out/pretrain-$objective"
        "$gptk" train --data data/brown-task/bytes --out "$out/pretrain-$objective" --objective "$objective" \
            --model "$model" --batch-size 8 --seq-len 256 --steps "$steps" --lr 1e-3 --warmup-steps 30 \
            --val-every 100 --sample-every 0 --checkpoint-every 200 --seed "$seed"
    fi
done

finetune() { # name, seed, then extra flags
    name=$1
    s=$2
    shift 2
    "$gptk" finetune --train data/brown-task/train.jsonl --val data/brown-task/val.jsonl \
        --out "$out/finetune-$name-seed$s" --epochs "$epochs" --batch-size 8 --seq-len 192 --lr 3e-4 \
        --seed "$s" --json "$@" > "$out/finetune-$name-seed$s.log"
    grep '"event":"result"' "$out/finetune-$name-seed$s.log" | sed "s/^{/{\"run\":\"$name\",\"seed\":$s,/" >> "$out/results.jsonl"
    tail -n 1 "$out/finetune-$name-seed$s.log"
}
for s in $ft_seeds; do
    finetune clm-lm0.5 "$s" --model "$out/pretrain-clm" --lm-weight 0.5
    finetune clm-lm0 "$s" --model "$out/pretrain-clm" --lm-weight 0
    finetune mlm-bidirectional "$s" --model "$out/pretrain-mlm" --lm-weight 0 --bidirectional
    finetune random-lm0.5 "$s" --model "$out/pretrain-clm" --random-init --lm-weight 0.5
    finetune random-lm0 "$s" --model "$out/pretrain-clm" --random-init --lm-weight 0
    finetune random-bidirectional "$s" --model "$out/pretrain-mlm" --random-init --lm-weight 0 --bidirectional
done
# Mean and spread of the final validation accuracy per configuration, then the mean accuracy and
# task loss on the validation passages after each epoch.
python3 - "$out" <<'PY'
import collections, glob, json, os, statistics, sys
out = sys.argv[1]
runs, baseline = {}, None
for line in open(os.path.join(out, "results.jsonl")):
    r = json.loads(line)
    runs.setdefault(r["run"], []).append(r["val_accuracy"])
    baseline = r["majority_baseline"]
print(f"majority-class baseline: {baseline:.3f}")
for name, accs in runs.items():
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"{name:<22} mean {statistics.mean(accs):.3f}  sd {sd:.3f}  runs {len(accs)}  {[round(a, 3) for a in accs]}")
print("per epoch, mean over seeds: accuracy / task loss on the validation passages")
for name in runs:
    epochs = collections.defaultdict(list)
    for log in glob.glob(os.path.join(out, f"finetune-{name}-seed*.log")):
        for line in open(log):
            r = json.loads(line)
            if r.get("event") == "epoch":
                epochs[r["epoch"]].append((r["val_accuracy"], r["val_class_loss"]))
    cells = [f"{statistics.mean(a for a, _ in v):.3f} / {statistics.mean(l for _, l in v):.3f}" for _, v in sorted(epochs.items())]
    print(f"{name:<22} " + "  ".join(cells))
PY
echo "results: $out/results.jsonl"
