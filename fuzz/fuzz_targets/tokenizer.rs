//! Fuzz target `tokenizer`: see `gptk_fuzz::targets::tokenizer`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gptk_fuzz::targets::tokenizer(data));

#[cfg(not(fuzzing))]
fn main() {
    gptk_fuzz::plain_main("tokenizer");
}
