//! The committee's direct messages: checkpoint proposals and skips. Decoding must
//! never panic, and a decoded proposal's signatures and body must be checkable
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::NetworkId;

fuzz_target!(|data: &[u8]| {
    let net = NetworkId::named("fuzz");
    if let Ok(p) = crdt_ledger::checkpoint::decode_proposal(data) {
        if let Ok(body) = p.checkpoint.body_unverified() {
            let _ = protocol::signed::verify_bytes(
                crdt_ledger::checkpoint::PROPOSED_KIND,
                &net,
                &body.proposer,
                p.checkpoint.body_bytes(),
                &p.by,
            );
        }
        let _ = p.checkpoint.verify_signers(&net, &[]);
    }
    if let Ok(s) = crdt_ledger::checkpoint::decode_skip(data) {
        let _ = s.body_unverified();
        let _ = s.verify_signers(&net, &[]);
    }
});
