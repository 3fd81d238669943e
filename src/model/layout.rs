//! Memory plan: every tensor of the model as a named span of one flat arena.
//!
//! A backend owns a few flat buffers ([`Arena`]s) and never allocates inside a step; the schedule
//! speaks of tensors only as [`Tensor`] handles (arena, offset, length) taken from the tables
//! built here. The parameter table is also what checkpoints, the optimizer and the checker read:
//! one AdamW launch covers the whole `Params` arena, with weight decay on `[0, decay_end)` (the
//! 2-D weights are laid out first) and none after (biases and layernorm gains).
//!
//! Internally every weight matrix is stored as `(OC, C)`, out-features first, like PyTorch's
//! `nn.Linear` and llm.c, so that every matmul is `out = inp · Wᵀ`. Hugging Face's GPT-2 uses
//! `Conv1D`, `(C, OC)`; [`ParamSpec::conv1d`] marks the tensors the checkpoint code transposes.

use super::config::ModelConfig;

/// Tensors start at multiples of this many elements, so that 16-byte vector loads stay aligned
/// for any shape (64 elements = 128 bytes of bf16, 256 of f32).
pub const TENSOR_ALIGN: usize = 64;

/// One flat buffer owned by a backend. Element types: `Inputs` is i32; `Stats`, `OptM`, `OptV`
/// are f32 on every backend; the rest are the backend's storage type (f32 on the CPU, bf16 or f32
/// on CUDA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arena {
    /// Model parameters (the [`ParamLayout`]).
    Params,
    /// Parameter gradients, same layout as `Params`; accumulated (`+=`) by the backward.
    Grads,
    /// AdamW first moment, same layout as `Params`.
    OptM,
    /// AdamW second moment, same layout as `Params`.
    OptV,
    /// Forward activations kept for the backward (the [`ActLayout`]).
    Acts,
    /// Activation gradients: the residual-stream gradient and per-layer scratch.
    ActGrads,
    /// f32 per-row statistics: layernorm mean/rstd, attention log-sum-exp, per-token losses.
    Stats,
    /// i32 token ids and targets.
    Inputs,
}

/// A span of one arena: what the schedule hands to a backend op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub arena: Arena,
    pub offset: usize,
    pub len: usize,
}

impl Tensor {
    /// Elements `[start, start + len)` of this tensor.
    pub fn slice(self, start: usize, len: usize) -> Tensor {
        assert!(start + len <= self.len, "slice {start}+{len} of a tensor of {}", self.len);
        Tensor { arena: self.arena, offset: self.offset + start, len }
    }

    /// The same span in another arena with the same layout (`Params` → `Grads`, `OptM`, `OptV`).
    pub fn in_arena(self, arena: Arena) -> Tensor {
        Tensor { arena, ..self }
    }

    /// The gradient of a parameter.
    pub fn grad(self) -> Tensor {
        debug_assert_eq!(self.arena, Arena::Params);
        self.in_arena(Arena::Grads)
    }

    /// One past the last element.
    pub fn end(self) -> usize {
        self.offset + self.len
    }

    /// True when the two spans share an element.
    pub fn overlaps(self, other: Tensor) -> bool {
        self.arena == other.arena && self.offset < other.end() && other.offset < self.end()
    }
}

/// One row of the parameter table.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// Hugging Face GPT-2 name without the `transformer.` prefix, e.g. `h.3.mlp.c_fc.weight`.
    pub name: String,
    /// Shape as stored here (weights `(OC, C)`).
    pub shape: Vec<usize>,
    pub tensor: Tensor,
    /// Weight decay applies (2-D weights).
    pub decay: bool,
    /// Stored transposed in Hugging Face's `Conv1D` layout `(C, OC)`.
    pub conv1d: bool,
}

