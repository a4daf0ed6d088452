//! Property tests: merging replicas in any order, any number of times, gives the
//! same state; supply is conserved after any sequence of valid and invalid entries.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crdt_ledger::{Body, Entry, EntryData, Ledger};
use proptest::prelude::*;
use protocol::{Amount, Hash32};

#[derive(Clone, Debug)]
enum Op {
    Transfer {
        r: usize,
        from: usize,
        to: usize,
        tokens: u64,
    },
    Stake {
        r: usize,
        who: usize,
        tokens: u64,
    },
    Unstake {
        r: usize,
        who: usize,
        tokens: u64,
    },
    /// A signed entry that the fold must refuse: an overspend, or a broken chain.
    Raw {
        r: usize,
        who: usize,
        broken: bool,
    },
    Sync {
        a: usize,
        b: usize,
    },
    Finalize {
        r: usize,
    },
    Slash {
        r: usize,
    },
    /// Lock the escrow of contract `nonce` between two accounts.
    Lock {
        r: usize,
        req: usize,
        prov: usize,
        nonce: u64,
    },
    /// Settle contract `nonce` with verdicts of the current committee.
    Settle {
        r: usize,
        req: usize,
        prov: usize,
        nonce: u64,
        units: u64,
        voters: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..6usize, 0..6usize, 1..700u64)
            .prop_map(|(r, from, to, tokens)| Op::Transfer { r, from, to, tokens }),
        1 => (0..3usize, 0..6usize, 1..600u64).prop_map(|(r, who, tokens)| Op::Stake { r, who, tokens }),
        1 => (0..3usize, 0..6usize, 1..600u64).prop_map(|(r, who, tokens)| Op::Unstake { r, who, tokens }),
        1 => (0..3usize, 0..6usize, any::<bool>()).prop_map(|(r, who, broken)| Op::Raw { r, who, broken }),
        2 => (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync { a, b }),
        1 => (0..3usize).prop_map(|r| Op::Finalize { r }),
        1 => (0..3usize).prop_map(|r| Op::Slash { r }),
        2 => (0..3usize, 0..6usize, 0..6usize, 0..3u64)
            .prop_map(|(r, req, prov, nonce)| Op::Lock { r, req, prov, nonce }),
        2 => (0..3usize, 0..6usize, 0..6usize, 0..3u64, 0..20_000u64, 1..5usize)
            .prop_map(|(r, req, prov, nonce, units, voters)| Op::Settle { r, req, prov, nonce, units, voters }),
    ]
}

fn run(net: &Net, ops: &[Op]) -> Vec<Ledger> {
    let mut reps: Vec<Ledger> = (0..3).map(|i| net.ledger(10 + i as u8)).collect();
    let now = T0;
    for op in ops {
        match *op {
            Op::Transfer {
                r,
                from,
                to,
                tokens,
            } => {
                let _ = reps[r].append(&net.ids[from], transfer(net.acct(to), tokens), now);
            }
            Op::Stake { r, who, tokens } => {
                let _ = reps[r].append(
                    &net.ids[who],
                    Body::Stake {
                        amount: Amount::tokens(tokens),
                    },
                    now,
                );
            }
            Op::Unstake { r, who, tokens } => {
                let _ = reps[r].append(
                    &net.ids[who],
                    Body::Unstake {
                        amount: Amount::tokens(tokens),
                    },
                    now,
                );
            }
            Op::Raw { r, who, broken } => {
                let a = net.acct(who);
                let (seq, prev) = match reps[r].tip(&a) {
                    Some((s, h)) => (s + 1, h),
                    None => (0, Hash32(net.genesis.network().0)),
                };
                let prev = if broken { Hash32([0xab; 32]) } else { prev };
                let data = EntryData {
                    author: a,
                    seq,
                    prev_hash: prev,
                    created_at: now,
                    body: transfer(net.acct((who + 1) % 6), 1_000_000),
                };
                let e = Entry::sign(&net.ids[who], &net.genesis.network(), &data).unwrap();
                reps[r].receive_entry(e).unwrap();
            }
            Op::Sync { a, b } => {
                if a != b {
                    let (x, y) = two(&mut reps, a, b);
                    sync(x, y);
                }
            }
            Op::Finalize { r } => {
                let e = reps[r].finalized_epoch() + 1;
                if reps[r]
                    .committee_for_checkpoint(e)
                    .is_some_and(|c| !c.is_empty())
                {
                    try_finalize(net, &mut reps[r], e, 0, false);
                }
            }
            Op::Lock {
                r,
                req,
                prov,
                nonce,
            } => {
                let c = net.contract(req, prov, nonce);
                let _ = reps[r].append(&net.ids[req], Body::EscrowLock { contract: c }, now);
            }
            Op::Settle {
                r,
                req,
                prov,
                nonce,
                units,
                voters,
            } => {
                let c = net.contract(req, prov, nonce);
                let epoch = reps[r].finalized_epoch() + 1;
                if let Some(committee) = reps[r].committee_for_checkpoint(epoch) {
                    let v = voters.min(committee.len());
                    let params = reps[r].params().clone();
                    let body =
                        net.settlement(&c, epoch, &committee[..v], good_outcome(units), &params);
                    let _ = reps[r].append(&net.ids[prov], body, now);
                }
            }
            Op::Slash { r } => {
                if let Some(p) = reps[r].slash_proofs().into_iter().next() {
                    let _ = reps[r].append(&net.ids[0], Body::Slash(Box::new(p)), now);
                }
            }
        }
        for l in reps.iter_mut() {
            conserved(l);
        }
    }
    reps
}

fn two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/props.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn merge_is_commutative_associative_idempotent(ops in prop::collection::vec(op(), 1..24)) {
        let net = Net::new(6, 4, 4);
        let mut reps = run(&net, &ops);
        let (r0, rest) = reps.split_at_mut(1);
        let (r1, r2) = rest.split_at_mut(1);
        let (a, b, c) = (&mut r0[0], &mut r1[0], &mut r2[0]);
        // (a ∪ b) ∪ c in one order ...
        let mut x = net.ledger(50);
        sync(&mut x, a);
        sync(&mut x, b);
        sync(&mut x, c);
        // ... c ∪ (b ∪ a) in another, via an intermediate replica ...
        let mut bc = net.ledger(51);
        sync(&mut bc, c);
        sync(&mut bc, b);
        let mut y = net.ledger(52);
        sync(&mut y, &mut bc);
        sync(&mut y, a);
        // ... and merging again changes nothing.
        let before = x.state().clone();
        sync(&mut x, &mut y);
        sync(&mut x, a);
        prop_assert_eq!(x.state(), &before);
        prop_assert_eq!(y.state(), &before);
        prop_assert_eq!(x.finalized_epoch(), y.finalized_epoch());
        let mut ix = x.invalid(); ix.sort_by_key(|i| i.id);
        let mut iy = y.invalid(); iy.sort_by_key(|i| i.id);
        prop_assert_eq!(ix, iy);
        conserved(&mut x);
        // every replica, once synced, agrees too
        sync(a, &mut x);
        prop_assert_eq!(a.state(), &before);
    }

    #[test]
    fn supply_is_conserved(ops in prop::collection::vec(op(), 1..40)) {
        let net = Net::new(6, 4, 4);
        // `run` checks conservation after every operation on every replica.
        let mut reps = run(&net, &ops);
        for l in reps.iter_mut() {
            let st = l.state();
            for b in st.balances.values() {
                prop_assert!(b.0 <= st.supply.expected().unwrap().0);
            }
        }
    }
}
