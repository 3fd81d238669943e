//! Fuzz target `prepare_jsonl`: see `gptk_fuzz::targets::prepare_jsonl`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gptk_fuzz::targets::prepare_jsonl(data));

#[cfg(not(fuzzing))]
fn main() {
    gptk_fuzz::plain_main("prepare_jsonl");
}
