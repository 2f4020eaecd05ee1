#![no_main]
//! `warren::fuzz::p2p`: must never panic, whatever the bytes.

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::p2p(data));
