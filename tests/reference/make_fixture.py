#!/usr/bin/env python3
"""Writes tests/reference/gpt2_tiny.safetensors, the PyTorch reference that tests/torch_parity.rs
checks gptk's CPU model against.

The model is written out op by op in torch (no transformers in the computation), so every step
of the arithmetic is visible here: token + position embedding, pre-norm blocks with learned
positions, tanh-GELU MLP of width 4C, tied input/output embeddings, the vocabulary padded as gptk
pads it (Vp = round_up(V + 5, 128)) and the softmax over the first V columns only. Once, it is
checked against `transformers.GPT2LMHeadModel` loaded with the same weights (logits and
gradients), so the fixture is known to be GPT-2 and not merely what gptk believes GPT-2 is.

Precision: the reference runs in float64 on weights that are float32 numbers. The Rust test runs
gptk's f32 backend on the same float32 weights, so the difference it measures is gptk's f32
rounding alone (about 1e-7 relative per op); a float32 reference would add rounding of the same
size on the other side and blur what is measured. The float64 reference also lets the test run
gptk's f64 backend and demand agreement to ~1e-12, which shows the arithmetic is the same, not
merely close.

The file holds:
  transformer.*            f32 weights in Hugging Face layout (Conv1D weights (C, OC), wte (Vp, C))
  {case}.tokens/.targets   i32 (B, T); targets -1 are ignored
  {case}.logits/.dlogits   f64 (B, T, Vp): logits, and d loss / d logits (0 in padded columns)
  {case}.losses/.loss      f64 per-token losses (0 where ignored) and their mean over counted ones
  {case}.grad.<name>       f64 gradient of the mean loss, Hugging Face layout
  adamw.losses             f64 (STEPS + 1): loss at each step, then after the last update
  adamw.grad_norms         f64 (STEPS): global gradient norm before clipping
  adamw.params.<name>      f32 weights after STEPS updates, Hugging Face layout
  metadata                 gptk_config (the model), batch, adamw hyper-parameters, cases
Cases: `causal` (next-token prediction) and `mlm` (bidirectional attention, masked inputs, only
the masked positions counted).

Usage: python3 tests/reference/make_fixture.py [--out PATH]
Needs torch, numpy, safetensors and transformers; reruns give the same file up to float64
rounding differences of the local torch build.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
from safetensors.torch import save_file

# Model and batch (gptk's names).
L, NH, C, CTX, V = 2, 2, 32, 16, 67
HS = C // NH
NUM_SPECIAL_TOKENS = 5  # [MASK], start, delimiter, extract, pad: ids V .. V+4
MASK_ID, START_ID = V, V + 1
VP = (V + NUM_SPECIAL_TOKENS + 127) // 128 * 128
B, T = 2, 8
LN_EPS = 1e-5
SEED = 20240520

# AdamW as gptk's trainer runs it (`gptk train` defaults, apart from a larger lr so that a few
# steps move the loss visibly). gptk stores these as f32 and widens them, so the reference uses
# the f32-rounded values too.
ADAMW = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0}
ADAMW_STEPS = 4


def f32(x):
    return float(np.float32(x))


def conv1d(name):
    return name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))


def param_names():
    names = ["wte.weight", "wpe.weight"]
    for i in range(L):
        for part in [
            "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
            "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
            "mlp.c_proj.weight", "mlp.c_proj.bias",
        ]:
            names.append(f"h.{i}.{part}")
    return names + ["ln_f.weight", "ln_f.bias"]


def make_weights(rng):
    """Seeded float32 weights in Hugging Face layout. Larger than GPT-2's init (std 0.02) so that
    attention is far from uniform and GELU far from linear; layernorm gains and biases are
    perturbed so their gradients are exercised."""
    shapes = {"wte.weight": (VP, C), "wpe.weight": (CTX, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(L):
        shapes.update({
            f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
            f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),
            f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
            f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
            f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
            f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,),
        })
    w = {}
    for name in param_names():
        shape = shapes[name]
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            x = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            x = 0.1 * rng.standard_normal(shape)
        elif name == "wte.weight":
            # Real and special-token rows random; the alignment padding stays 0 as gptk keeps it.
            x = np.zeros(shape)
            x[: V + NUM_SPECIAL_TOKENS] = 0.3 * rng.standard_normal((V + NUM_SPECIAL_TOKENS, C))
        elif name == "wpe.weight":
            x = 0.1 * rng.standard_normal(shape)
        else:
            x = 0.15 * rng.standard_normal(shape)
        w[name] = x.astype(np.float32)
    return w


def make_batches(rng):
    """causal: random tokens (a start token opening each row), random targets, three ignored.
    mlm: five positions replaced by [MASK] (or kept, BERT's 10%), only those counted."""
    tokens = rng.integers(0, V, size=(B, T))
    tokens[:, 0] = START_ID
    targets = rng.integers(0, V, size=(B, T))
    targets[0, 2] = targets[1, 5] = targets[1, 7] = -1
    causal = (tokens.astype(np.int32), targets.astype(np.int32))

    original = rng.integers(0, V, size=(B, T))
    masked = original.copy()
    mlm_targets = np.full((B, T), -1)
    for b, t in [(0, 1), (0, 6), (1, 0), (1, 3), (1, 4)]:
        mlm_targets[b, t] = original[b, t]
        masked[b, t] = MASK_ID
    masked[1, 4] = original[1, 4]  # a counted position whose input was left as it was
    mlm = (masked.astype(np.int32), mlm_targets.astype(np.int32))
    return {"causal": causal, "mlm": mlm}


# ---- the model, op by op --------------------------------------------------------------------

def layernorm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + LN_EPS) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def attention(x, w, b, causal):
    bsz, t, _ = x.shape
    qkv = x @ w + b  # Conv1D: (B, T, C) @ (C, 3C)
    q, k, v = qkv.split(C, dim=-1)
    q, k, v = (z.view(bsz, t, NH, HS).transpose(1, 2) for z in (q, k, v))  # (B, NH, T, HS)
    scores = q @ k.transpose(-2, -1) / math.sqrt(HS)
    if causal:
        allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))
        scores = scores.masked_fill(~allowed, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    return y.transpose(1, 2).reshape(bsz, t, C)


def forward(p, tokens, causal):
    """Logits (B, T, Vp) over the padded vocabulary, as gptk's tied classifier computes them."""
    t = tokens.shape[1]
    x = p["wte.weight"][tokens] + p["wpe.weight"][:t]
    for i in range(L):
        h = lambda name: p[f"h.{i}.{name}"]  # noqa: E731
        a = attention(layernorm(x, h("ln_1.weight"), h("ln_1.bias")), h("attn.c_attn.weight"),
                      h("attn.c_attn.bias"), causal)
        x = x + a @ h("attn.c_proj.weight") + h("attn.c_proj.bias")
        m = gelu_tanh(layernorm(x, h("ln_2.weight"), h("ln_2.bias")) @ h("mlp.c_fc.weight") + h("mlp.c_fc.bias"))
        x = x + m @ h("mlp.c_proj.weight") + h("mlp.c_proj.bias")
    x = layernorm(x, p["ln_f.weight"], p["ln_f.bias"])
    return x @ p["wte.weight"].T


def token_losses(logits, targets):
    """Per-token cross-entropy over the first V columns, 0 where the target is -1."""
    logp = torch.log_softmax(logits[..., :V], dim=-1)
    counted = targets >= 0
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, -picked, torch.zeros_like(picked)), counted


