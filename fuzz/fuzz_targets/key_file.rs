//! The key file parser: any file content gives a key or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = protocol::Identity::parse_key_file(data, "fuzz");
});
