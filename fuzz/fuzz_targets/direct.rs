//! Direct (request-response) messages: any bytes give a message or a clear
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = node_core::Direct::from_bytes(data, &protocol::NetworkId::named("fuzz"));
});
