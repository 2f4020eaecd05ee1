#![no_main]
//! `warren::fuzz::socks`: must never panic, whatever the bytes.

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::socks(data));
