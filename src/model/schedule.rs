//! The forward and backward schedule: the model read top to bottom, written once for every
//! backend.
//!
//! Shapes: N = B·T rows; the residual stream is (N, C). The backward consumes the activations the
//! forward kept (see `ActLayout`) and reuses three scratch buffers per layer; the residual
//! gradient `dres` accumulates through the layernorm backwards, which add into it. Where the plan
//! recomputes (`ActLayout::recompute`), the forward writes GELU and layernorm outputs into one
//! buffer shared by all layers, and the backward runs the same forward op again right before the
//! matmul backward that reads it.

use super::config::ModelConfig;
use super::layout::{ActLayout, ParamLayout, Tensor};
use crate::backend::{Backend, Result};

/// How the blocks attend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// Over the whole sequence of `a.t` tokens: causal (CLM) or bidirectional (MLM).
    Full { causal: bool },
    /// One new token per sequence at position `pos`, against the key/value cache in
    /// `a.kv_cache` (generation; `a.t` is 1).
    Cached { pos: usize },
}

/// Embedding, every block, and the final layernorm: fills `a.lnf` from `a.tokens`.
pub fn forward<K: Backend>(
    k: &mut K,
    cfg: &ModelConfig,
    p: &ParamLayout,
    a: &ActLayout,
    attn: Attention,
) -> Result<()> {
    let (b, t, c, nh) = (a.b, a.t, cfg.n_embd, cfg.n_head);
    let (n, hs) = (b * t, cfg.head_size());
    let wpe = match attn {
        Attention::Full { .. } => p.wpe,
        Attention::Cached { pos } => p.wpe.slice(pos * c, c),
    };
    k.encoder_forward(a.encoded, a.tokens, p.wte, wpe, b, t, c)?;
    // Every residual add is fused with the layernorm that reads its sum: the first layernorm of
    // layer 0 alone reads the embedding; the others are done by the add before them.
    if let (Some(lp), Some(la)) = (p.layers.first(), a.layers.first()) {
        k.layernorm_forward(la.ln1, la.ln1_mean, la.ln1_rstd, a.encoded, lp.ln1_w, lp.ln1_b, n, c)?;
    }
    for (l, (lp, la)) in p.layers.iter().zip(&a.layers).enumerate() {
        let residual = a.residual_in(l);
        k.matmul_forward(la.qkv, la.ln1, lp.qkv_w, Some(lp.qkv_b), n, c, 3 * c)?;
        match attn {
            Attention::Full { causal } => k.attention_forward(la.atty, la.att_lse, la.qkv, b, t, nh, hs, causal)?,
            Attention::Cached { pos } => {
                k.attention_cached(la.atty, la.qkv, a.kv_cache[l], b, a.kv_len, pos, nh, hs)?
            }
        }
        k.matmul_forward(la.attproj, la.atty, lp.attproj_w, Some(lp.attproj_b), n, c, c)?;
        k.residual_layernorm_forward(
            la.residual2,
            la.ln2,
            la.ln2_mean,
            la.ln2_rstd,
            (residual, la.attproj),
            lp.ln2_w,
            lp.ln2_b,
            n,
            c,
        )?;
        if a.recompute.gelu() {
            // The backward recomputes GELU(fch) with the GELU op; the forward uses the same op,
            // so that fcproj's backward reads the values its forward read. (A GELU fused into
            // the GEMM's epilogue works from the unrounded sum, and may differ in the last bit.)
            k.matmul_forward(la.fch, la.ln2, lp.fc_w, Some(lp.fc_b), n, c, 4 * c)?;
            k.gelu_forward(la.fch_gelu, la.fch)?;
        } else {
            k.matmul_gelu_forward(la.fch, la.fch_gelu, la.ln2, lp.fc_w, Some(lp.fc_b), n, c, 4 * c)?;
        }
        k.matmul_forward(la.fcproj, la.fch_gelu, lp.fcproj_w, Some(lp.fcproj_b), n, 4 * c, c)?;
        // The next layernorm: the next layer's first, or the final one.
        let ((out, mean, rstd), (w, bias)) = match (p.layers.get(l + 1), a.layers.get(l + 1)) {
            (Some(np), Some(na)) => ((na.ln1, na.ln1_mean, na.ln1_rstd), (np.ln1_w, np.ln1_b)),
            _ => ((a.lnf, a.lnf_mean, a.lnf_rstd), (p.lnf_w, p.lnf_b)),
        };
        k.residual_layernorm_forward(la.residual3, out, mean, rstd, (la.residual2, la.fcproj), w, bias, n, c)?;
    }
    if p.layers.is_empty() {
        k.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, a.encoded, p.lnf_w, p.lnf_b, n, c)?;
    }
    Ok(())
}

