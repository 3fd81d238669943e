//! Generation with the key/value cache gives the same next-token logits as a full forward pass.

use gptk::generate::{SampleOpts, generate};
use gptk::model::config::ModelConfig;
use gptk::model::layout::ActLayout;
use gptk::model::{Gpt, init_params, schedule};
use gptk::rng::Rng;

#[test]
fn cached_steps_equal_full_forward_logits() {
    let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 16, n_ctx: 12, vocab_size: 30 };
    let t = 9;
    let mut full = Gpt::cpu(cfg.clone(), 1, t);
    let params = init_params(&cfg, &full.params, 4);
    full.load_params(&params).unwrap();
    let mut rng = Rng::new(9);
    let tokens: Vec<i32> = (0..t).map(|_| rng.below(30) as i32).collect();
    full.set_batch(&tokens, &vec![-1; t]).unwrap();
    schedule::forward(&mut full.backend, &cfg, &full.params, &full.acts, schedule::Attention::Full { causal: true })
        .unwrap();
    let vp = cfg.padded_vocab_size();

    let plan = ActLayout::for_generation(&cfg, 1, cfg.n_ctx);
    let mut cached =
        Gpt::new(cfg.clone(), plan, |p, a| Ok(gptk::backend::cpu::CpuBackend::<f32>::new(p.total, a))).unwrap();
    cached.load_params(&params).unwrap();
    for (pos, &token) in tokens.iter().enumerate().take(t) {
        schedule::logits(&mut full.backend, &cfg, &full.params, &full.acts, pos, 1).unwrap();
        let want = full.backend.get(full.acts.logits.slice(0, vp)).to_vec();
        let got = cached.step(&[token], pos).unwrap();
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "position {pos}: max diff {worst}");
    }
    // The cache holds n_ctx positions; one more is an error, not a panic.
    assert!(cached.step(&[1], cfg.n_ctx).is_err());
}

#[test]
fn generation_is_reproducible_and_stops_at_the_context() {
    let cfg = ModelConfig { n_layer: 1, n_head: 1, n_embd: 8, n_ctx: 6, vocab_size: 10 };
    let plan = ActLayout::for_generation(&cfg, 1, cfg.n_ctx);
    let mut m = Gpt::new(cfg.clone(), plan, |p, a| Ok(gptk::backend::cpu::CpuBackend::<f32>::new(p.total, a))).unwrap();
    let params = init_params(&cfg, &m.params, 1);
    m.load_params(&params).unwrap();
    let opts = SampleOpts { max_new_tokens: 100, temperature: 1.0, top_k: 0, top_p: 1.0, stop_token: None };
    let a = generate(&mut m, &[3, 4], &opts, &mut Rng::new(5), |_| {}).unwrap();
    let b = generate(&mut m, &[3, 4], &opts, &mut Rng::new(5), |_| {}).unwrap();
    assert_eq!(a, b);
    // 2 prompt tokens + 4 new fill the 6 positions; the 5th new token is drawn from the last logits.
    assert_eq!(a.len(), 5);
    assert!(a.iter().all(|&x| x < 10), "only real tokens are sampled");
}
