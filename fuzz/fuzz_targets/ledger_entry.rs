//! A ledger entry as it arrives by gossip or from disk: decoding and verifying it
//! never panics, and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::NetworkId;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = crdt_ledger::Entry::from_bytes(data) {
        assert_eq!(e.to_bytes().expect("re-encode"), data);
        let _ = e.verify(&NetworkId::named("fuzz"));
    }
});
