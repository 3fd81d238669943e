//! Text generation with a key/value cache: each new token costs one token's forward pass.
//!
//! The prompt is fed one position at a time through the same cached path (so prefill needs no
//! second code path); every step returns the next-token logits, of which only the first V (real
//! tokens) are ever sampled, so special tokens are never produced.

use crate::backend::Backend;
use crate::model::{Gpt, ModelError};
use crate::rng::Rng;

/// How the next token is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOpts {
    pub max_new_tokens: usize,
    /// Logits are divided by this; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Stop when this token is produced (usually end-of-text).
    pub stop_token: Option<u32>,
}

/// Draws one token id from `logits` (the first V entries) under `opts`.
pub fn pick(logits: &[f32], opts: &SampleOpts, rng: &mut Rng) -> u32 {
    assert!(!logits.is_empty());
    if opts.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    // Most likely first; ties by id so the draw is reproducible.
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    if opts.top_k > 0 {
        order.truncate(opts.top_k);
    }
    let max = logits[order[0] as usize] as f64;
    let t = opts.temperature as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i as usize] as f64 - max) / t).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if opts.top_p < 1.0 {
        let mut cum = 0.0;
        let keep = probs
            .iter()
            .position(|&p| {
                cum += p;
                cum >= opts.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.uniform() * total;
    for (&id, &p) in order.iter().zip(&probs) {
        if u < p {
            return id;
        }
        u -= p;
    }
    *order.last().expect("at least one candidate")
}

/// Continues `prompt` (at least one token) on a model planned with
/// `ActLayout::for_generation(cfg, 1, n_ctx)`. Calls `on_token` for each new token; stops at
/// `max_new_tokens`, at the stop token, or when the context is full. Returns the new tokens.
pub fn generate<K: Backend>(
    model: &mut Gpt<K>,
    prompt: &[u32],
    opts: &SampleOpts,
    rng: &mut Rng,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, ModelError> {
    assert!(!prompt.is_empty(), "generation needs at least one prompt token");
    let v = model.cfg.vocab_size;
    let limit = model.acts.kv_len;
    let mut out = Vec::new();
    let mut logits = Vec::new();
    for (pos, &tok) in prompt.iter().enumerate().take(limit) {
        logits = model.step(&[tok as i32], pos)?;
    }
    let mut pos = prompt.len().min(limit);
    while out.len() < opts.max_new_tokens {
        let next = pick(&logits[..v], opts, rng);
        if Some(next) == opts.stop_token {
            break;
        }
        out.push(next);
        on_token(next);
        if pos >= limit {
            break;
        }
        logits = model.step(&[next as i32], pos)?;
        pos += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f32, top_k: usize, top_p: f32) -> SampleOpts {
        SampleOpts { max_new_tokens: 1, temperature, top_k, top_p, stop_token: None }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut rng = Rng::new(0);
        assert_eq!(pick(&[0.1, 3.0, -1.0, 2.9], &opts(0.0, 0, 1.0), &mut rng), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [2.0, 1.0, 0.5, 3.0, -1.0];
        let mut rng = Rng::new(1);
        for _ in 0..500 {
            let k2 = pick(&logits, &opts(1.0, 2, 1.0), &mut rng);
            assert!(k2 == 3 || k2 == 0, "top-k 2 drew {k2}");
            // p(3) ≈ 0.61 on its own: top-p 0.5 keeps only token 3.
            assert_eq!(pick(&logits, &opts(1.0, 0, 0.5), &mut rng), 3);
        }
    }

    #[test]
    fn draws_follow_the_softmax_and_repeat_with_the_seed() {
        let logits = [0.0f32, (2.0f32).ln(), (5.0f32).ln()]; // probabilities 1/8, 2/8, 5/8
        let mut rng = Rng::new(2);
        let mut counts = [0usize; 3];
        let draws: Vec<u32> = (0..16000).map(|_| pick(&logits, &opts(1.0, 0, 1.0), &mut rng)).collect();
        for &d in &draws {
            counts[d as usize] += 1;
        }
        for (c, expect) in counts.iter().zip([2000.0, 4000.0, 10000.0]) {
            assert!((*c as f64 - expect).abs() < 0.05 * expect, "{counts:?}");
        }
        let mut again = Rng::new(2);
        let replay: Vec<u32> = (0..16000).map(|_| pick(&logits, &opts(1.0, 0, 1.0), &mut again)).collect();
        assert_eq!(draws, replay);
    }
}