/// The parameters of one transformer block.
#[derive(Clone, Debug)]
pub struct LayerParams {
    pub ln1_w: Tensor,     // (C)
    pub ln1_b: Tensor,     // (C)
    pub qkv_w: Tensor,     // (3C, C)
    pub qkv_b: Tensor,     // (3C)
    pub attproj_w: Tensor, // (C, C)
    pub attproj_b: Tensor, // (C)
    pub ln2_w: Tensor,     // (C)
    pub ln2_b: Tensor,     // (C)
    pub fc_w: Tensor,      // (4C, C)
    pub fc_b: Tensor,      // (4C)
    pub fcproj_w: Tensor,  // (C, 4C)
    pub fcproj_b: Tensor,  // (C)
}

/// All parameters as one table over one flat buffer.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    /// Elements in the arena, alignment padding included.
    pub total: usize,
    /// Tensors below this offset get weight decay; those above do not.
    pub decay_end: usize,
    pub wte: Tensor, // (Vp, C)
    pub wpe: Tensor, // (maxT, C)
    pub layers: Vec<LayerParams>,
    pub lnf_w: Tensor, // (C)
    pub lnf_b: Tensor, // (C)
    /// Classification head (n_classes, C) and its bias, when fine-tuning for a task.
    pub head: Option<(Tensor, Tensor)>,
}

/// Names of the classification head's tensors (not part of GPT-2; stored beside it).
pub const HEAD_WEIGHT: &str = "gptk.head.weight";
pub const HEAD_BIAS: &str = "gptk.head.bias";

/// Hands out aligned spans of one arena in order.
struct Carver {
    arena: Arena,
    next: usize,
}

impl Carver {
    fn new(arena: Arena) -> Self {
        Carver { arena, next: 0 }
    }
    fn take(&mut self, len: usize) -> Tensor {
        let t = Tensor { arena: self.arena, offset: self.next, len };
        self.next = (self.next + len).div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        t
    }
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::with_head(cfg, 0)
    }

    /// The layout with a linear classification head of `n_classes` outputs (none when 0): its
    /// weight joins the decayed group, its bias the rest.
    pub fn with_head(cfg: &ModelConfig, n_classes: usize) -> Self {
        let (c, l) = (cfg.n_embd, cfg.n_layer);
        let vp = cfg.padded_vocab_size();
        let mut carver = Carver::new(Arena::Params);
        let mut specs = Vec::new();
        let mut add = |carver: &mut Carver, name: String, shape: Vec<usize>, decay: bool, conv1d: bool| {
            let t = carver.take(shape.iter().product());
            specs.push(ParamSpec { name, shape, tensor: t, decay, conv1d });
            t
        };
        // Decayed group first: every 2-D weight (embeddings included, as in nanoGPT).
        let wte = add(&mut carver, "wte.weight".into(), vec![vp, c], true, false);
        let wpe = add(&mut carver, "wpe.weight".into(), vec![cfg.n_ctx, c], true, false);
        let mut mats = Vec::with_capacity(l);
        for i in 0..l {
            let qkv_w = add(&mut carver, format!("h.{i}.attn.c_attn.weight"), vec![3 * c, c], true, true);
            let attproj_w = add(&mut carver, format!("h.{i}.attn.c_proj.weight"), vec![c, c], true, true);
            let fc_w = add(&mut carver, format!("h.{i}.mlp.c_fc.weight"), vec![4 * c, c], true, true);
            let fcproj_w = add(&mut carver, format!("h.{i}.mlp.c_proj.weight"), vec![c, 4 * c], true, true);
            mats.push((qkv_w, attproj_w, fc_w, fcproj_w));
        }
        let head_w = (n_classes > 0).then(|| add(&mut carver, HEAD_WEIGHT.into(), vec![n_classes, c], true, false));
        let decay_end = carver.next;
        let mut layers = Vec::with_capacity(l);
        for (i, (qkv_w, attproj_w, fc_w, fcproj_w)) in mats.into_iter().enumerate() {
            let mut vec1 = |name: &str, n: usize| add(&mut carver, format!("h.{i}.{name}"), vec![n], false, false);
            layers.push(LayerParams {
                ln1_w: vec1("ln_1.weight", c),
                ln1_b: vec1("ln_1.bias", c),
                qkv_w,
                qkv_b: vec1("attn.c_attn.bias", 3 * c),
                attproj_w,
                attproj_b: vec1("attn.c_proj.bias", c),
                ln2_w: vec1("ln_2.weight", c),
                ln2_b: vec1("ln_2.bias", c),
                fc_w,
                fc_b: vec1("mlp.c_fc.bias", 4 * c),
                fcproj_w,
                fcproj_b: vec1("mlp.c_proj.bias", c),
            });
        }
        let lnf_w = add(&mut carver, "ln_f.weight".into(), vec![c], false, false);
        let lnf_b = add(&mut carver, "ln_f.bias".into(), vec![c], false, false);
        let head = head_w.map(|w| (w, add(&mut carver, HEAD_BIAS.into(), vec![n_classes], false, false)));
        ParamLayout { specs, total: carver.next, decay_end, wte, wpe, layers, lnf_w, lnf_b, head }
    }

    /// Elements of the parameter arena when it is split into `world` equal shards, each a
    /// multiple of [`TENSOR_ALIGN`] (data parallelism, ZeRO-1); `total` for a world of one. The
    /// padding past `total` is zero and stays zero.
    pub fn padded_total(&self, world: usize) -> usize {
        self.total.div_ceil(world * TENSOR_ALIGN) * world * TENSOR_ALIGN
    }

    /// Outputs of the classification head (0 without one).
    pub fn n_classes(&self) -> usize {
        self.head.map_or(0, |(_, b)| b.len)
    }

    /// Looks a tensor up by its (unprefixed) Hugging Face name.
    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

