//! The memory plan of a model at a batch shape: bytes per arena on each kind of backend, and the
//! parameter count by group. What `gptk info` prints and what the CUDA backend checks against
//! free device memory before it allocates.

use super::config::ModelConfig;
use super::layout::{ActLayout, ParamLayout};
use crate::backend::Precision;

/// One arena of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRow {
    pub name: &'static str,
    pub elements: usize,
    pub bytes: usize,
}

/// Bytes each arena takes for `cfg` at batch (b, t) when parameters and activations are stored
/// in `precision`; master weights (only when storage is not f32), optimizer moments, statistics
/// and token ids are f32/i32 in every case.
pub fn memory_plan(cfg: &ModelConfig, b: usize, t: usize, precision: Precision) -> Vec<PlanRow> {
    let p = ParamLayout::new(cfg);
    let a = ActLayout::new(cfg, b, t, None);
    let storage = match precision {
        Precision::F32 => 4,
        Precision::Bf16 => 2,
    };
    let mut rows = vec![
        PlanRow { name: "parameters", elements: p.total, bytes: p.total * storage },
        PlanRow { name: "gradients", elements: p.total, bytes: p.total * storage },
    ];
    if precision != Precision::F32 {
        rows.push(PlanRow { name: "master weights (f32)", elements: p.total, bytes: p.total * 4 });
    }
    rows.extend([
        PlanRow { name: "AdamW m (f32)", elements: p.total, bytes: p.total * 4 },
        PlanRow { name: "AdamW v (f32)", elements: p.total, bytes: p.total * 4 },
        PlanRow { name: "activations", elements: a.acts_total, bytes: a.acts_total * storage },
        PlanRow { name: "activation gradients", elements: a.act_grads_total, bytes: a.act_grads_total * storage },
        PlanRow { name: "statistics (f32)", elements: a.stats_total, bytes: a.stats_total * 4 },
        PlanRow { name: "token ids (i32)", elements: a.inputs_total, bytes: a.inputs_total * 4 },
    ]);
    rows
}

/// Total bytes of a plan.
pub fn plan_bytes(rows: &[PlanRow]) -> usize {
    rows.iter().map(|r| r.bytes).sum()
}

/// Parameter counts by group: (group, count). Embedding rows past the special tokens are
/// alignment padding and are not counted.
pub fn parameter_groups(cfg: &ModelConfig) -> Vec<(&'static str, usize)> {
    let p = ParamLayout::new(cfg);
    let mut groups: Vec<(&'static str, usize)> = Vec::new();
    let mut add = |group: &'static str, n: usize| match groups.iter_mut().find(|g| g.0 == group) {
        Some(g) => g.1 += n,
        None => groups.push((group, n)),
    };
    for spec in &p.specs {
        let n = spec.tensor.len;
        let group = if spec.name == "wte.weight" {
            add("token embedding", (cfg.vocab_size + super::config::NUM_SPECIAL_TOKENS) * cfg.n_embd);
            continue;
        } else if spec.name == "wpe.weight" {
            "position embedding"
        } else if spec.name.contains(".attn.") && spec.decay {
            "attention weights"
        } else if spec.name.contains(".mlp.") && spec.decay {
            "MLP weights"
        } else if spec.name.contains("ln_") {
            "layernorms"
        } else {
            "biases"
        };
        add(group, n);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_add_up_to_the_parameter_count() {
        let cfg = ModelConfig::preset("d12", 50257).unwrap();
        let total: usize = parameter_groups(&cfg).iter().map(|g| g.1).sum();
        assert_eq!(total, cfg.num_parameters());
    }

    #[test]
    fn bf16_plan_counts_master_weights_and_halves_activations() {
        let cfg = ModelConfig::preset("tiny", 257).unwrap();
        let f32_plan = memory_plan(&cfg, 4, 64, Precision::F32);
        let bf16_plan = memory_plan(&cfg, 4, 64, Precision::Bf16);
        assert_eq!(bf16_plan.len(), f32_plan.len() + 1);
        let acts = |p: &[PlanRow]| p.iter().find(|r| r.name == "activations").unwrap().bytes;
        assert_eq!(acts(&f32_plan), 2 * acts(&bf16_plan));
    }
}
