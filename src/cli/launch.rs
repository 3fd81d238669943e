//! `gptk launch --gpus N -- train …`: data-parallel training on one machine, one process per
//! GPU, the way torchrun's standalone mode does it.
//!
//! Each child is this same program with the given arguments and the environment torchrun would
//! give it (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR=127.0.0.1`, `MASTER_PORT`). The
//! launcher forwards SIGINT/SIGTERM to every child (so a training run checkpoints and stops
//! cleanly), and when one child fails it stops the others and exits with the failure's code.

use anyhow::{Context, Result, bail};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long children get to stop after the first failure or a signal before they are killed.
const GRACE: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Processes to start (one per GPU; GPU i gets the process with LOCAL_RANK i).
    #[arg(long)]
    gpus: usize,
    /// Port rank 0 listens on [default: a free one].
    #[arg(long)]
    master_port: Option<u16>,
    /// The gptk command each process runs, after `--` (e.g. `-- train --data …`).
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Sends `signal` to a child.
fn signal_child(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped; a stale pid only fails.
    unsafe {
        kill(child.id() as i32, signal);
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

pub fn run(args: &LaunchArgs) -> Result<ExitCode> {
    if args.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    if args.command.first().is_some_and(|c| c == "launch") {
        bail!("the launched command cannot itself be `launch`");
    }
    let uses_cuda = !args.command.windows(2).any(|w| w[0] == "--device" && w[1] == "cpu")
        && !args.command.iter().any(|a| a == "--device=cpu");
    if uses_cuda
        && crate::backend::cuda::is_compiled()
        && let Ok(count) = crate::backend::cuda::device_count()
        && count > 0
        && args.gpus > count
    {
        bail!("--gpus {} asks for more processes than this machine has GPUs ({count})", args.gpus);
    }
    let port = match args.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    let exe = std::env::current_exe().context("locating the gptk executable")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let mut children = Vec::with_capacity(args.gpus);
    for rank in 0..args.gpus {
        let child = Command::new(&exe)
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.gpus.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("starting rank {rank}"))?;
        children.push(Some(child));
    }
    let mut failure: Option<(usize, i32)> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut forwarded = false;
    loop {
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(child) = slot
                && let Some(status) = child.try_wait().context("waiting for a rank")?
            {
                let code = status.code().unwrap_or(1);
                if code != 0 && failure.is_none() {
                    eprintln!("launch: rank {rank} exited with {status}; stopping the others");
                    failure = Some((rank, code));
                }
                *slot = None;
            }
        }
        if children.iter().all(Option::is_none) {
            break;
        }
        if (failure.is_some() || stop.load(Ordering::SeqCst)) && !forwarded {
            for child in children.iter().flatten() {
                signal_child(child, signal_hook::consts::SIGTERM);
            }
            forwarded = true;
            stopping_since = Some(Instant::now());
        }
        if stopping_since.is_some_and(|t| t.elapsed() > GRACE) {
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(match failure {
        Some((_, code)) => ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)),
        None => ExitCode::SUCCESS,
    })
}