/// Activations of one block kept for the backward. Shapes with llm.c's names.
#[derive(Clone, Debug)]
pub struct LayerActs {
    pub ln1: Tensor,       // (B, T, C)
    pub ln1_mean: Tensor,  // (B, T) stats
    pub ln1_rstd: Tensor,  // (B, T) stats
    pub qkv: Tensor,       // (B, T, 3C)
    pub atty: Tensor,      // (B, T, C)
    pub att_lse: Tensor,   // (B, NH, T) stats
    pub attproj: Tensor,   // (B, T, C)
    pub residual2: Tensor, // (B, T, C)
    pub ln2: Tensor,       // (B, T, C)
    pub ln2_mean: Tensor,  // (B, T) stats
    pub ln2_rstd: Tensor,  // (B, T) stats
    pub fch: Tensor,       // (B, T, 4C)
    pub fch_gelu: Tensor,  // (B, T, 4C)
    pub fcproj: Tensor,    // (B, T, C)
    pub residual3: Tensor, // (B, T, C)
}

/// Activations of the classification head.
#[derive(Clone, Copy, Debug)]
pub struct ClassActs {
    pub n_classes: usize,
    pub logits: Tensor,  // (B, T, n_classes); dlogits after the loss
    pub losses: Tensor,  // (B, T) stats
    pub targets: Tensor, // (B, T) inputs
}

/// Activations the forward does not keep per layer but the backward recomputes, trading a little
/// compute for memory (llm.c's levels). A recomputed activation has one buffer shared by every
/// layer: the forward writes it and the next matmul reads it at once; the backward runs the same
/// forward op again on the same saved input just before the matmul backward that reads it. Ops are
/// deterministic, so the recomputed values are bitwise those the forward wrote, and so are the
/// losses and gradients on the CPU; on the GPU too wherever the buffers the level moves keep their
/// 256-byte alignment, which the cuBLASLt algorithm choice depends on (GPT-2 widths at an even
/// B·T do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Recompute {
    /// Level 0: keep every activation.
    #[default]
    Off,
    /// Level 1: recompute the GELU output (B, T, 4C) from the saved pre-activation `fch`.
    Gelu,
    /// Level 2: also recompute both layernorm outputs (B, T, C) from the saved residual stream;
    /// ln1 and ln2 of every layer share one buffer. (The layernorm forward rewrites its mean and
    /// rstd with the same values.)
    GeluLayernorm,
}

impl Recompute {
    /// The number `--recompute` takes: 0, 1 or 2.
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The GELU output is recomputed in the backward.
    pub fn gelu(self) -> bool {
        self >= Recompute::Gelu
    }

