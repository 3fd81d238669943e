#!/usr/bin/env python3
"""Hugging Face checkpoints through gptk and back: transformers -> gptk -> transformers.

For each case a random GPT2LMHeadModel is written the way the case says, gptk reads it with
`gptk::checkpoint::load` and writes it again with `gptk::checkpoint::save` (examples/convert.rs),
and transformers loads gptk's output. The check: every tensor of gptk's output equals the
original bit for bit (the embedding padded with zero rows up to Vp = round_up(V + 5, 128)), the
config says vocab_size = Vp and gptk_vocab_size = V, and the logits of the two models on random
tokens agree over the real vocabulary.

Cases: save_pretrained in float32, bfloat16 and float16; a bare file without the `transformer.`
prefix and with the causal-mask buffers (like the hub's original gpt2 files); an explicit tied
`lm_head.weight`; a model that has been through gptk once and through save_pretrained again
(gptk_vocab_size must survive transformers); and an untied lm_head, which gptk must refuse.

Needs torch, transformers and safetensors (not part of CI). Run from the repository root:
    python3 scripts/hf_roundtrip.py            # builds the example with cargo first
    python3 scripts/hf_roundtrip.py --convert target/release/examples/convert
Exits non-zero if any case fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

V, CTX, C, L, NH = 1000, 64, 64, 2, 4
VP = (V + 5 + 127) // 128 * 128
B, T = 2, 32


def random_model(seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=CTX, n_embd=C, n_layer=L, n_head=NH, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=V - 1, eos_token_id=V - 1)
    model = GPT2LMHeadModel(cfg).eval()
    # Biases and layernorm parameters start at 0 and 1; perturb everything so that every tensor
    # matters to the logits.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def strip(name):
    return name[len("transformer."):] if name.startswith("transformer.") else name


def write_bare(model, path, prefix, lm_head, mask_buffers):
    """A safetensors file written by hand, names with or without `transformer.`."""
    state = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        state[name if prefix else strip(name)] = t.detach().clone().contiguous()
    if lm_head is not None:
        state["lm_head.weight"] = lm_head.contiguous()
    if mask_buffers:
        mask = torch.tril(torch.ones(CTX, CTX)).view(1, 1, CTX, CTX)
        for i in range(L):
            state[f"h.{i}.attn.bias"] = mask.clone()
    save_file(state, path, metadata={"format": "pt"})


def convert(binary, src, dst):
    return subprocess.run([binary, src, dst], capture_output=True, text=True)


def compare(original, out_dir):
    """Bitwise tensor comparison and logits difference between `original` and gptk's output."""
    loaded = GPT2LMHeadModel.from_pretrained(out_dir).eval()
    config = json.load(open(os.path.join(out_dir, "config.json")))
    problems = []
    if (config.get("vocab_size"), config.get("gptk_vocab_size")) != (VP, V):
        problems.append(f"config vocab_size/gptk_vocab_size = {config.get('vocab_size')}/{config.get('gptk_vocab_size')}")
    if loaded.lm_head.weight.data_ptr() != loaded.transformer.wte.weight.data_ptr():
        problems.append("lm_head is not tied after loading")
    got = loaded.state_dict()
    for name, want in original.state_dict().items():
        if name == "lm_head.weight":
            continue
        want = want.float()
        have = got[name]
        if name == "transformer.wte.weight":
            if have.shape != (VP, C) or torch.count_nonzero(have[V:]) != 0:
                problems.append(f"{name}: shape {tuple(have.shape)} or nonzero padding rows")
            have = have[:V]
        if have.shape != want.shape or not torch.equal(have, want):
            problems.append(f"{name}: values differ (max {(have - want).abs().max().item():.3e})")
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (B, T), generator=g)
    with torch.no_grad():
        want = original.float()(tokens).logits
        have = loaded(tokens).logits[..., :V]
    diff = (have - want).abs().max().item()
    scale = want.abs().max().item()
    if diff > 1e-5 * scale:
        problems.append(f"logits differ by {diff:.3e} (scale {scale:.3e})")
    return problems, diff, scale


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--convert", help="path of the built examples/convert binary (default: build it with cargo)")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    binary = args.convert
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--example", "convert"], check=True)
        binary = os.path.join("target", "release", "examples", "convert")
    binary = os.path.abspath(binary)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        def case(name, write, original):
            src, dst = os.path.join(tmp, name, "in"), os.path.join(tmp, name, "out")
            os.makedirs(src)
            write(src)
            run = convert(binary, src, dst)
            if run.returncode != 0:
                results.append((name, [f"gptk refused it: {run.stderr.strip()}"], float("nan"), 0.0))
                return dst
            problems, diff, scale = compare(original, dst)
            results.append((name, problems, diff, scale))
            return dst

        model = random_model(0)
        case("save_pretrained f32", lambda d: model.save_pretrained(d), model)
        for dtype, label in [(torch.bfloat16, "bf16"), (torch.float16, "f16")]:
            low = random_model(1).to(dtype)
            # The reference is the low-precision model's own values, widened exactly to f32.
            case(f"save_pretrained {label}", lambda d, low=low: low.save_pretrained(d), low)

        def hub_style(d):
            write_bare(model, os.path.join(d, "model.safetensors"), prefix=False, lm_head=None, mask_buffers=True)
            model.config.to_json_file(os.path.join(d, "config.json"))
        case("no prefix + mask buffers (hub style)", hub_style, model)

        def explicit_head(d):
            wte = model.transformer.wte.weight.detach().clone()
            write_bare(model, os.path.join(d, "model.safetensors"), prefix=True, lm_head=wte, mask_buffers=False)
            model.config.to_json_file(os.path.join(d, "config.json"))
        case("explicit tied lm_head.weight", explicit_head, model)

        def no_config(d):
            # Without config.json gptk infers the shape from the tensors and assumes GPT-2's head
            # size of 64: C = 64 means 1 head (this model has 4), so the reference is the same
            # weights in a 1-head model.
            write_bare(model, os.path.join(d, "model.safetensors"), prefix=True, lm_head=None, mask_buffers=False)
        one_head = GPT2LMHeadModel(GPT2Config(**{**model.config.to_dict(), "n_head": 1})).eval()
        one_head.load_state_dict(model.state_dict())
        case("bare file, no config.json (shape inferred)", no_config, one_head)

        # gptk -> transformers -> gptk: what transformers writes back must still carry the real
        # vocabulary, and loads to the same tensors.
        first = os.path.join(tmp, "save_pretrained f32", "out")
        again = GPT2LMHeadModel.from_pretrained(first).eval()
        case("gptk output re-saved by transformers", lambda d: again.save_pretrained(d), model)

        # An lm_head that is not the embedding cannot be tied: gptk must refuse with one line.
        untied_dir = os.path.join(tmp, "untied")
        os.makedirs(untied_dir)
        head = model.transformer.wte.weight.detach().clone()
        head[3, 5] += 1.0
        write_bare(model, os.path.join(untied_dir, "model.safetensors"), prefix=True, lm_head=head, mask_buffers=False)
        model.config.to_json_file(os.path.join(untied_dir, "config.json"))
        run = convert(binary, untied_dir, os.path.join(tmp, "untied-out"))
        msg = run.stderr.strip()
        ok = run.returncode == 1 and "lm_head.weight differs from wte.weight" in msg and "\n" not in msg
        results.append(("untied lm_head (must be refused)", [] if ok else [f"exit {run.returncode}: {msg}"],
                        float("nan"), 0.0))

    width = max(len(r[0]) for r in results)
    failed = 0
    print(f"GPT-2 L={L} NH={NH} C={C} ctx={CTX} V={V} (gptk Vp={VP}); logits on B={B} T={T} random tokens")
    for name, problems, diff, scale in results:
        status = "ok  " if not problems else "FAIL"
        failed += bool(problems)
        detail = "" if diff != diff else f"tensors bitwise equal, max |logits diff| {diff:.3e} (max |logit| {scale:.2f})"
        if name.startswith("untied") and not problems:
            detail = "refused: one line naming the file"
        print(f"{status} {name:<{width}}  {detail}")
        for p in problems:
            print(f"       {p}")
    print(f"{len(results) - failed} of {len(results)} cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
