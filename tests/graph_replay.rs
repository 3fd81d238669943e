//! The part of a training step the CUDA backend records as a graph (`gptk train --cuda-graphs`)
//! must be replayable: the same ops on the same tensors with the same arguments whatever the
//! batch, and no host read or wait among them. This checks it without a GPU, with a backend that
//! records the CPU ops the way stream capture records kernels: while recording, an op is written
//! to a tape instead of running, a host read or wait is an error, and a replay runs the tape
//! again. Training through it must give the CPU's bits exactly, a new batch every step.

use gptk::backend::cpu::CpuBackend;
use gptk::backend::{AdamWStep, Backend, BackendError, Precision, Replay, Result, StepOutcome};
use gptk::model::config::ModelConfig;
use gptk::model::layout::{ActLayout, Arena, Recompute, Tensor};
use gptk::model::{Gpt, init_params};
use gptk::rng::Rng;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

type Op = Box<dyn Fn(&mut CpuBackend<f32>) -> Result<()>>;

/// The CPU backend behind a recorder with the CUDA backend's replay protocol: a key is run as
/// usual the first time, recorded the second, replayed after that.
struct Recorder {
    inner: CpuBackend<f32>,
    seen: HashSet<u64>,
    tapes: HashMap<u64, Vec<Op>>,
    recording: Option<(u64, Vec<Op>)>,
    replays: usize,
    /// The token tensor whose ids came through `upload_tokens` and were not written since: the
    /// only one whose embedding backward the CUDA backend can run without the host.
    prepared: Option<Tensor>,
}

impl Recorder {
    fn new(inner: CpuBackend<f32>) -> Self {
        Recorder { inner, seen: HashSet::new(), tapes: HashMap::new(), recording: None, replays: 0, prepared: None }
    }

    /// Runs `op`, or writes it to the tape while recording.
    fn op(&mut self, op: impl Fn(&mut CpuBackend<f32>) -> Result<()> + 'static) -> Result<()> {
        match &mut self.recording {
            Some((_, tape)) => {
                tape.push(Box::new(op));
                Ok(())
            }
            None => op(&mut self.inner),
        }
    }

    /// An error while recording: what stream capture refuses (a copy to or from the host, a wait).
    fn host(&self, what: &str) -> Result<()> {
        match self.recording {
            Some(_) => Err(BackendError::Device(format!("{what} while recording"))),
            None => Ok(()),
        }
    }
}

