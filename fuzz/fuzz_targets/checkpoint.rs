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
        if let Ok(body) = p.checkpoint.body_unverified() {
            // What a member does with a proposal's content and its proof of
            // lock change, and with the beacon it carries.
            let _ = body.content_hash();
            if let Some(pol) = &p.valid {
                let earlier = body.in_round(pol.round, body.proposer);
                let _ = protocol::MultiSigned::new(&earlier).map(|m| m.body_hash());
            }
            let _ = crdt_ledger::Beacon::hash(body.beacon.as_ref());
        }
    }
    if let Ok(s) = crdt_ledger::checkpoint::decode_skip(data) {
        let _ = s.body_unverified();
        let _ = s.verify_signers(&net, &[]);
    }
});
