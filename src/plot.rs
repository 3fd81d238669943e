//! Pictures of training runs: `gptk plot` draws the metrics a run writes (`metrics.jsonl`) as a
//! PNG of four panels — train and validation loss, learning rate, tokens per second, gradient
//! norm — against the optimizer step, one colour per run when several are compared.
//!
//! Text is drawn with a font that ships inside a crate (no system fonts needed), so the same
//! picture comes out on a bare server.

use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Size of the picture in pixels.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;
/// Colours of successive runs.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// A run's series, read from its metrics file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMetrics {
    pub name: String,
    pub loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
    pub tokens_per_s: Vec<(f64, f64)>,
    pub grad_norm: Vec<(f64, f64)>,
}

/// A metrics file that cannot be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    #[error("{}: cannot draw ({msg})", path.display())]
    Draw { path: PathBuf, msg: String },
}

/// Reads `path` (a metrics.jsonl, or a run directory holding one). Lines that are not JSON
/// objects with an `event` are skipped; a file with no training steps is an error.
pub fn read_metrics(path: &Path) -> Result<RunMetrics, PlotError> {
    let file = if path.is_dir() { path.join(crate::train::run::METRICS_FILE) } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|source| PlotError::Io { path: file.clone(), source })?;
    let name = if path.is_dir() { path } else { path.parent().unwrap_or(path) };
    let mut run = RunMetrics {
        name: name.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned()),
        ..Default::default()
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let Some(step) = v.get("step").and_then(Value::as_f64) else { continue };
        let field = |k: &str| v.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
        match v.get("event").and_then(Value::as_str) {
            Some("step") => {
                let push = |series: &mut Vec<(f64, f64)>, k: &str| {
                    if let Some(x) = field(k) {
                        series.push((step, x));
                    }
                };
                push(&mut run.loss, "loss");
                push(&mut run.lr, "lr");
                push(&mut run.tokens_per_s, "tokens_per_s");
                push(&mut run.grad_norm, "grad_norm");
            }
            Some("val") => {
                if let Some(x) = field("val_loss") {
                    run.val_loss.push((step, x));
                }
            }
            _ => {}
        }
    }
    if run.loss.is_empty() {
        return Err(PlotError::Input {
            path: file,
            msg: "no training steps recorded (expected lines with \"event\":\"step\")".into(),
        });
    }
    Ok(run)
}

/// The range of a set of series, padded a little; `log` asks for a positive lower bound.
fn range(series: &[&[(f64, f64)]], pick: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.iter().map(&pick))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
    (lo - pad, hi + pad)
}

type Panel<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(
    area: &Panel,
    title: &str,
    runs: &[RunMetrics],
    series: impl Fn(&RunMetrics) -> Vec<(&[(f64, f64)], bool)>,
) -> Result<(), String> {
    let all: Vec<&[(f64, f64)]> = runs.iter().flat_map(|r| series(r).into_iter().map(|(s, _)| s)).collect();
    let (x0, x1) = range(&all, |p| p.0);
    let (y0, y1) = range(&all, |p| p.1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("step").light_line_style(WHITE.mix(0.0)).draw().map_err(|e| e.to_string())?;
    // A legend when it tells lines apart: several runs, or training beside validation.
    let has_val = runs.iter().any(|r| series(r).iter().any(|(p, dashed)| *dashed && !p.is_empty()));
    for (i, run) in runs.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        for (points, dashed) in series(run) {
            if points.is_empty() {
                continue;
            }
            let label = if dashed { format!("{} (val)", run.name) } else { run.name.clone() };
            let style = if dashed { colour.stroke_width(3) } else { colour.mix(0.8).stroke_width(1) };
            let drawn = chart.draw_series(LineSeries::new(points.iter().copied(), style)).map_err(|e| e.to_string())?;
            if runs.len() > 1 || has_val {
                drawn.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
    }
    if runs.len() > 1 || has_val {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Draws the runs into a PNG at `out`.
pub fn plot(runs: &[RunMetrics], out: &Path) -> Result<(), PlotError> {
    let draw_err = |msg: String| PlotError::Draw { path: out.to_path_buf(), msg };
    // Registering twice (a second plot in one process) is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
    let root = BitMapBackend::new(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let panels = root.split_evenly((2, 2));
    draw_panel(&panels[0], "loss (train, and validation in bold)", runs, |r| {
        vec![(&r.loss[..], false), (&r.val_loss[..], true)]
    })
    .map_err(draw_err)?;
    draw_panel(&panels[1], "learning rate", runs, |r| vec![(&r.lr[..], false)]).map_err(draw_err)?;
    draw_panel(&panels[2], "tokens per second", runs, |r| vec![(&r.tokens_per_s[..], false)]).map_err(draw_err)?;
    draw_panel(&panels[3], "gradient norm (before clipping)", runs, |r| vec![(&r.grad_norm[..], false)])
        .map_err(draw_err)?;
    root.present().map_err(|e| draw_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_become_series_and_a_png() {
        let dir = std::env::temp_dir().join(format!("gptk-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines: Vec<String> = (1..=20)
            .map(|s| format!("{{\"event\":\"step\",\"step\":{s},\"loss\":{},\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":3000}}", 5.0 / s as f64))
            .chain(["{\"event\":\"val\",\"step\":10,\"val_loss\":1.2}".to_string(), "not json".to_string()])
            .collect();
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
        let run = read_metrics(&dir).unwrap();
        assert_eq!((run.loss.len(), run.val_loss.len(), run.lr.len()), (20, 1, 20));
        let out = dir.join("loss.png");
        plot(&[run.clone(), RunMetrics { name: "other".into(), ..run }], &out).unwrap();
        let png = std::fs::read(&out).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::write(dir.join("metrics.jsonl"), "{\"event\":\"val\",\"step\":1,\"val_loss\":1}").unwrap();
        assert!(read_metrics(&dir).unwrap_err().to_string().contains("no training steps"));
    }
}