impl Backend for Recorder {
    fn describe(&self) -> String {
        format!("{} (recording)", self.inner.describe())
    }
    fn precision(&self) -> Precision {
        self.inner.precision()
    }
    fn zero(&mut self, t: Tensor) -> Result<()> {
        self.prepared = self.prepared.filter(|p| !p.overlaps(t));
        self.op(move |k| k.zero(t))
    }
    fn upload(&mut self, t: Tensor, data: &[f32]) -> Result<()> {
        self.host("an upload")?;
        self.inner.upload(t, data)
    }
    fn upload_ints(&mut self, t: Tensor, data: &[i32]) -> Result<()> {
        self.host("an upload")?;
        self.prepared = self.prepared.filter(|p| !p.overlaps(t));
        self.inner.upload_ints(t, data)
    }
    fn upload_tokens(&mut self, t: Tensor, data: &[i32]) -> Result<()> {
        self.upload_ints(t, data)?;
        self.prepared = Some(t);
        Ok(())
    }
    fn download(&mut self, t: Tensor) -> Result<Vec<f32>> {
        self.host("a download")?;
        self.inner.download(t)
    }
    fn synchronize(&mut self) -> Result<()> {
        self.host("a wait")
    }
    fn encoder_forward(
        &mut self,
        out: Tensor,
        tokens: Tensor,
        wte: Tensor,
        wpe: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        self.op(move |k| k.encoder_forward(out, tokens, wte, wpe, b, t, c))
    }
    fn encoder_backward(
        &mut self,
        dwte: Tensor,
        dwpe: Tensor,
        dout: Tensor,
        tokens: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        // The CUDA backend reads the ids bucketed when `upload_tokens` uploaded them; other ids it
        // buckets on the host, which a recording cannot do.
        if self.prepared != Some(tokens) {
            self.host("the embedding's backward of ids not uploaded by upload_tokens")?;
        }
        self.op(move |k| k.encoder_backward(dwte, dwpe, dout, tokens, b, t, c))
    }
    fn layernorm_forward(
        &mut self,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.op(move |k| k.layernorm_forward(out, mean, rstd, inp, w, bias, n, c))
    }
    fn residual_layernorm_forward(
        &mut self,
        res: Tensor,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        xy: (Tensor, Tensor),
        w: Tensor,
        bias: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.op(move |k| k.residual_layernorm_forward(res, out, mean, rstd, xy, w, bias, n, c))
    }
    fn layernorm_backward(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        db: Tensor,
        dout: Tensor,
        inp: Tensor,
        w: Tensor,
        mean: Tensor,
        rstd: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.op(move |k| k.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, n, c))
    }
    fn matmul_forward(
        &mut self,
        out: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.op(move |k| k.matmul_forward(out, inp, w, bias, n, c, oc))
    }
    fn matmul_backward(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        inp: Tensor,
        w: Tensor,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.op(move |k| k.matmul_backward(dinp, dw, dbias, dout, inp, w, n, c, oc))
    }
    fn matmul_gelu_forward(
        &mut self,
        pre: Tensor,
        out: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.op(move |k| k.matmul_gelu_forward(pre, out, inp, w, bias, n, c, oc))
    }
    fn matmul_backward_gelu(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        inp_pre: (Tensor, Tensor),
        w: Tensor,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.op(move |k| k.matmul_backward_gelu(dinp, dw, dbias, dout, inp_pre, w, n, c, oc))
    }
    fn attention_forward(
        &mut self,
        out: Tensor,
        lse: Tensor,
        qkv: Tensor,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        causal: bool,
    ) -> Result<()> {
        self.op(move |k| k.attention_forward(out, lse, qkv, b, t, nh, hs, causal))
    }
    fn attention_backward(
        &mut self,
        dqkv: Tensor,
        dout: Tensor,
        qkv: Tensor,
        out: Tensor,
        lse: Tensor,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        causal: bool,
    ) -> Result<()> {
        self.op(move |k| k.attention_backward(dqkv, dout, qkv, out, lse, b, t, nh, hs, causal))
    }
    fn attention_cached(
        &mut self,
        out: Tensor,
        qkv: Tensor,
        kv: Tensor,
        b: usize,
        t_max: usize,
        pos: usize,
        nh: usize,
        hs: usize,
    ) -> Result<()> {
        self.op(move |k| k.attention_cached(out, qkv, kv, b, t_max, pos, nh, hs))
    }
    fn gelu_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()> {
        self.op(move |k| k.gelu_forward(out, inp))
    }
    fn gelu_backward(&mut self, d: Tensor, inp: Tensor) -> Result<()> {
        self.op(move |k| k.gelu_backward(d, inp))
    }
    fn residual_forward(&mut self, out: Tensor, a: Tensor, b: Tensor) -> Result<()> {
        self.op(move |k| k.residual_forward(out, a, b))
    }
    fn cross_entropy(
        &mut self,
        losses: Tensor,
        logits: Tensor,
        targets: Tensor,
        n: usize,
        v: usize,
        vp: usize,
        dloss: Option<f32>,
    ) -> Result<()> {
        self.op(move |k| k.cross_entropy(losses, logits, targets, n, v, vp, dloss))
    }
    fn grad_norm_squared(&mut self, range: Range<usize>) -> Result<f64> {
        self.host("reading the gradient norm")?;
        self.inner.grad_norm_squared(range)
    }
    fn adamw(&mut self, step: &AdamWStep, decay_end: usize, range: Range<usize>) -> Result<()> {
        // Its learning rate, step and clipping scale are arguments from the host each step.
        self.host("AdamW")?;
        self.inner.adamw(step, decay_end, range)
    }
    fn set_step(&mut self, step: &AdamWStep, clip: f32) -> Result<()> {
        self.host("a copy of the step's values")?;
        self.inner.set_step(step, clip)
    }
    fn optimizer_step(&mut self, losses: Tensor, count: usize, decay_end: usize, range: Range<usize>) -> Result<()> {
        // Reads the step's values where set_step left them, when it runs (as a replay does).
        self.op(move |k| k.optimizer_step(losses, count, decay_end, range.clone()))
    }
    fn step_outcome(&mut self) -> Result<StepOutcome> {
        self.host("reading the step's outcome")?;
        self.inner.step_outcome()
    }
    fn replay(&mut self, key: u64) -> Result<Replay> {
        assert!(self.recording.is_none(), "replay while recording");
        if let Some(tape) = self.tapes.get(&key) {
            for op in tape {
                op(&mut self.inner)?;
            }
            self.replays += 1;
            return Ok(Replay::Replayed);
        }
        if !self.seen.insert(key) {
            self.recording = Some((key, Vec::new()));
            return Ok(Replay::Recording);
        }
        Ok(Replay::Run)
    }
    fn end_recording(&mut self, ok: bool) -> Result<()> {
        let (key, tape) = self.recording.take().expect("end_recording after Recording");
        if ok {
            for op in &tape {
                op(&mut self.inner)?;
            }
            self.tapes.insert(key, tape);
        }
        Ok(())
    }
}

