#![no_main]
//! `warren::fuzz::mqtt`: must never panic, whatever the bytes.

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::mqtt(data));
