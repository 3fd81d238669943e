//! Parameter counts by group, for `gptk info`. (Bytes per arena are the backends' business:
//! `backend::cuda::MemoryPlan` for the GPU, `CpuBackend::bytes_for` for the CPU.)

use super::config::ModelConfig;
use super::layout::ParamLayout;

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
}
