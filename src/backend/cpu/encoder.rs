//! Token + position embedding, forward and backward.

use super::Float;
use rayon::prelude::*;

/// out (B,T,C) = wte[tokens[b,t]] + wpe[t]. Overwrites `out`.
pub fn encoder_forward<F: Float>(out: &mut [F], tokens: &[i32], wte: &[F], wpe: &[F], b: usize, t: usize, c: usize) {
    out[..b * t * c].par_chunks_mut(c).enumerate().for_each(|(i, row)| {
        let tok = tokens[i] as usize;
        let (e, p) = (&wte[tok * c..][..c], &wpe[(i % t) * c..][..c]);
        for ((o, &x), &y) in row.iter_mut().zip(e).zip(p) {
            *o = x + y;
        }
    });
}

/// dwte (Vp,C) += dout rows scattered by token; dwpe (T,C) += dout summed over B.
///
/// Deterministic: each embedding row sums its positions in ascending order, whatever the thread
/// count (positions are bucketed by token first, a counting sort).
pub fn encoder_backward<F: Float>(
    dwte: &mut [F],
    dwpe: &mut [F],
    dout: &[F],
    tokens: &[i32],
    b: usize,
    t: usize,
    c: usize,
) {
    dwpe[..t * c].par_chunks_mut(c).enumerate().for_each(|(pos, row)| {
        for bi in 0..b {
            for (g, &d) in row.iter_mut().zip(&dout[(bi * t + pos) * c..][..c]) {
                *g += d;
            }
        }
    });
    // Bucket positions by token (CSR), then each row of dwte gathers its own positions.
    let vp = dwte.len() / c;
    let mut start = vec![0usize; vp + 1];
    for &tok in &tokens[..b * t] {
        start[tok as usize + 1] += 1;
    }
    for i in 0..vp {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut positions = vec![0usize; b * t];
    for (i, &tok) in tokens[..b * t].iter().enumerate() {
        positions[fill[tok as usize]] = i;
        fill[tok as usize] += 1;
    }
    dwte.par_chunks_mut(c).enumerate().for_each(|(tok, row)| {
        for &i in &positions[start[tok]..start[tok + 1]] {
            for (g, &d) in row.iter_mut().zip(&dout[i * c..][..c]) {
                *g += d;
            }
        }
    });
}
