//! Learning-rate schedule: linear warmup, then decay to a floor.

use serde::{Deserialize, Serialize};

/// How the rate falls after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Half a cosine from the peak to the floor (GPT-3, nanoGPT).
    Cosine,
    /// A straight line from the peak to the floor.
    Linear,
    /// Stay at the peak.
    Constant,
}

/// The schedule of a run of `total_steps` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f32,
    /// The floor as a fraction of the peak.
    pub floor_frac: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl LrSchedule {
    /// The rate for 0-based `step`: (step+1)/warmup · peak during warmup, then the decay from the
    /// peak at the end of warmup to `floor_frac · peak` at the last step.
    pub fn at(&self, step: usize) -> f32 {
        let peak = self.peak as f64;
        if step < self.warmup_steps {
            return (peak * (step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let floor = peak * self.floor_frac as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps).saturating_sub(1).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let lr = match self.decay {
            Decay::Constant => peak,
            Decay::Linear => peak - (peak - floor) * progress,
            Decay::Cosine => floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: Decay) -> LrSchedule {
        LrSchedule { peak: 1.0, floor_frac: 0.1, warmup_steps: 10, total_steps: 110, decay }
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let s = sched(Decay::Cosine);
        assert!((s.at(0) - 0.1).abs() < 1e-7);
        assert!((s.at(4) - 0.5).abs() < 1e-7);
        assert!((s.at(9) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn cosine_and_linear_fall_to_the_floor_at_the_last_step() {
        for decay in [Decay::Cosine, Decay::Linear] {
            let s = sched(decay);
            assert!((s.at(10) - 1.0).abs() < 1e-7, "{decay:?} starts at the peak");
            assert!((s.at(109) - 0.1).abs() < 1e-6, "{decay:?} ends at the floor");
            assert!((s.at(500) - 0.1).abs() < 1e-6, "{decay:?} stays at the floor");
            for step in 10..109 {
                assert!(s.at(step + 1) <= s.at(step), "{decay:?} is monotone");
            }
        }
        // Halfway through the decay: cosine and linear both sit at the midpoint.
        assert!((sched(Decay::Cosine).at(10 + 49) - 0.55).abs() < 0.01);
        assert!((sched(Decay::Linear).at(10 + 49) - 0.55).abs() < 0.01);
        assert_eq!(sched(Decay::Constant).at(80), 1.0);
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = LrSchedule { peak: 0.5, floor_frac: 0.0, warmup_steps: 0, total_steps: 3, decay: Decay::Linear };
        assert_eq!(s.at(0), 0.5);
        assert_eq!(s.at(2), 0.0);
    }
}