def mean_loss(logits, targets):
    losses, counted = token_losses(logits, targets)
    return losses.sum() / counted.sum(), losses


def leaf_params(weights):
    return {n: torch.tensor(w, dtype=torch.float64, requires_grad=True) for n, w in weights.items()}


def run_case(weights, tokens, targets, causal):
    p = leaf_params(weights)
    tok, tgt = torch.from_numpy(tokens).long(), torch.from_numpy(targets).long()
    logits = forward(p, tok, causal)
    logits.retain_grad()
    loss, losses = mean_loss(logits, tgt)
    loss.backward()
    # The library's cross-entropy must agree with the explicit one.
    ref = torch.nn.functional.cross_entropy(logits[..., :V].reshape(-1, V), tgt.reshape(-1), ignore_index=-1)
    assert abs(ref.item() - loss.item()) < 1e-12, (ref.item(), loss.item())
    return {
        "logits": logits.detach(),
        "dlogits": logits.grad.detach(),
        "losses": losses.detach(),
        "loss": loss.detach().reshape(1),
        "grads": {n: t.grad.detach() for n, t in p.items()},
    }


def adamw_run(weights, tokens, targets):
    """ADAMW_STEPS steps of gptk's update on one causal batch: gradients clipped to a global norm
    of grad_clip by scaling with min(1, clip / norm) (PyTorch's clip_grad_norm_ divides by
    norm + 1e-6 instead, so it is written out), then torch.optim.AdamW with weight decay on the 2-D
    weights only (embeddings included) and bias correction."""
    p = leaf_params(weights)
    decay = [t for t in p.values() if t.dim() == 2]
    no_decay = [t for t in p.values() if t.dim() != 2]
    hp = {k: f32(v) for k, v in ADAMW.items()}
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], foreach=False,
    )
    tok, tgt = torch.from_numpy(tokens).long(), torch.from_numpy(targets).long()
    losses, norms = [], []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=False)
        loss, _ = mean_loss(forward(p, tok, True), tgt)
        loss.backward()
        norm = math.sqrt(sum(float((t.grad**2).sum()) for t in p.values()))
        scale = min(1.0, hp["grad_clip"] / norm)
        for t in p.values():
            t.grad.mul_(scale)
        opt.step()
        losses.append(loss.item())
        norms.append(norm)
    with torch.no_grad():
        final, _ = mean_loss(forward(p, tok, True), tgt)
    losses.append(final.item())
    assert norms[0] > hp["grad_clip"], "the fixture should exercise clipping"
    return losses, norms, {n: t.detach() for n, t in p.items()}