    /// The layernorm outputs are recomputed in the backward.
    pub fn layernorm(self) -> bool {
        self >= Recompute::GeluLayernorm
    }
}

impl TryFrom<u8> for Recompute {
    type Error = String;
    fn try_from(level: u8) -> Result<Self, String> {
        match level {
            0 => Ok(Recompute::Off),
            1 => Ok(Recompute::Gelu),
            2 => Ok(Recompute::GeluLayernorm),
            _ => Err(format!("recompute level {level} does not exist (0 keeps every activation, 1 or 2 recompute)")),
        }
    }
}

impl From<Recompute> for u8 {
    fn from(r: Recompute) -> u8 {
        r.level()
    }
}

impl std::str::FromStr for Recompute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let level: u8 = s.trim().parse().map_err(|_| format!("'{s}' is not a recompute level (0, 1 or 2)"))?;
        Recompute::try_from(level)
    }
}

impl std::fmt::Display for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.level())
    }
}

/// The activation plan for a batch of `b` sequences of `t` tokens, sized once.
#[derive(Clone, Debug)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    /// What the backward recomputes; the tensors it names are shared by all layers.
    pub recompute: Recompute,
    /// Rows of logits computed at a time by the classifier; the full (B·T, Vp) logits never exist
    /// unless `chunk == B·T`.
    pub chunk: usize,
    pub tokens: Tensor,  // (B, T) inputs
    pub targets: Tensor, // (B, T) inputs; -1 = ignored
    pub encoded: Tensor, // (B, T, C)
    pub layers: Vec<LayerActs>,
    pub lnf: Tensor,      // (B, T, C)
    pub lnf_mean: Tensor, // (B, T) stats
    pub lnf_rstd: Tensor, // (B, T) stats
    pub logits: Tensor,   // (chunk, Vp); holds dlogits after the fused loss
    pub losses: Tensor,   // (B, T) stats: per-token loss, 0 where ignored
    /// Gradient of the residual stream (B, T, C), accumulated layer by layer.
    pub dres: Tensor,
    /// Scratch (B, T, C): dlnf, then per layer dln2 / datty / dln1 in turn.
    pub dbtc: Tensor,
    /// Scratch (B, T, 3C): dqkv.
    pub dqkv: Tensor,
    /// Scratch (B, T, 4C): d fch_gelu, turned into d fch in place.
    pub d4c: Tensor,
    /// Classification only: head logits (B, T, n_classes), per-row losses (B, T) stats, and the
    /// class targets (B, T) inputs, −1 except at each sequence's extract position.
    pub cls: Option<ClassActs>,
    /// Generation only: per layer, the key/value cache (B, Tmax, 2C) laid out [k | v].
    pub kv_cache: Vec<Tensor>,
    /// Generation only: positions the cache holds (Tmax).
    pub kv_len: usize,
    /// Elements of each arena.
    pub acts_total: usize,
    pub act_grads_total: usize,
    pub stats_total: usize,
    pub inputs_total: usize,
}

/// Default bound on the logits chunk: rows × Vp stays under this many elements.
pub const LOGITS_CHUNK_ELEMS: usize = 1 << 25;

impl ActLayout {
    /// Plans activations for (b, t). `chunk` bounds the logits rows held at once; `None` picks
    /// the largest multiple of 64 rows under [`LOGITS_CHUNK_ELEMS`] (or all B·T rows).
    pub fn new(cfg: &ModelConfig, b: usize, t: usize, chunk: Option<usize>) -> Self {
        Self::plan(cfg, b, t, chunk, 0, 0, Recompute::Off)
    }

    /// Plans activations for (b, t) like [`ActLayout::new`], keeping only what `recompute` leaves.
    pub fn with_recompute(cfg: &ModelConfig, b: usize, t: usize, chunk: Option<usize>, recompute: Recompute) -> Self {
        Self::plan(cfg, b, t, chunk, 0, 0, recompute)
    }

