//! A seeded mutation fuzzer for machines without libFuzzer (which needs a nightly toolchain):
//! it mutates the seeds of a target (bit flips, interesting integers at any offset, numbers in
//! JSON text replaced by extreme ones, inserted, deleted, duplicated and spliced ranges,
//! truncation) and runs the target on each result, catching panics. No coverage feedback, so
//! it finds less than libFuzzer in the same time, but the same seed always replays the same
//! inputs.
//!
//! Also compiled into `tests/hostile_files.rs`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Inputs grow no larger than this.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// Integers that break size arithmetic, written little-endian at random offsets.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Replacements for a number in JSON text.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1.5",
    "1e309",
    "-0",
    "65536",
    "65537",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "null",
    "\"7\"",
    "[]",
];

const STRUCTURE: &[u8] = b"{}[]\",:\\\n\0";

/// splitmix64: small, fast, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Applies one to four random mutations to `data`, taking splice material from `pool`.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, data, pool);
    }
    data.truncate(MAX_INPUT_BYTES);
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    if data.is_empty() {
        data.push(rng.next() as u8);
        return;
    }
    let len = data.len();
    let at = rng.below(len);
    match rng.below(10) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = rng.next() as u8,
        2 => {
            let value = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1, 2, 4, 8][rng.below(4)];
            for (i, b) in value.to_le_bytes().iter().take(width).enumerate() {
                if let Some(x) = data.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        3 => {
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        4 => {
            let end = (at + 1 + rng.below(64)).min(len);
            data.drain(at..end);
        }
        5 => data.truncate(at),
        6 => {
            // A number in JSON text (a run of digits) becomes an extreme one.
            let starts: Vec<usize> =
                (0..len).filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit())).collect();
            if starts.is_empty() {
                data[at] ^= 0x20;
                return;
            }
            let start = starts[rng.below(starts.len())];
            let end = (start..len).find(|&i| !data[i].is_ascii_digit()).unwrap_or(len);
            let number = NUMBERS[rng.below(NUMBERS.len())];
            data.splice(start..end, number.bytes());
        }
        7 => data[at] = STRUCTURE[rng.below(STRUCTURE.len())],
        8 => {
            let other = &pool[rng.below(pool.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                data.splice(at..at, other[from..from + n].iter().copied());
            }
        }
        _ => {
            let n = 1 + rng.below((len - at).min(64));
            let copy = data[at..at + n].to_vec();
            let to = rng.below(len);
            data.splice(to..to, copy);
        }
    }
}

/// How long a run goes on.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Iterations(u64),
    Time(Duration),
}

/// An input on which the target panicked.
#[derive(Debug)]
pub struct Failure {
    pub input: Vec<u8>,
    pub message: String,
}

/// The input being run, for a handler that must save it when the process is about to abort.
static CURRENT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);

/// The input `run` is running now, if any.
#[allow(dead_code)]
pub fn current_input() -> Option<&'static [u8]> {
    let ptr = CURRENT_PTR.load(Ordering::SeqCst);
    // SAFETY: `run` publishes the input only while the target runs on it, and the input is
    // neither moved nor freed before `run` clears it.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr, CURRENT_LEN.load(Ordering::SeqCst)) })
}

/// Runs `target` on every seed, then on mutations of the seeds and of earlier mutants, until
/// the budget is spent. Returns the number of inputs run, or the first input that panicked.
pub fn run(target: fn(&[u8]), seeds: &[Vec<u8>], budget: Budget, seed: u64) -> Result<u64, Failure> {
    let attempt = |input: &[u8]| {
        CURRENT_LEN.store(input.len(), Ordering::SeqCst);
        CURRENT_PTR.store(input.as_ptr().cast_mut(), Ordering::SeqCst);
        let result = catch_unwind(AssertUnwindSafe(|| target(input)));
        CURRENT_PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
        result.map_err(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Failure { input: input.to_vec(), message }
        })
    };
    for s in seeds {
        attempt(s)?;
    }
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut current = seeds[0].clone();
    let mut runs = seeds.len() as u64;
    loop {
        match budget {
            Budget::Iterations(n) if runs >= n => break,
            Budget::Time(t) if runs.is_multiple_of(64) && started.elapsed() >= t => break,
            _ => {}
        }
        // Mostly a fresh mutant of a seed; sometimes keep walking from the last mutant.
        if rng.below(4) != 0 {
            current = seeds[rng.below(seeds.len())].clone();
        }
        mutate(&mut rng, &mut current, seeds);
        attempt(&current)?;
        runs += 1;
    }
    Ok(runs)
}