/// The tied classifier and fused loss, `a.chunk` rows at a time: per-token losses into
/// `a.losses`. With `dloss` (the gradient of the total loss w.r.t. each counted token's loss)
/// it also writes dlnf into `a.dbtc` and adds the classifier's share to dwte, chunk by chunk,
/// so the (N, Vp) logits never exist at once.
pub fn classifier<K: Backend>(
    k: &mut K,
    cfg: &ModelConfig,
    p: &ParamLayout,
    a: &ActLayout,
    dloss: Option<f32>,
) -> Result<()> {
    let (n, c, v, vp) = (a.b * a.t, cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size());
    let mut start = 0;
    while start < n {
        let rows = a.chunk.min(n - start);
        let lnf = a.lnf.slice(start * c, rows * c);
        let logits = a.logits.slice(0, rows * vp);
        k.matmul_forward(logits, lnf, p.wte, None, rows, c, vp)?;
        k.cross_entropy(a.losses.slice(start, rows), logits, a.targets.slice(start, rows), rows, v, vp, dloss)?;
        if dloss.is_some() {
            k.matmul_backward(a.dbtc.slice(start * c, rows * c), p.wte.grad(), None, logits, lnf, p.wte, rows, c, vp)?;
        }
        start += rows;
    }
    Ok(())
}

/// Logits (rows, Vp) of `rows` consecutive positions starting at row `start` into `a.logits`
/// (no loss): what sampling reads.
pub fn logits<K: Backend>(
    k: &mut K,
    cfg: &ModelConfig,
    p: &ParamLayout,
    a: &ActLayout,
    start: usize,
    rows: usize,
) -> Result<()> {
    let (c, vp) = (cfg.n_embd, cfg.padded_vocab_size());
    assert!(rows <= a.chunk && start + rows <= a.b * a.t);
    k.matmul_forward(a.logits.slice(0, rows * vp), a.lnf.slice(start * c, rows * c), p.wte, None, rows, c, vp)
}

/// The classification head over every row: logits (N, n_classes) = lnf · Wᵀ + b and the fused
/// loss where the class targets are ≥ 0 (each sequence's extract position). With `dloss` it adds
/// the head's parameter gradients and writes the head's share of dlnf into `dlnf` (overwritten).
/// The head is tiny (N × C × n_classes), so running it on every row costs nothing and needs no
/// gather op.
pub fn head<K: Backend>(
    k: &mut K,
    cfg: &ModelConfig,
    p: &ParamLayout,
    a: &ActLayout,
    dloss: Option<f32>,
    dlnf: Tensor,
) -> Result<()> {
    let (n, c) = (a.b * a.t, cfg.n_embd);
    let ((w, bias), cls) = (p.head.expect("a layout with a head"), a.cls.expect("a plan for classification"));
    let nc = cls.n_classes;
    k.matmul_forward(cls.logits, a.lnf, w, Some(bias), n, c, nc)?;
    k.cross_entropy(cls.losses, cls.logits, cls.targets, n, nc, nc, dloss)?;
    if dloss.is_some() {
        k.matmul_backward(dlnf, w.grad(), Some(bias.grad()), cls.logits, a.lnf, w, n, c, nc)?;
    }
    Ok(())
}

/// Everything after the classifier: from dlnf in `a.dbtc` to every parameter gradient (`+=`).
pub fn backward<K: Backend>(k: &mut K, cfg: &ModelConfig, p: &ParamLayout, a: &ActLayout, causal: bool) -> Result<()> {
    backward_from(k, cfg, p, a, causal, a.dbtc)
}

