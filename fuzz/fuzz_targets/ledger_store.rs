//! A ledger's stored records (`ledger.log`: pieces of the document and the
//! notes of what local members signed: prevotes, precommits, skips): any
//! records open a ledger or are refused with a clear error, never a panic.
//! The input is split into records at each 2-byte little-endian length.
#![no_main]

use std::sync::OnceLock;

use crdt_ledger::{Genesis, GenesisEntry, Ledger, MemStore, Params, Store};
use libfuzzer_sys::fuzz_target;
use protocol::{Amount, Identity, Timestamp};

fn genesis() -> &'static GenesisEntry {
    static G: OnceLock<GenesisEntry> = OnceLock::new();
    G.get_or_init(|| {
        let stakers: Vec<_> = (10..14)
            .map(|i| (Identity::from_seed(i).account(), Amount::tokens(100)))
            .collect();
        GenesisEntry::create(
            &Identity::from_seed(1),
            Genesis {
                name: "fuzz".into(),
                genesis_time: Timestamp(0),
                params: Params::default(),
                balances: stakers.clone(),
                stakes: stakers,
                bonds: vec![],
            },
        )
        .expect("a valid genesis")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut store = MemStore::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        if store.append(&rest[2..2 + n]).is_err() {
            return;
        }
        rest = &rest[2 + n..];
    }
    if let Ok((mut l, _)) = Ledger::open(genesis().clone(), &[1; 16], store) {
        let me = Identity::from_seed(10);
        let _ = l.signed_for(&me.account(), 1);
        let _ = l.handle_timeout(&me.account(), Timestamp(u64::MAX / 2));
        let _ = l.compact();
    }
});
