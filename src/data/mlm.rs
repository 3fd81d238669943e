//! Masked-language-model batches, as BERT makes them.
//!
//! Each position is chosen with probability 15%; a chosen position keeps its original token as
//! the target and its input becomes [MASK] (80%), a uniformly random real token (10%) or stays
//! as it is (10%). Positions not chosen have target −1, which the fused loss ignores, so the loss
//! is the mean over chosen positions only. At least one position is chosen per batch, so the loss
//! is always defined.

use crate::rng::Rng;

/// Share of positions that become prediction targets.
pub const MASK_PROB: f64 = 0.15;
/// Of the chosen positions: share replaced by [MASK], then share replaced by a random token (the
/// rest keep their token).
pub const MASK_TOKEN_SHARE: f64 = 0.8;
pub const RANDOM_TOKEN_SHARE: f64 = 0.1;

/// Turns `inputs` (B·T ids) into an MLM batch in place and writes the matching `targets`.
/// `vocab_size` is V (random replacements are real tokens), `mask_id` the [MASK] token.
/// Returns the number of chosen positions.
pub fn mask_batch(inputs: &mut [i32], targets: &mut [i32], vocab_size: usize, mask_id: u32, rng: &mut Rng) -> usize {
    assert_eq!(inputs.len(), targets.len());
    let mut chosen = 0;
    for (x, y) in inputs.iter_mut().zip(targets.iter_mut()) {
        if rng.uniform() < MASK_PROB {
            *y = *x;
            let r = rng.uniform();
            if r < MASK_TOKEN_SHARE {
                *x = mask_id as i32;
            } else if r < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE {
                *x = rng.below(vocab_size as u64) as i32;
            }
            chosen += 1;
        } else {
            *y = -1;
        }
    }
    if chosen == 0 && !inputs.is_empty() {
        let i = rng.below(inputs.len() as u64) as usize;
        targets[i] = inputs[i];
        inputs[i] = mask_id as i32;
        chosen = 1;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_follow_bert() {
        let n = 200_000;
        let original: Vec<i32> = (0..n).map(|i| (i % 1000) as i32).collect();
        let mut inputs = original.clone();
        let mut targets = vec![0; n];
        let mut rng = Rng::new(3);
        let mask = 1005;
        let chosen = mask_batch(&mut inputs, &mut targets, 1000, mask, &mut rng);
        let frac = chosen as f64 / n as f64;
        assert!((frac - 0.15).abs() < 0.005, "chosen {frac}");
        let (mut masked, mut kept) = (0, 0);
        for i in 0..n {
            if targets[i] < 0 {
                assert_eq!(inputs[i], original[i], "unchosen positions are untouched");
                continue;
            }
            assert_eq!(targets[i], original[i], "targets are the original tokens");
            if inputs[i] == mask as i32 {
                masked += 1;
            } else if inputs[i] == original[i] {
                kept += 1;
            }
            assert!(inputs[i] == mask as i32 || (0..1000).contains(&inputs[i]), "replacements are real tokens");
        }
        let (m, k) = (masked as f64 / chosen as f64, kept as f64 / chosen as f64);
        // kept includes random draws that happened to hit the original (1/1000 of 10%).
        assert!((m - 0.8).abs() < 0.01 && (k - 0.1).abs() < 0.01, "mask {m} kept {k}");
    }

    #[test]
    fn at_least_one_target_and_reproducible() {
        // With 3 positions, (0.85)^3 ≈ 61% of seeds would choose nothing without the guard.
        for seed in 0..200 {
            let (mut a, mut ta) = (vec![7; 3], vec![0; 3]);
            assert!(mask_batch(&mut a, &mut ta, 10, 12, &mut Rng::new(seed)) >= 1);
            assert!(ta.contains(&7));
        }
        let (mut b, mut tb) = (vec![1, 2, 3, 4, 5, 6, 7, 8], vec![0; 8]);
        let (mut c, mut tc) = (b.clone(), vec![0; 8]);
        mask_batch(&mut b, &mut tb, 10, 12, &mut Rng::new(9));
        mask_batch(&mut c, &mut tc, 10, 12, &mut Rng::new(9));
        assert_eq!((b, tb), (c, tc));
    }
}
