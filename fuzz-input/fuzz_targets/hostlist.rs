#![no_main]
//! `warren::fuzz::hostlist`: must never panic, whatever the bytes.

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::hostlist(data));
