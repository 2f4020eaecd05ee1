#![no_main]
//! The SSH connection task itself (a real server `Conn`), after a real key
//! exchange, fed the messages of each input (u16 length-prefixed; the
//! first byte's low bit: log in first). See `warren::ssh::fuzzing::conn`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::ssh::fuzzing::conn(data);
});
