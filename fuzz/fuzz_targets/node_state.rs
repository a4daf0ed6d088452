//! A node's saved state file (`node-state.bin`): any bytes are restored or
//! refused with a clear error, never a panic.
#![no_main]

use std::sync::OnceLock;

use crdt_ledger::{Genesis, GenesisEntry, Ledger, Params};
use libfuzzer_sys::fuzz_target;
use node_core::{CoreConfig, NodeCore, Timing};
use protocol::{Amount, Identity, Timestamp};
use rand_chacha::rand_core::SeedableRng;

fn genesis() -> &'static GenesisEntry {
    static G: OnceLock<GenesisEntry> = OnceLock::new();
    G.get_or_init(|| {
        GenesisEntry::create(
            &Identity::from_seed(1),
            Genesis {
                name: "fuzz".into(),
                genesis_time: Timestamp(0),
                params: Params::default(),
                balances: vec![(Identity::from_seed(2).account(), protocol::Amount::tokens(10))],
                stakes: vec![],
                bonds: vec![],
            },
        )
        .expect("a valid genesis")
    })
}

fuzz_target!(|data: &[u8]| {
    let id = Identity::from_seed(2);
    let Ok(ledger) = Ledger::new(genesis().clone(), &id.account().0) else {
        return;
    };
    let mut core = NodeCore::new(
        id,
        ledger,
        CoreConfig {
            provider: None,
            oracle: true,
            bond: Amount::ZERO,
            contact: Vec::new(),
            timing: Timing::default(),
            book: Default::default(),
            persist: true,
            submits: true,
        },
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut out = Vec::new();
    // Both as it is (checksum usually fails) and with a valid checksum, so the
    // decoder itself is reached.
    let _ = core.restore(Timestamp(1), data, &mut rng, &mut out);
    let mut sealed = blake3::hash(data).as_bytes().to_vec();
    sealed.extend_from_slice(data);
    let _ = core.restore(Timestamp(1), &sealed, &mut rng, &mut out);
});
