//! Fuzz target `model_file`: see `gptk_fuzz::targets::model_file`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gptk_fuzz::targets::model_file(data));

#[cfg(not(fuzzing))]
fn main() {
    gptk_fuzz::plain_main("model_file");
}