    /// Plans a batch for fine-tuning with a classification head of `n_classes` outputs.
    pub fn for_classification(cfg: &ModelConfig, b: usize, t: usize, n_classes: usize, recompute: Recompute) -> Self {
        Self::plan(cfg, b, t, None, 0, n_classes, recompute)
    }

    /// Plans one-token steps for `b` sequences with a key/value cache of `t_max` positions per
    /// layer: what generation with a KV cache runs on.
    pub fn for_generation(cfg: &ModelConfig, b: usize, t_max: usize) -> Self {
        Self::plan(cfg, b, 1, Some(b), t_max, 0, Recompute::Off)
    }

    fn plan(
        cfg: &ModelConfig,
        b: usize,
        t: usize,
        chunk: Option<usize>,
        kv_len: usize,
        n_classes: usize,
        recompute: Recompute,
    ) -> Self {
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let vp = cfg.padded_vocab_size();
        let bt = b * t;
        let chunk = chunk
            .unwrap_or_else(|| {
                let rows = LOGITS_CHUNK_ELEMS / vp;
                if rows >= bt { bt } else { (rows / 64 * 64).max(64) }
            })
            .clamp(1, bt.max(1));
        let mut acts = Carver::new(Arena::Acts);
        let mut stats = Carver::new(Arena::Stats);
        let mut inputs = Carver::new(Arena::Inputs);
        let mut grads = Carver::new(Arena::ActGrads);
        let tokens = inputs.take(bt);
        let targets = inputs.take(bt);
        let encoded = acts.take(bt * c);
        // One buffer for all layers where the backward recomputes (ln1 and ln2 share theirs).
        let shared_gelu = recompute.gelu().then(|| acts.take(bt * 4 * c));
        let shared_ln = recompute.layernorm().then(|| acts.take(bt * c));
        let layers = (0..cfg.n_layer)
            .map(|_| LayerActs {
                ln1: shared_ln.unwrap_or_else(|| acts.take(bt * c)),
                ln1_mean: stats.take(bt),
                ln1_rstd: stats.take(bt),
                qkv: acts.take(bt * 3 * c),
                atty: acts.take(bt * c),
                att_lse: stats.take(b * nh * t),
                attproj: acts.take(bt * c),
                residual2: acts.take(bt * c),
                ln2: shared_ln.unwrap_or_else(|| acts.take(bt * c)),
                ln2_mean: stats.take(bt),
                ln2_rstd: stats.take(bt),
                fch: acts.take(bt * 4 * c),
                fch_gelu: shared_gelu.unwrap_or_else(|| acts.take(bt * 4 * c)),
                fcproj: acts.take(bt * c),
                residual3: acts.take(bt * c),
            })
            .collect();
        let lnf = acts.take(bt * c);
        let lnf_mean = stats.take(bt);
        let lnf_rstd = stats.take(bt);
        let logits = acts.take(chunk * vp);
        let losses = stats.take(bt);
        let cls = (n_classes > 0).then(|| ClassActs {
            n_classes,
            logits: acts.take(bt * n_classes),
            losses: stats.take(bt),
            targets: inputs.take(bt),
        });
        let kv_cache = (0..if kv_len > 0 { cfg.n_layer } else { 0 }).map(|_| acts.take(b * kv_len * 2 * c)).collect();
        let dres = grads.take(bt * c);
        let dbtc = grads.take(bt * c);
        let dqkv = grads.take(bt * 3 * c);
        let d4c = grads.take(bt * 4 * c);
        ActLayout {
            b,
            t,
            recompute,
            chunk,
            tokens,
            targets,
            encoded,
            layers,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            losses,
            dres,
            dbtc,
            dqkv,
            d4c,
            cls,
            kv_cache,
            kv_len,
            acts_total: acts.next,
            act_grads_total: grads.next,
            stats_total: stats.next,
            inputs_total: inputs.next,
        }
    }

