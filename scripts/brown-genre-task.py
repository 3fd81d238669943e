#!/usr/bin/env python3
"""Build the pretraining-vs-fine-tuning experiment data from the Brown corpus.

    scripts/brown-genre-task.py [--brown data/brown] [--out data/brown-task] [--seed 1]
                                [--task-share 0.3] [--passage-words 32] [--labels group]
                                [--max-train 1200] [--max-val 600]

Reads what scripts/fetch-brown.sh wrote (text/<id>.txt and genres.jsonl) and splits the 500
documents, per genre, into two disjoint sets:

- pretraining documents: copied to OUT/pretrain/*.txt, for `gptk prepare` + `gptk train`;
- task documents: cut into passages of --passage-words words, labelled with their document's
  genre group (--labels group: press, general, learned, fiction) or genre (--labels genre: the
  15 codes ca ... cr). Passages of one document all go to the same task split, so validation
  passages come from documents that neither pretraining nor fine-tuning ever saw:
  OUT/train.jsonl and OUT/val.jsonl ({"text", "label", "doc"} per line).

Standard library only. Deterministic for a given --seed.
"""

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

GROUPS = {
    "ca": "press", "cb": "press", "cc": "press",
    "cd": "general", "ce": "general", "cf": "general", "cg": "general", "ch": "general",
    "cj": "learned",
    "ck": "fiction", "cl": "fiction", "cm": "fiction", "cn": "fiction", "cp": "fiction", "cr": "fiction",
}


def passages(text, words_per_passage):
    words = text.split()
    out = []
    for start in range(0, len(words), words_per_passage):
        chunk = words[start:start + words_per_passage]
        if len(chunk) * 2 >= words_per_passage:  # drop a short tail
            out.append(" ".join(chunk))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brown", default="data/brown", type=Path)
    ap.add_argument("--out", default="data/brown-task", type=Path)
    ap.add_argument("--seed", default=1, type=int)
    ap.add_argument("--task-share", default=0.3, type=float, help="share of each genre's documents kept for the task")
    ap.add_argument("--val-share", default=0.4, type=float, help="share of the task documents used for validation")
    ap.add_argument("--passage-words", default=32, type=int)
    ap.add_argument("--labels", default="group", choices=["group", "genre"])
    ap.add_argument("--max-train", default=1200, type=int, help="keep at most this many training passages (0: all)")
    ap.add_argument("--max-val", default=600, type=int, help="keep at most this many validation passages (0: all)")
    args = ap.parse_args()

    table = args.brown / "genres.jsonl"
    if not table.is_file():
        sys.exit(f"error: {table}: not found (run scripts/fetch-brown.sh first)")
    docs = [json.loads(line) for line in table.read_text().splitlines() if line.strip()]
    rng = random.Random(args.seed)
    by_genre = {}
    for d in docs:
        by_genre.setdefault(d["genre"], []).append(d)

    pretrain, task_train, task_val = [], [], []
    for genre in sorted(by_genre):
        group = sorted(by_genre[genre], key=lambda d: d["id"])
        rng.shuffle(group)
        n_task = max(2, round(args.task_share * len(group)))
        n_val = max(1, round(args.val_share * n_task))
        task, rest = group[:n_task], group[n_task:]
        task_val += task[:n_val]
        task_train += task[n_val:]
        pretrain += rest

    out = args.out
    if (out / "pretrain").exists():
        shutil.rmtree(out / "pretrain")
    (out / "pretrain").mkdir(parents=True)
    for d in pretrain:
        shutil.copy(args.brown / d["file"], out / "pretrain" / f"{d['id']}.txt")

    def write(name, split_docs, limit):
        lines = []
        for d in sorted(split_docs, key=lambda d: d["id"]):
            label = GROUPS[d["genre"]] if args.labels == "group" else d["genre"]
            text = (args.brown / d["file"]).read_text()
            for p in passages(text, args.passage_words):
                lines.append(json.dumps({"text": p, "label": label, "doc": d["id"]}))
        rng.shuffle(lines)
        if limit:
            lines = lines[:limit]
        (out / name).write_text("\n".join(lines) + "\n")
        return len(lines)

    n_train = write("train.jsonl", task_train, args.max_train)
    n_val = write("val.jsonl", task_val, args.max_val)
    print(
        f"{out}: {len(pretrain)} pretraining documents in pretrain/; task: {len(task_train)} documents -> "
        f"{n_train} training passages, {len(task_val)} documents -> {n_val} validation passages "
        f"({args.passage_words} words, labels by {args.labels})"
    )


if __name__ == "__main__":
    main()
