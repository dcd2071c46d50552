#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dp3_fuzz::targets::config_yaml(data));
