#![no_main]
//! Every SSH message parser (KEXINIT, keys, signatures, message layouts).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::ssh::fuzzing::messages(data);
});
