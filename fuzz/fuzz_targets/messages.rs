//! Every message body decoder, each with its own size limit. The first byte picks
//! the kind. A body that decodes is canonical: it re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::codec::{self, Wire};
use protocol::*;

fn check<T: Wire + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = codec::decode::<T>(data) {
        assert_eq!(codec::encode(&v).expect("re-encode"), data);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 11 {
        0 => check::<Offer>(rest),
        1 => check::<JobSpec>(rest),
        2 => check::<Proposal>(rest),
        3 => check::<ProposalAnswer>(rest),
        4 => check::<ContractTerms>(rest),
        5 => check::<Receipt>(rest),
        6 => check::<Probe>(rest),
        7 => check::<ProbeReply>(rest),
        8 => check::<Verdict>(rest),
        9 => check::<Dispute>(rest),
        _ => check::<Frame>(rest),
    }
});
