#!/usr/bin/env python3
"""Turns the logs of one scripts/gpu-check.sh run into the Markdown page docs/gpu-runs/ keeps.

    scripts/gpu-report.py OUT_DIR [--commit SHA] [--date YYYY-MM-DD] > docs/gpu-runs/DATE.md

OUT_DIR is the folder gpu-check.sh wrote ($OUT): summary.txt, one <stage>.log per stage, COMMIT
(the commit the bundle was built from, written by scripts/gpu-bundle.sh), bench_gptk.json. The
page has the date, the commit, the GPU and driver (from nvidia-smi), every stage's status and
time, gptk check's totals with the tolerance each op family used at most and every failing row,
the training runs (first and last loss, validation loss, median tokens/s and MFU after warm-up),
and the benchmark table as `gptk bench` printed it. Nothing is measured here; a stage that did
not run is listed as such. Standard library only.
"""

import argparse
import datetime
import json
import os
import re
import statistics
import sys

WARM_STEPS = 3


def read(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def gpu_line(smi):
    """'NVIDIA H200 · driver 580.x · CUDA 13.0' from nvidia-smi's table."""
    if not smi:
        return "unknown (no nvidia-smi log)"
    driver = re.search(r"Driver Version:\s*([\w.]+)", smi)
    cuda = re.search(r"CUDA Version:\s*([\w.]+)", smi)
    name = re.search(r"\|\s+\d+\s+(NVIDIA[^|]*?)\s{2,}", smi)
    parts = [name.group(1).strip() if name else "unknown GPU"]
    if driver:
        parts.append(f"driver {driver.group(1)}")
    if cuda:
        parts.append(f"CUDA {cuda.group(1)}")
    return " · ".join(parts)


def stages(summary):
    """(status, stage, detail) per PASS/FAIL/SKIP line of summary.txt, and the total line."""
    rows, total = [], None
    for line in (summary or "").splitlines():
        m = re.match(r"(PASS|FAIL|SKIP)\s+(\S+?):?\s+(.*)$", line) or re.match(r"(PASS|FAIL|SKIP)\s+(\S+)()$", line)
        if m:
            detail = m.group(3).strip()
            if m.group(1) == "PASS":
                detail = detail.strip("()")
            rows.append((m.group(1), m.group(2), detail))
        elif line.startswith("total "):
            total = line.strip()
    return rows, total


# The tensor column of the row that closes each gptk check case: its guards held (or not).
GUARD_ROW = "guards (outside the tensors)"


def check_section(log, name):
    """Totals, the most tolerance each op used, and the failing rows of one gptk check log."""
    lines = [f"### {name}", ""]
    if log is None:
        return lines + ["Not run.", ""]
    worst, failing, total = {}, [], None
    # Which path the work that can run in a cuBLASLt epilogue took, per case (each case has one
    # row per tensor): [in the epilogue, cases].
    paths = {"GELU": [0, 0], "bias gradient": [0, 0]}
    cases = set()
    # Cases whose guards around the tensors held: [intact, cases].
    guards = [0, 0]
    for line in log.splitlines():
        if re.match(r"\d+ passed, \d+ failed$", line.strip()):
            total = line.strip()
            continue
        fields = line.split()
        if GUARD_ROW in line and fields[-1] in ("ok", "FAIL"):
            guards[0] += fields[-1] == "ok"
            guards[1] += 1
            if fields[-1] == "FAIL":
                failing.append(line.rstrip())
            continue
        if len(fields) >= 8 and fields[-1] in ("ok", "FAIL") and fields[-2].endswith("%"):
            try:
                used = float(fields[-2].rstrip("%"))
            except ValueError:
                continue
            op = fields[0]
            worst[op] = max(worst.get(op, 0.0), used)
            case = " ".join(fields[:-6])  # the op and its case, without the tensor and the numbers
            if case not in cases:
                cases.add(case)
                for what, pattern, fused in (("GELU", r", (epilogue|apart)(,|$)", "epilogue"),
                                             ("bias gradient", r"bias grad (in epilogue|apart)", "in epilogue")):
                    m = re.search(pattern, case)
                    if m:
                        paths[what][0] += m.group(1) == fused
                        paths[what][1] += 1
            if fields[-1] == "FAIL":
                failing.append(line.rstrip())
    lines.append(f"Result: **{total or 'no total line (the run stopped before the end; see the log)'}**.")
    lines.append("")
    if total is None:
        last = [line.strip() for line in log.splitlines() if line.strip()]
        if last:
            lines += [f"Its last line: `{last[-1]}`", ""]
    if guards[1]:
        lines += [f"Guards around the tensors intact in {guards[0]} of {guards[1]} cases.", ""]
    counted = [f"{what} in the epilogue in {fused} of {n} cases" for what, (fused, n) in paths.items() if n]
    if counted:
        lines += ["cuBLASLt epilogues: " + "; ".join(counted) + ".", ""]
    if worst:
        lines += ["| op | most tolerance used |", "|---|---|"]
        lines += [f"| {op} | {used:.1f}% |" for op, used in worst.items()]
        lines.append("")
    if failing:
        lines += ["Failing rows:", "", "```"] + failing + ["```", ""]
    return lines


def train_section(out, names):
    lines = ["## Training", ""]
    rows = []
    for stage in names:
        log = read(out, f"{stage}.log")
        if log is None:
            continue
        steps, vals = [], []
        for line in log.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "step":
                steps.append(event)
            elif event.get("event") == "val":
                vals.append(event)
        if not steps:
            rows.append(f"| {stage} | no step finished | | | | |")
            continue
        warm = steps[WARM_STEPS:] or steps
        tps = statistics.median(s["tokens_per_s"] for s in warm)
        mfus = [s["mfu"] for s in warm if s.get("mfu") is not None]
        mfu = f"{100 * statistics.median(mfus):.1f}%" if mfus else "–"
        val = f"{vals[-1]['val_loss']:.3f} (step {vals[-1]['step']})" if vals else "–"
        rows.append(f"| {stage} | {steps[-1]['step']} | {steps[0]['loss']:.3f} → {steps[-1]['loss']:.3f} | {val} "
                    f"| {tps:,.0f} | {mfu} |")
    if not rows:
        return lines + ["No training stage ran.", ""]
    lines += ["| stage | steps | loss first → last | last validation loss | tokens/s (median after "
              f"{WARM_STEPS} steps) | MFU |", "|---|---|---|---|---|---|"] + rows + [""]
    return lines


def bench_section(log):
    lines = ["## Benchmarks (`gptk bench`, beside PyTorch where bench-torch ran)", ""]
    if log is None:
        return lines + ["Not run.", ""]
    body = [line.rstrip() for line in log.splitlines()[1:]]  # the first line echoes the command
    return lines + ["```"] + body + ["```", ""]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the folder scripts/gpu-check.sh wrote ($OUT)")
    ap.add_argument("--commit", help="the commit the binaries were built from (default: OUT/COMMIT)")
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    args = ap.parse_args()
    if not os.path.isdir(args.out):
        sys.exit(f"gpu-report: {args.out} is not a folder (expected the $OUT of scripts/gpu-check.sh)")
    summary = read(args.out, "summary.txt")
    if summary is None:
        sys.exit(f"gpu-report: {args.out}/summary.txt is missing (expected the $OUT of scripts/gpu-check.sh)")
    commit = args.commit or (read(args.out, "COMMIT") or "").strip() or "unknown (no COMMIT file)"
    rows, total = stages(summary)

    page = [f"# GPU run {args.date}", "",
            f"- commit: `{commit}`",
            f"- GPU: {gpu_line(read(args.out, 'nvidia-smi.log'))}",
            f"- run: `scripts/gpu-check.sh` ({total or 'no total line: the run was cut short'})", "",
            "## Stages", "", "| stage | result | time / detail |", "|---|---|---|"]
    page += [f"| {name} | {status} | {detail} |" for status, name, detail in rows]
    page += ["", "## `gptk check`", ""]
    page += check_section(read(args.out, "check-bf16.log"), "bf16")
    page += check_section(read(args.out, "check-f32.log"), "f32")
    train_stages = sorted(n for _, n, _ in rows if n.startswith("train-") or n.startswith("launch-"))
    page += train_section(args.out, train_stages)
    page += bench_section(read(args.out, "bench.log"))
    print("\n".join(page).rstrip() + "\n")


if __name__ == "__main__":
    main()
