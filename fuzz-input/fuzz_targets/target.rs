#![no_main]
//! `warren::fuzz::target`: must never panic, whatever the bytes.

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::target(data));
