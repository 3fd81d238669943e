//! Fuzzing gptk's file parsers. `targets` holds one function per parser; each binary in
//! `fuzz_targets/` is a libFuzzer target under `cargo fuzz` and, built without it, a plain
//! program that runs the seeded mutator of `mutate` for a time budget (`scripts/fuzz.sh`).

pub mod mutate;
pub mod targets;

#[cfg(not(fuzzing))]
mod plain {
    use super::{mutate, targets};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicPtr, Ordering};
    use std::time::Duration;

    /// One allocation above this is a finding: inputs are at most 1 MiB, and no parser should
    /// need more than a bounded multiple of its input.
    const ALLOC_LIMIT_BYTES: usize = 1 << 30;

    /// Where an input that asked for too much memory is written before the process aborts.
    static OOM_PATH: AtomicPtr<PathBuf> = AtomicPtr::new(std::ptr::null_mut());

    /// The system allocator, refusing single allocations above [`ALLOC_LIMIT_BYTES`] (Rust then
    /// aborts with "memory allocation of N bytes failed") after saving the input being run.
    struct Capped;

    // SAFETY: defers to `System` for every allocation it grants.
    unsafe impl GlobalAlloc for Capped {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if layout.size() > ALLOC_LIMIT_BYTES {
                save_current_input();
                return std::ptr::null_mut();
            }
            // SAFETY: same contract as ours.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if layout.size() > ALLOC_LIMIT_BYTES {
                save_current_input();
                return std::ptr::null_mut();
            }
            // SAFETY: same contract as ours.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if new_size > ALLOC_LIMIT_BYTES {
                save_current_input();
                return std::ptr::null_mut();
            }
            // SAFETY: same contract as ours.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Capped = Capped;

    fn save_current_input() {
        let path = OOM_PATH.load(Ordering::SeqCst);
        if path.is_null() {
            return;
        }
        // SAFETY: set once in `plain_main` from a leaked box, never freed.
        let path = unsafe { &*path };
        if let Some(input) = mutate::current_input() {
            // Small allocations only: the cap does not refuse them.
            let _ = std::fs::write(path, input);
            eprintln!("allocation above {ALLOC_LIMIT_BYTES} bytes; input saved to {}", path.display());
        }
    }

    fn artifact_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts").join(name)
    }

    /// `TARGET [SECONDS] [--seed N] [--write-seeds DIR] [--replay FILE...]`
    pub fn main(name: &str) {
        let (_, target) = *targets::TARGETS.iter().find(|(n, _)| *n == name).expect("target is listed");
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut seconds = 60.0f64;
        let mut seed = 1u64;
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--seed" => {
                    seed = args.get(i + 1).and_then(|s| s.parse().ok()).expect("--seed takes an integer");
                    i += 2;
                }
                "--write-seeds" => {
                    let dir = PathBuf::from(args.get(i + 1).expect("--write-seeds takes a directory"));
                    std::fs::create_dir_all(&dir).expect("seed directory");
                    for (k, s) in targets::seeds(name).iter().enumerate() {
                        std::fs::write(dir.join(format!("seed-{k}")), s).expect("seed file");
                    }
                    return;
                }
                "--replay" => {
                    for file in &args[i + 1..] {
                        let input = std::fs::read(file).expect("replay input");
                        target(&input);
                        println!("{name}: {file} ok");
                    }
                    return;
                }
                s => {
                    seconds =
                        s.parse().expect("usage: TARGET [SECONDS] [--seed N] [--write-seeds DIR] [--replay FILE...]");
                    i += 1;
                }
            }
        }
        let dir = artifact_dir(name);
        std::fs::create_dir_all(&dir).expect("artifact directory");
        let oom = Box::leak(Box::new(dir.join(format!("oom-seed-{seed}"))));
        OOM_PATH.store(oom, Ordering::SeqCst);
        let budget = mutate::Budget::Time(Duration::from_secs_f64(seconds));
        match mutate::run(target, &targets::seeds(name), budget, seed) {
            Ok(runs) => println!("{name}: {runs} inputs in {seconds} s (seed {seed}), no failure"),
            Err(f) => {
                let hash =
                    f.input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
                let path = dir.join(format!("crash-{hash:016x}"));
                std::fs::write(&path, &f.input).expect("crash input");
                eprintln!("{name}: panic: {}\n  input saved to {}", f.message, path.display());
                std::process::exit(1);
            }
        }
    }
}

/// The entry point of a target built without libFuzzer.
#[cfg(not(fuzzing))]
pub fn plain_main(name: &str) {
    plain::main(name)
}