    /// The residual stream entering block `l`.
    pub fn residual_in(&self, l: usize) -> Tensor {
        if l == 0 { self.encoded } else { self.layers[l - 1].residual3 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_disjoint_aligned_and_decay_first() {
        let cfg = ModelConfig { n_layer: 3, n_head: 3, n_embd: 30, n_ctx: 17, vocab_size: 101 };
        let p = ParamLayout::new(&cfg);
        for (i, a) in p.specs.iter().enumerate() {
            assert_eq!(a.tensor.offset % TENSOR_ALIGN, 0);
            assert_eq!(a.tensor.len, a.shape.iter().product::<usize>());
            assert_eq!(a.decay, a.shape.len() == 2, "{}", a.name);
            assert_eq!(a.decay, a.tensor.end() <= p.decay_end, "{}", a.name);
            for b in &p.specs[i + 1..] {
                assert!(!a.tensor.overlaps(b.tensor), "{} overlaps {}", a.name, b.name);
            }
        }
        assert!(p.total >= p.specs.iter().map(|s| s.tensor.len).sum::<usize>());
        assert_eq!(p.specs.len(), 2 + 12 * 3 + 2);
    }

    #[test]
    fn real_parameter_count_matches_config() {
        let cfg = ModelConfig::preset("tiny", 257).unwrap();
        let p = ParamLayout::new(&cfg);
        let vp = cfg.padded_vocab_size();
        let counted: usize = p.specs.iter().map(|s| s.tensor.len).sum();
        // The table holds all Vp rows; the config counts the real and special ones.
        let real_rows = cfg.vocab_size + super::super::config::NUM_SPECIAL_TOKENS;
        assert_eq!(counted - (vp - real_rows) * cfg.n_embd, cfg.num_parameters());
    }

    #[test]
    fn activations_are_disjoint_per_arena() {
        let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 8, n_ctx: 8, vocab_size: 50 };
        for recompute in [Recompute::Off, Recompute::Gelu, Recompute::GeluLayernorm] {
            let a = ActLayout::with_recompute(&cfg, 3, 5, Some(4), recompute);
            let mut all = vec![a.tokens, a.targets, a.encoded, a.lnf, a.lnf_mean, a.lnf_rstd, a.logits, a.losses];
            all.extend([a.dres, a.dbtc, a.dqkv, a.d4c]);
            // A recomputed activation is one tensor shared by every layer (ln1 and ln2 alike).
            let mut shared = Vec::new();
            let mut keep = |t: Tensor, is_shared: bool| {
                if !is_shared {
                    all.push(t)
                } else if !shared.contains(&t) {
                    shared.push(t)
                }
            };
            for l in &a.layers {
                keep(l.ln1, recompute.layernorm());
                keep(l.ln2, recompute.layernorm());
                keep(l.fch_gelu, recompute.gelu());
                for t in [
                    l.ln1_mean,
                    l.ln1_rstd,
                    l.qkv,
                    l.atty,
                    l.att_lse,
                    l.attproj,
                    l.residual2,
                    l.ln2_mean,
                    l.ln2_rstd,
                    l.fch,
                    l.fcproj,
                    l.residual3,
                ] {
                    keep(t, false);
                }
            }
            assert_eq!(shared.len(), recompute.level() as usize);
            all.extend(shared);
            for (i, x) in all.iter().enumerate() {
                for y in &all[i + 1..] {
                    assert!(!x.overlaps(*y), "{x:?} overlaps {y:?} at recompute {recompute}");
                }
            }
            assert_eq!(a.logits.len, 4 * cfg.padded_vocab_size());
        }
    }

    #[test]
    fn recompute_levels_read_and_print_as_numbers() {
        for level in 0..=2u8 {
            let r: Recompute = level.to_string().parse().unwrap();
            assert_eq!((r.level(), r.to_string()), (level, level.to_string()));
            assert_eq!(Recompute::try_from(level), Ok(r));
        }
        assert!("3".parse::<Recompute>().unwrap_err().contains("recompute level 3 does not exist"));
        assert!("two".parse::<Recompute>().unwrap_err().contains("'two'"));
        assert!(Recompute::Gelu.gelu() && !Recompute::Gelu.layernorm() && !Recompute::Off.gelu());
    }
}
