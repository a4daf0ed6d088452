//! An automerge sync message from a peer, fed to a replica that holds a few real
//! entries: it never panics, and nothing invalid enters the ledger's state.
#![no_main]

use std::sync::OnceLock;

use crdt_ledger::{Body, Genesis, GenesisEntry, Ledger, Params, PeerState};
use libfuzzer_sys::fuzz_target;
use protocol::{Amount, Identity, Timestamp};

fn genesis() -> &'static GenesisEntry {
    static G: OnceLock<GenesisEntry> = OnceLock::new();
    G.get_or_init(|| {
        let ids: Vec<Identity> = (0..3).map(Identity::from_seed).collect();
        GenesisEntry::create(
            &ids[0],
            Genesis {
                name: "fuzz".into(),
                genesis_time: Timestamp(0),
                params: Params::default(),
                balances: ids.iter().map(|i| (i.account(), Amount::tokens(10))).collect(),
                stakes: vec![(ids[0].account(), Amount::tokens(100))],
                bonds: vec![],
            },
        )
        .expect("genesis")
    })
}

fuzz_target!(|data: &[u8]| {
    let g = genesis().clone();
    let Ok(mut ledger) = Ledger::new(g, b"fuzz") else {
        return;
    };
    let a = Identity::from_seed(1);
    let b = Identity::from_seed(2);
    let _ = ledger.append(&a, Body::Transfer { to: b.account(), amount: Amount::tokens(1) }, Timestamp(1));
    let before = ledger.balance(&b.account());
    let mut peer = PeerState::new();
    let _ = ledger.receive_sync_message(&mut peer, data);
    // Whatever arrived, balances stay within the supply.
    let after = ledger.balance(&b.account());
    assert!(after.0 <= Amount::tokens(30).0, "{before:?} -> {after:?}");
});
