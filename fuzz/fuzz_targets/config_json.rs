//! Fuzz target `config_json`: see `gptk_fuzz::targets::config_json`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gptk_fuzz::targets::config_json(data));

#[cfg(not(fuzzing))]
fn main() {
    gptk_fuzz::plain_main("config_json");
}