/// How `train_by` takes a step.
#[derive(Clone, Copy)]
enum Step {
    /// The trainer's ops one by one: zero the gradients, `forward_backward` with this loss
    /// weight, the gradient norm, AdamW clipped at 1.
    Ops(f32),
    /// One `Gpt::train_step`, clipping at 1 (loss weight 1).
    Whole,
}

/// Losses and final parameters of `steps` AdamW steps on `batches` distinct batches taken in
/// turn, with `targets_of` making batch i's targets from its tokens and i; and the model.
fn train<K: Backend>(
    model: Gpt<K>,
    steps: u64,
    batches: usize,
    targets_of: impl Fn(&[i32], usize) -> Vec<i32>,
) -> (Vec<f32>, Vec<f32>, Gpt<K>) {
    train_by(model, steps, batches, targets_of, Step::Ops(0.5))
}

/// `train`, each step taken as `how` says.
fn train_by<K: Backend>(
    mut model: Gpt<K>,
    steps: u64,
    batches: usize,
    targets_of: impl Fn(&[i32], usize) -> Vec<i32>,
    how: Step,
) -> (Vec<f32>, Vec<f32>, Gpt<K>) {
    let (b, t, v) = (model.acts.b, model.acts.t, model.cfg.vocab_size);
    let host = init_params(&model.cfg, &model.params, 3);
    model.load_params(&host).unwrap();
    let mut rng = Rng::new(11);
    let data: Vec<(Vec<i32>, Vec<i32>)> = (0..batches)
        .map(|i| {
            let tokens: Vec<i32> = (0..b * t).map(|_| rng.below(v as u64) as i32).collect();
            let targets = targets_of(&tokens, i);
            (tokens, targets)
        })
        .collect();
    let mut losses = Vec::new();
    for step in 1..=steps {
        let (tokens, targets) = &data[(step as usize - 1) % batches];
        model.set_batch(tokens, targets).unwrap();
        let adamw = |grad_scale| AdamWStep {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step,
            grad_scale,
            seed: step,
        };
        match how {
            Step::Ops(weight) => {
                model.zero_grads().unwrap();
                losses.push(model.forward_backward(true, weight).unwrap());
                let norm = model.grad_norm().unwrap();
                model.adamw(&adamw(if norm > 1.0 { 1.0 / norm } else { 1.0 })).unwrap();
            }
            Step::Whole => {
                let s = model.train_step(true, &adamw(1.0), 1.0).unwrap();
                assert!(s.applied, "step {step}: {s:?}");
                losses.push(s.loss);
            }
        }
    }
    let all = Tensor { arena: Arena::Params, offset: 0, len: model.params.total };
    let params = model.backend.download(all).unwrap();
    (losses, params, model)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn config() -> ModelConfig {
    ModelConfig { n_layer: 2, n_head: 2, n_embd: 32, n_ctx: 16, vocab_size: 64 }
}

fn models() -> (Gpt<CpuBackend<f32>>, Gpt<Recorder>) {
    models_recomputing(Recompute::Off)
}

/// The plain CPU model, and the same behind the recorder, on a plan that recomputes at `level`.
fn models_recomputing(level: Recompute) -> (Gpt<CpuBackend<f32>>, Gpt<Recorder>) {
    let cfg = config();
    let (b, t) = (2, 16);
    let acts = ActLayout::with_recompute(&cfg, b, t, None, level);
    let plain = Gpt::new(cfg.clone(), acts.clone(), |p, a| Ok(CpuBackend::<f32>::new(p.total, a))).unwrap();
    let recorded = Gpt::new(cfg, acts, |p, a| Ok(Recorder::new(CpuBackend::<f32>::new(p.total, a)))).unwrap();
    (plain, recorded)
}

#[test]
fn a_replayed_step_gives_the_bits_of_the_ops_run_one_by_one() {
    // Next-token targets: every position counts, so the loss scale, and the key, never change.
    let next = |tokens: &[i32], _| tokens[1..].iter().copied().chain([0]).collect::<Vec<_>>();
    let (plain, recorded) = models();
    let (losses, params, _) = train(plain, 8, 3, next);
    let (losses_rec, params_rec, model) = train(recorded, 8, 3, next);
    // Run at step 1, recorded (and run) at step 2, replayed at the six after.
    assert_eq!(model.backend.replays, 6);
    assert_eq!(bits(&losses_rec), bits(&losses), "losses differ");
    assert!(bits(&params_rec) == bits(&params), "parameters differ");
    assert!(losses[7] < losses[0], "the model did not learn: {losses:?}");
}

#[test]
fn plans_that_recompute_activations_replay_too() {
    let next = |tokens: &[i32], _| tokens[1..].iter().copied().chain([0]).collect::<Vec<_>>();
    for level in [Recompute::Gelu, Recompute::GeluLayernorm] {
        let (plain, recorded) = models_recomputing(level);
        let (losses, params, _) = train(plain, 5, 2, next);
        let (losses_rec, params_rec, model) = train(recorded, 5, 2, next);
        assert_eq!(model.backend.replays, 3, "recompute {level}");
        assert_eq!(bits(&losses_rec), bits(&losses), "recompute {level}: losses differ");
        assert!(bits(&params_rec) == bits(&params), "recompute {level}: parameters differ");
    }
}

#[test]
fn a_loss_scale_that_changes_with_the_batch_is_never_replayed() {
    // Masked-LM-like targets: 8, 12 and 16 positions count in the three batches.
    let masked = |tokens: &[i32], i: usize| {
        tokens.iter().enumerate().map(|(p, &x)| if p < 8 + 4 * i { x } else { -1 }).collect::<Vec<_>>()
    };
    let (plain, recorded) = models();
    let (losses, params, _) = train(plain, 6, 3, masked);
    let (losses_rec, params_rec, model) = train(recorded, 6, 3, masked);
    // Three batches with three loss scales, in turn: each key is run at its first step and
    // recorded at its second (steps 4–6), never replayed.
    assert_eq!((model.backend.replays, model.backend.tapes.len()), (0, 3));
    assert_eq!(bits(&losses_rec), bits(&losses));
    assert!(bits(&params_rec) == bits(&params));
}

#[test]
fn the_embedding_backward_records_only_over_ids_uploaded_by_upload_tokens() {
    // What keeps the whole forward and backward recordable: the batch's ids come through
    // `upload_tokens` (`Gpt::set_batch`), which prepares what the embedding's backward reads.
    // Ids uploaded otherwise would have to be read on the host while recording: refused.
    let (_, mut model) = models();
    let (b, t, c) = (model.acts.b, model.acts.t, model.cfg.n_embd);
    let (p, a) = (model.params.clone(), model.acts.clone());
    let ids = vec![1; b * t];
    let k = &mut model.backend;
    for tokens_by_upload_tokens in [true, false] {
        if tokens_by_upload_tokens {
            k.upload_tokens(a.tokens, &ids).unwrap();
        } else {
            k.upload_ints(a.tokens, &ids).unwrap();
        }
        let key = u64::from(tokens_by_upload_tokens);
        assert_eq!(k.replay(key).unwrap(), Replay::Run);
        assert_eq!(k.replay(key).unwrap(), Replay::Recording);
        let ran = k.encoder_backward(p.wte.grad(), p.wpe.grad(), a.dres, a.tokens, b, t, c);
        assert_eq!(ran.is_ok(), tokens_by_upload_tokens, "{ran:?}");
        k.end_recording(ran.is_ok()).unwrap();
    }
}

#[test]
fn a_whole_step_replays_optimizer_included_with_the_bits_of_the_ops_run_one_by_one() {
    // The zeroing, the forward and backward and the optimizer (norm, clipping, AdamW) of
    // `Gpt::train_step` recorded and replayed, each step's learning rate, step count and seed
    // reaching the replay through `set_step`: the bits of the trainer's ops run one by one.
    let next = |tokens: &[i32], _| tokens[1..].iter().copied().chain([0]).collect::<Vec<_>>();
    let (plain, recorded) = models();
    let (losses, params, _) = train_by(plain, 8, 3, next, Step::Ops(1.0));
    let (losses_rec, params_rec, model) = train_by(recorded, 8, 3, next, Step::Whole);
    assert_eq!(model.backend.replays, 6);
    assert_eq!(bits(&losses_rec), bits(&losses), "losses differ");
    assert!(bits(&params_rec) == bits(&params), "parameters differ");
    assert!(losses[7] < losses[0], "the model did not learn: {losses:?}");
}