def check_against_transformers(weights, tokens, targets, case):
    """Loads the same weights into transformers' GPT2LMHeadModel (float64, eager attention) and
    checks its logits, and the gradients of gptk's loss through it, against the explicit model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VP, n_positions=CTX, n_embd=C, n_layer=L, n_head=NH, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=LN_EPS, tie_word_embeddings=True,
        bos_token_id=V - 1, eos_token_id=V - 1,
    )
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).double().eval()
    state = {f"transformer.{n}": torch.tensor(w, dtype=torch.float64) for n, w in weights.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(".attn.bias" in k or ".attn.masked_bias" in k for k in missing), (missing, unexpected)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head is not tied"
    logits = model(torch.from_numpy(tokens).long()).logits
    loss, _ = mean_loss(logits, torch.from_numpy(targets).long())
    loss.backward()
    logit_diff = (logits.detach() - case["logits"]).abs().max().item()
    assert logit_diff < 1e-12, f"transformers' logits differ from the explicit model by {logit_diff:e}"
    grad_diff = 0.0
    for name, g in case["grads"].items():
        hf = dict(model.named_parameters())[f"transformer.{name}"].grad
        grad_diff = max(grad_diff, (hf - g).abs().max().item())
    assert grad_diff < 1e-12, f"transformers' gradients differ from the explicit model by {grad_diff:e}"
    return logit_diff, grad_diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2_tiny.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # one summation order, whatever the machine

    rng = np.random.default_rng(SEED)
    weights = make_weights(rng)
    batches = make_batches(rng)

    tensors = {f"transformer.{n}": torch.from_numpy(w) for n, w in weights.items()}
    results = {}
    for name, (tokens, targets) in batches.items():
        case = run_case(weights, tokens, targets, causal=(name == "causal"))
        results[name] = case
        tensors[f"{name}.tokens"] = torch.from_numpy(tokens)
        tensors[f"{name}.targets"] = torch.from_numpy(targets)
        for key in ["logits", "dlogits", "losses", "loss"]:
            tensors[f"{name}.{key}"] = case[key].contiguous()
        for pname, g in case["grads"].items():
            tensors[f"{name}.grad.{pname}"] = g.contiguous()

    logit_diff, grad_diff = check_against_transformers(weights, *batches["causal"], results["causal"])

    losses, norms, final = adamw_run(weights, *batches["causal"])
    tensors["adamw.losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["adamw.grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    for pname, t in final.items():
        tensors[f"adamw.params.{pname}"] = t.to(torch.float32).contiguous()

    metadata = {
        "format": "pt",
        "gptk_config": json.dumps({"n_layer": L, "n_head": NH, "n_embd": C, "n_ctx": CTX, "vocab_size": V}),
        "batch": json.dumps({"b": B, "t": T}),
        "adamw": json.dumps({**ADAMW, "steps": ADAMW_STEPS}),
        "cases": json.dumps({"causal": True, "mlm": False}),
        "generator": "tests/reference/make_fixture.py (torch float64)",
    }
    save_file(tensors, args.out, metadata=metadata)

    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {len(tensors)} tensors, {size} bytes")
    print(f"model L={L} NH={NH} C={C} ctx={CTX} V={V} Vp={VP}; batch B={B} T={T}")
    for name, case in results.items():
        print(f"{name:>6}: loss {case['loss'].item():.12f} over {(batches[name][1] >= 0).sum()} counted targets")
    print(f"transformers GPT2LMHeadModel vs explicit model: max |logits diff| {logit_diff:.3e}, "
          f"max |grad diff| {grad_diff:.3e}")
    print("adamw losses: " + " ".join(f"{x:.9f}" for x in losses))
    print("adamw grad norms (before clipping): " + " ".join(f"{x:.6f}" for x in norms))


if __name__ == "__main__":
    main()
