//! Fuzz target `shard_header`: see `gptk_fuzz::targets::shard_header`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gptk_fuzz::targets::shard_header(data));

#[cfg(not(fuzzing))]
fn main() {
    gptk_fuzz::plain_main("shard_header");
}
