//! Two replicas of a small network: a transfer, a sync, a checkpoint by the
//! committee, and a double spend across a partition that takes effect once.
//!
//! `cargo run -p crdt-ledger --example two_replicas`

use crdt_ledger::{Body, Genesis, GenesisEntry, Ledger, Params};
use protocol::{Amount, Identity, Timestamp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids: Vec<Identity> = (0..6).map(Identity::from_seed).collect();
    let genesis = GenesisEntry::create(
        &ids[0],
        Genesis {
            name: "demo".into(),
            genesis_time: Timestamp(0),
            params: Params {
                committee_size: 4,
                ..Params::default()
            },
            balances: ids
                .iter()
                .map(|i| (i.account(), Amount::tokens(100)))
                .collect(),
            stakes: ids[..4]
                .iter()
                .map(|i| (i.account(), Amount::tokens(1_000)))
                .collect(),
            bonds: vec![],
        },
    )?;
    println!("network {}", genesis.network());
    let mut a = Ledger::new(genesis.clone(), b"replica-a")?;
    let mut b = Ledger::new(genesis.clone(), b"replica-b")?;
    let (alice, bob, carol) = (&ids[4], &ids[5], &ids[1]);

    // A transfer on one replica, synced to the other.
    let t = Body::Transfer {
        to: bob.account(),
        amount: Amount::tokens(30),
    };
    a.append(alice, t, Timestamp(1))?;
    let msgs = a.merge_with(&mut b)?;
    println!(
        "after {msgs} sync messages bob has {} (spendable {})",
        b.balance(&bob.account()),
        b.spendable(&bob.account())
    );

    // The epoch ends: the committee checkpoints it; bob's credit becomes spendable.
    let now = a.epoch_end(1);
    let committee = a.committee_for_checkpoint(1).ok_or("no committee")?;
    let find = |acc| ids.iter().find(|i| i.account() == acc).ok_or("not ours");
    for action in a.handle_timeout(&committee[0], now) {
        println!("timer: {action:?}");
    }
    let proposal = a.propose_checkpoint(find(committee[0])?, 1, 0)?;
    // Bob's replica holds the members' keys here: they prevote, then
    // precommit once a quorum prevoted.
    let members = committee
        .iter()
        .map(|m| find(*m))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(fin) = b.vote_all(&members, &proposal, now)? {
        a.append(find(committee[0])?, Body::Checkpoint(Box::new(fin)), now)?;
    }
    a.merge_with(&mut b)?;
    println!(
        "epoch {} final; bob may now spend {}",
        b.finalized_epoch(),
        b.spendable(&bob.account())
    );

    // A partition: alice's key spends her 70 tokens on both sides.
    let mut left = Ledger::new(genesis.clone(), b"left")?;
    let mut right = Ledger::new(genesis, b"right")?;
    a.merge_with(&mut left)?;
    a.merge_with(&mut right)?;
    let all = |to: &Identity| Body::Transfer {
        to: to.account(),
        amount: Amount::tokens(70),
    };
    left.append(alice, all(bob), now)?;
    right.append(alice, all(carol), now)?;
    left.merge_with(&mut right)?;
    println!(
        "after the merge: alice {}, bob {}, carol {} on both sides: {}",
        left.balance(&alice.account()),
        left.balance(&bob.account()),
        left.balance(&carol.account()),
        left.state() == right.state()
    );
    for proof in left.slash_proofs() {
        println!("slashable: {proof:?}");
    }
    Ok(())
}
