//! What the ledger benchmarks share: a network of authors with funds.

use crdt_ledger::{Body, Genesis, GenesisEntry, Ledger, Params, Store};
use protocol::{Amount, DurationMs, Identity, Timestamp};

/// `authors` accounts of a million tokens each, the first `stakers` of them
/// staked (the committee), 10-minute epochs; signed by the first.
pub fn network(authors: usize, stakers: usize, committee: u16) -> (Vec<Identity>, GenesisEntry) {
    let ids: Vec<Identity> = (0..authors as u64).map(Identity::from_seed).collect();
    let genesis = Genesis {
        name: "bench".into(),
        genesis_time: Timestamp(0),
        params: Params {
            epoch_length: DurationMs(600_000),
            committee_size: committee,
            min_stake: Amount::tokens(1),
            ..Params::default()
        },
        balances: ids
            .iter()
            .map(|i| (i.account(), Amount::tokens(1_000_000)))
            .collect(),
        stakes: ids
            .iter()
            .take(stakers)
            .map(|i| (i.account(), Amount::tokens(1_000)))
            .collect(),
        bonds: vec![],
    };
    let genesis = GenesisEntry::create(&ids[0], genesis).expect("a bench genesis is valid");
    (ids, genesis)
}

/// Entry `i` of a bench ledger: a micro-token transfer by author `i mod n`.
pub fn append_transfer<S: Store>(l: &mut Ledger<S>, ids: &[Identity], i: usize) {
    let n = ids.len();
    let to = ids[(i * 7 + 1) % n].account();
    l.append(
        &ids[i % n],
        Body::Transfer {
            to,
            amount: Amount(1),
        },
        Timestamp(i as u64),
    )
    .expect("a bench transfer is valid");
}