/// The backward from the gradient of the final layernorm's output held in `dlnf` (any (N, C)
/// tensor the blocks' backward does not use before reading it: `a.dbtc`, or the front of `a.d4c`).
pub fn backward_from<K: Backend>(
    k: &mut K,
    cfg: &ModelConfig,
    p: &ParamLayout,
    a: &ActLayout,
    causal: bool,
    dlnf: Tensor,
) -> Result<()> {
    backward_blocks(k, cfg, p, a, causal, dlnf)?;
    // The embedding's backward from the residual stream's gradient: the only op that needs more
    // of the batch's token ids than their tensor (the CUDA backend reads them bucketed by
    // `upload_tokens`).
    k.encoder_backward(p.wte.grad(), p.wpe.grad(), a.dres, a.tokens, a.b, a.t, cfg.n_embd)
}

/// The backward through the final layernorm and the blocks, from `dlnf` to the residual
/// stream's gradient in `a.dres` (`backward_from` without the embedding).
fn backward_blocks<K: Backend>(
    k: &mut K,
    cfg: &ModelConfig,
    p: &ParamLayout,
    a: &ActLayout,
    causal: bool,
    dlnf: Tensor,
) -> Result<()> {
    let (b, t, c, nh) = (a.b, a.t, cfg.n_embd, cfg.n_head);
    let (n, hs) = (b * t, cfg.head_size());
    k.zero(a.dres)?;
    let last = a.residual_in(cfg.n_layer);
    k.layernorm_backward(a.dres, p.lnf_w.grad(), p.lnf_b.grad(), dlnf, last, p.lnf_w, a.lnf_mean, a.lnf_rstd, n, c)?;
    for (l, (lp, la)) in p.layers.iter().zip(&a.layers).enumerate().rev() {
        let residual = a.residual_in(l);
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
        if a.recompute.gelu() {
            k.gelu_forward(la.fch_gelu, la.fch)?;
        }
        k.matmul_backward_gelu(
            a.d4c,
            lp.fcproj_w.grad(),
            Some(lp.fcproj_b.grad()),
            a.dres,
            (la.fch_gelu, la.fch),
            lp.fcproj_w,
            n,
            4 * c,
            c,
        )?;
        if a.recompute.layernorm() {
            k.layernorm_forward(la.ln2, la.ln2_mean, la.ln2_rstd, la.residual2, lp.ln2_w, lp.ln2_b, n, c)?;
        }
        k.matmul_backward(a.dbtc, lp.fc_w.grad(), Some(lp.fc_b.grad()), a.d4c, la.ln2, lp.fc_w, n, c, 4 * c)?;
        k.layernorm_backward(
            a.dres,
            lp.ln2_w.grad(),
            lp.ln2_b.grad(),
            a.dbtc,
            la.residual2,
            lp.ln2_w,
            la.ln2_mean,
            la.ln2_rstd,
            n,
            c,
        )?;
        // Attention: residual2 = residual + attproj(attention(qkv(ln1(residual)))).
        k.matmul_backward(
            a.dbtc,
            lp.attproj_w.grad(),
            Some(lp.attproj_b.grad()),
            a.dres,
            la.atty,
            lp.attproj_w,
            n,
            c,
            c,
        )?;
        k.attention_backward(a.dqkv, a.dbtc, la.qkv, la.atty, la.att_lse, b, t, nh, hs, causal)?;
        if a.recompute.layernorm() {
            k.layernorm_forward(la.ln1, la.ln1_mean, la.ln1_rstd, residual, lp.ln1_w, lp.ln1_b, n, c)?;
        }
        k.matmul_backward(a.dbtc, lp.qkv_w.grad(), Some(lp.qkv_b.grad()), a.dqkv, la.ln1, lp.qkv_w, n, c, 3 * c)?;
        k.layernorm_backward(
            a.dres,
            lp.ln1_w.grad(),
            lp.ln1_b.grad(),
            a.dbtc,
            residual,
            lp.ln1_w,
            la.ln1_mean,
            la.ln1_rstd,
            n,
            c,
        )?;
    }
    Ok(())
}
