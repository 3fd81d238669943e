//! The command line: [`command`] parses and dispatches; each other file holds one subcommand's
//! arguments and its run function, and the work itself lives in the rest of the library. It is
//! part of the library (the binary only calls [`command::main`]) so that tests can parse the
//! commands the README shows.

pub mod bench;
pub mod check;
pub mod command;
pub mod eval;
pub mod finetune;
pub mod info;
pub mod launch;
pub mod plot;
pub mod prepare;
pub mod sample;
pub mod train;

/// A progress bar on standard error, hidden when that is not a terminal (logs, pipes, tests).
pub fn progress_bar(len: u64, what: &str, unit: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let template = format!("{what} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
    bar
}

/// A spinner on standard error for work of unknown length, hidden when not a terminal.
pub fn spinner(message: String) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

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

/// Where a command runs, once `--device` is resolved.
pub enum Device {
    Cpu,
    Cuda(crate::backend::cuda::DeviceInfo),
}

/// `cpu`, `cuda` (an error naming what is missing when no GPU is usable), or `auto`: the GPU
/// when this binary has kernels and a GPU answers, else the CPU.
pub fn resolve_device(kind: crate::backend::DeviceKind) -> anyhow::Result<Device> {
    resolve_device_for(kind, 0)
}

/// [`resolve_device`] for GPU `ordinal` (a data-parallel process's local rank).
pub fn resolve_device_for(kind: crate::backend::DeviceKind, ordinal: usize) -> anyhow::Result<Device> {
    use crate::backend::{DeviceKind, cuda};
    let probe = || -> anyhow::Result<cuda::DeviceInfo> {
        if !cuda::is_compiled() {
            anyhow::bail!(
                "this gptk was built without nvcc, so it has no CUDA kernels; install it ({}) and rebuild",
                cuda::NVCC_INSTALL_HINT
            );
        }
        Ok(cuda::probe_device(ordinal)?)
    };
    let cuda = || probe().map_err(|e| anyhow::anyhow!("--device cuda: {e}"));
    Ok(match kind {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda => Device::Cuda(cuda()?),
        // A machine with GPUs uses them; then GPU `ordinal` must exist (a data-parallel job never
        // mixes devices).
        DeviceKind::Auto if cuda::is_compiled() && cuda::probe().is_ok() => Device::Cuda(cuda()?),
        DeviceKind::Auto => Device::Cpu,
    })
}
