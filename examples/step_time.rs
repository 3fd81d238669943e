use gptk::backend::AdamWStep;
use gptk::model::config::ModelConfig;
use gptk::model::{Gpt, init_params};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(|s| s.as_str()).unwrap_or("tiny");
    let vocab: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(257);
    let b: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let t: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(256);
    let cfg = ModelConfig::preset(preset, vocab).unwrap();
    let mut m = Gpt::cpu(cfg.clone(), b, t);
    let p = init_params(&cfg, &m.params, 1);
    m.load_params(&p).unwrap();
    let toks: Vec<i32> = (0..b * t).map(|i| (i * 7 % vocab) as i32).collect();
    m.set_batch(&toks, &toks).unwrap();
    for i in 0..4 {
        let t0 = Instant::now();
        m.zero_grads().unwrap();
        let l = m.forward_backward(true, 1.0).unwrap();
        let t1 = t0.elapsed();
        m.adamw(&AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: i + 1,
            grad_scale: 1.0,
            seed: 0,
        })
        .unwrap();
        println!(
            "loss {l:.4} fwdbwd {:?} total {:?} tok/s {:.0}",
            t1,
            t0.elapsed(),
            (b * t) as f64 / t0.elapsed().as_secs_f64()
        );
    }
}
