#![no_main]
//! The SSH packet decoder (length checks, AEAD open, padding) on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::ssh::fuzzing::packet(data);
});
