#!/bin/sh
# The experiment of docs/experiments/pretraining.md: does pretraining pay on a small corpus?
#
#   scripts/brown-experiment.sh [GPTK] [OUT]      (defaults: target/release/gptk, runs/brown)
#
# 1. Brown corpus -> pretraining documents + a genre-group task on held-out documents
#    (scripts/fetch-brown.sh, scripts/brown-genre-task.py).
# 2. Pretrain the same small model twice on the pretraining documents: causal LM and masked LM.
# 3. Fine-tune for the task: from the CLM model with λ = 0.5 and λ = 0, from the MLM model
#    (bidirectional, λ = 0), and from random initialisation with λ = 0.5 and λ = 0.
# Every run prints its validation accuracy; OUT/results.jsonl collects them.
# Sizes are chosen for a CPU (about 20-30 minutes on two cores); set STEPS, EPOCHS, MODEL to scale.
set -eu
gptk=${1:-target/release/gptk}
out=${2:-runs/brown}
steps=${STEPS:-600}
epochs=${EPOCHS:-2}
model=${MODEL:-tiny}
seed=${SEED:-1}

[ -f data/brown/genres.jsonl ] || scripts/fetch-brown.sh
python3 scripts/brown-genre-task.py --brown data/brown --out data/brown-task --seed "$seed"
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

finetune() { # name, then extra flags
    name=$1
    shift
    "$gptk" finetune --train data/brown-task/train.jsonl --val data/brown-task/val.jsonl \
        --out "$out/finetune-$name" --epochs "$epochs" --batch-size 8 --seq-len 192 --lr 3e-4 \
        --seed "$seed" --json "$@" > "$out/finetune-$name.log"
    grep '"event":"result"' "$out/finetune-$name.log" | sed "s/^{/{\"run\":\"$name\",/" >> "$out/results.jsonl"
    tail -n 1 "$out/finetune-$name.log"
}
finetune clm-lm0.5 --model "$out/pretrain-clm" --lm-weight 0.5
finetune clm-lm0 --model "$out/pretrain-clm" --lm-weight 0
finetune mlm-bidirectional --model "$out/pretrain-mlm" --lm-weight 0 --bidirectional
finetune random-lm0.5 --model "$out/pretrain-clm" --random-init --lm-weight 0.5
finetune random-lm0 --model "$out/pretrain-clm" --random-init --lm-weight 0
echo "results: $out/results.jsonl"
