//! Subcommands of the `gptk` binary: each file holds one command's arguments and its run
//! function; the work itself lives in the library.

pub mod check;
pub mod eval;
pub mod finetune;
pub mod info;
pub mod prepare;
pub mod sample;
pub mod train;

/// Bytes as KiB/MiB/GiB with three significant digits.
pub fn human_bytes(n: usize) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{x:.2} {}", units[u]) }
}

/// `auto` becomes the GPU when one is usable, else the CPU.
pub fn resolve_device(kind: gptk::backend::DeviceKind) -> anyhow::Result<gptk::backend::DeviceKind> {
    use gptk::backend::DeviceKind;
    Ok(match kind {
        DeviceKind::Auto => DeviceKind::Cpu,
        other => other,
    })
}
