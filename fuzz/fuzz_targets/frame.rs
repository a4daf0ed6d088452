//! The wire frame: what gossip and request-response carry. Decoding must never
//! panic; a frame that decodes re-encodes to the same bytes, and verifying its
//! signatures must never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Frame, Message, NetworkId};

fuzz_target!(|data: &[u8]| {
    let net = NetworkId::named("fuzz");
    if let Ok(frame) = Frame::from_bytes(data, &net) {
        assert_eq!(frame.to_bytes().expect("re-encode"), data);
        match &frame.message {
            Message::Offer(s) => drop(s.verify(&net)),
            Message::Bid(s) => drop(s.verify(&net)),
            Message::Proposal(s) => drop(s.verify(&net)),
            Message::Answer(s) => drop(s.verify(&net)),
            Message::Contract(c) => drop(c.verify_signers(&net, &[])),
            Message::Receipt(s) => drop(s.verify(&net)),
            Message::Probe(s) => drop(s.verify(&net)),
            Message::ProbeReply(s) => drop(s.verify(&net)),
            Message::Verdict(s) => drop(s.verify(&net)),
            Message::Dispute(s) => drop(s.verify(&net)),
            Message::KeyGrant(s) => drop(s.verify(&net)),
            Message::Withdrawal(s) => drop(s.verify(&net).map(|w| w.validate())),
        }
    }
});
