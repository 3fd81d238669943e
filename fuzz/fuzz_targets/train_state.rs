//! Fuzz target `train_state`: see `gptk_fuzz::targets::train_state`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gptk_fuzz::targets::train_state(data));

#[cfg(not(fuzzing))]
fn main() {
    gptk_fuzz::plain_main("train_state");
}
